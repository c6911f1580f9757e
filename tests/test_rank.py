"""Transferability scores against slow, direct references, and extract_features."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from headstart.choose.rankers import RANKERS, score_features, score_source
from headstart.choose.scores import (
    NO_SOURCE_HEAD,
    _logme_fit,
    knn_accuracy,
    knn_correct,
    leep,
    linear_probe_accuracy,
    logme,
)
from headstart.choose.vs_random import CLEARLY_ABOVE_Z, HALF_SAMPLES, compare_features
from headstart.data.images import load_data
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError, DataError
from headstart.features.extract import Features, extract_features
from headstart.sources import Source, build_source

EPS = 1e-5  # the guard in the fixed-point updates, as in rank.py and the authors' code


def _features(
    n: int, d: int, classes: int, *, signal: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features; ``signal`` > 0 shifts each class along its own direction."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    f = rng.normal(size=(n, d))
    f[:, :classes] += signal * np.eye(classes)[y]
    return f, y


# Shapes covering both branches: N > D (from F'F), N < D and N == D (from FF').
SHAPES = [(60, 8, 3), (24, 40, 3), (20, 20, 4)]


# --------------------------------------------------------------------------- LogME


def _closed_form_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) as the Gaussian density it is: y ~ N(0, I/beta + FF'/alpha)."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)))


def _slow_logme(f: np.ndarray, targets: np.ndarray, *, tol: float, max_iter: int) -> float:
    """The same fixed-point iteration with explicit D x D matrices and inverses."""
    n, d = f.shape
    evidences = []
    for c in np.unique(targets):
        y = (targets == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            a_inv = np.linalg.inv(alpha * np.eye(d) + beta * f.T @ f)
            m = beta * a_inv @ f.T @ y
            gamma = d - alpha * np.trace(a_inv)  # sum_i beta s_i / (alpha + beta s_i)
            t = alpha / beta
            alpha = gamma / (m @ m + EPS)
            beta = (n - gamma) / (np.sum((y - f @ m) ** 2) + EPS)
            if abs(alpha / beta - t) <= tol * t:
                break
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ y)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - beta / 2 * np.sum((y - f @ m) ** 2)
            - alpha / 2 * (m @ m)
            - 0.5 * np.linalg.slogdet(a)[1]
            - n / 2 * math.log(2 * math.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize(("n", "d", "classes"), SHAPES)
@pytest.mark.parametrize("signal", [0.0, 2.0])
def test_logme_matches_the_slow_fixed_point_iteration(
    n: int, d: int, classes: int, signal: float
) -> None:
    f, y = _features(n, d, classes, signal=signal, seed=n + d)
    for tol, max_iter in [(1e-6, 1000), (1e-3, 11)]:  # ours, and the authors' settings
        fast = logme(f, y, tol=tol, max_iter=max_iter)
        slow = _slow_logme(f, y, tol=tol, max_iter=max_iter)
        assert fast == pytest.approx(slow, rel=1e-9)


@pytest.mark.parametrize(("n", "d", "classes"), SHAPES)
@pytest.mark.parametrize("signal", [0.0, 2.0])
def test_logme_is_the_closed_form_evidence_at_the_alpha_beta_it_found(
    n: int, d: int, classes: int, signal: float
) -> None:
    f, y = _features(n, d, classes, signal=signal, seed=n + d)
    alpha, beta, per_class = _logme_fit(f, y, tol=1e-6, max_iter=1000)
    for c in range(classes):
        exact = _closed_form_evidence(f, (y == c).astype(np.float64), alpha[c], beta[c])
        assert per_class[c] == pytest.approx(exact / n, rel=1e-9)
    assert logme(f, y) == pytest.approx(per_class.mean(), rel=1e-12)


@pytest.mark.parametrize(("n", "d", "classes"), [(60, 8, 3), (20, 20, 4)])
def test_logme_finds_the_maximum_of_the_evidence(n: int, d: int, classes: int) -> None:
    # Informative features: the maximum over (alpha, beta) is inside, and the fixed
    # point lands on it.  (Where the supremum is at alpha or beta -> infinity, e.g. for
    # features with no linear information about a class, the 1e-5 guard in the updates
    # stops the iteration at a finite point a little below it, as in the authors' code.)
    f, y = _features(n, d, classes, signal=2.0, seed=n + d)
    alpha, beta, per_class = _logme_fit(f, y, tol=1e-6, max_iter=1000)
    for c in range(classes):
        yc = (y == c).astype(np.float64)
        for da, db in [(1.05, 1), (1 / 1.05, 1), (1, 1.05), (1, 1 / 1.05)]:
            moved = _closed_form_evidence(f, yc, alpha[c] * da, beta[c] * db) / n
            assert moved < per_class[c]


def test_logme_counts_the_null_space_of_a_rank_deficient_f() -> None:
    # N > D but rank 6 < D = 10: log|alpha I + beta F'F| has 4 zero singular values
    # in it, as every N < D case has (the authors' fixed-point code drops them:
    # thuml/LogME issue #23).
    f, y = _features(50, 6, 3, signal=1.0, seed=3)
    mix = np.random.default_rng(4).normal(size=(6, 10))
    wide = f @ mix
    alpha, beta, per_class = _logme_fit(wide, y, tol=1e-6, max_iter=1000)
    for c in range(3):
        exact = _closed_form_evidence(wide, (y == c).astype(np.float64), alpha[c], beta[c])
        assert per_class[c] == pytest.approx(exact / 50, rel=1e-9)
    assert logme(wide, y) == pytest.approx(_slow_logme(wide, y, tol=1e-6, max_iter=1000))
    # and with N < D: 8 of those rows
    few = wide[:8]
    assert logme(few, y[:8]) == pytest.approx(_slow_logme(few, y[:8], tol=1e-6, max_iter=1000))


def test_logme_of_all_zero_features_is_the_evidence_of_noise_alone() -> None:
    # No features: y ~ N(0, I/beta), beta = N/|y|^2 (with the 1e-5 guard), per class.
    y = np.arange(20) % 2
    beta = 20 / (10 + EPS)
    expected = (20 / 2 * math.log(beta) - beta / 2 * 10 - 20 / 2 * math.log(2 * math.pi)) / 20
    assert logme(np.zeros((20, 5)), y) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(logme(np.zeros((6, 30)), y[:6]))


def test_logme_does_not_depend_on_label_values_or_row_order() -> None:
    f, y = _features(40, 6, 3, signal=1.0, seed=5)
    perm = np.random.default_rng(6).permutation(40)
    assert logme(f, y) == pytest.approx(logme(f[perm], y[perm]), rel=1e-10)
    assert logme(f, y) == pytest.approx(logme(f, np.array([7, 2, 9])[y]), rel=1e-12)


# --------------------------------------------------------------------------- LEEP


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _slow_leep(theta: np.ndarray, y: np.ndarray) -> float:
    """Nguyen et al. 2020, eqs. (1)-(3), one sample and one class at a time."""
    n, z_count = theta.shape
    classes = sorted(set(y.tolist()))
    joint = {(c, z): 0.0 for c in classes for z in range(z_count)}
    for i in range(n):
        for z in range(z_count):
            joint[y[i], z] += theta[i, z] / n
    p_z = [sum(joint[c, z] for c in classes) for z in range(z_count)]
    total = 0.0
    for i in range(n):
        eep = sum(joint[y[i], z] / p_z[z] * theta[i, z] for z in range(z_count))
        total += math.log(eep)
    return total / n


@pytest.mark.parametrize(("n", "z", "classes"), [(30, 5, 3), (50, 12, 4), (12, 2, 3)])
def test_leep_matches_the_loop_reference(n: int, z: int, classes: int) -> None:
    rng = np.random.default_rng(n * z)
    theta = _softmax(rng.normal(size=(n, z)) * 2)
    y = np.arange(n) % classes
    assert leep(theta, y) == pytest.approx(_slow_leep(theta, y), rel=1e-12)


def test_leep_moves_with_how_informative_the_source_is() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    uninformative = _softmax(rng.normal(size=(90, 6)))
    informative = _softmax(rng.normal(size=(90, 6)) + 4 * np.eye(6)[2 * y])  # z = 2y
    assert leep(informative, y) > leep(uninformative, y) + 0.5
    assert leep(uninformative, y) == pytest.approx(math.log(1 / 3), abs=0.05)
    assert leep(np.eye(3)[y], y) == pytest.approx(0.0, abs=1e-12)  # a perfect source


def test_leep_without_a_source_head_says_so() -> None:
    with pytest.raises(ConfigError, match="no classifier head"):
        leep(None, np.array([0, 1]))
    with pytest.raises(ConfigError, match="summing to 1"):
        leep(np.ones((2, 3)), np.array([0, 1]))


# --------------------------------------------------------------------------- accuracy


def _folds(y: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(y, y))


def _brute_knn_accuracy(
    f: np.ndarray, y: np.ndarray, k: int, splits: list[tuple[np.ndarray, np.ndarray]]
) -> float:
    """Standardise on the training fold, cosine distance, majority vote, per fold."""
    scores = []
    for train, test in splits:
        mean, std = f[train].mean(axis=0), f[train].std(axis=0)
        z = (f - mean) / np.where(std > 0, std, 1)
        unit = z / np.linalg.norm(z, axis=1, keepdims=True)
        dist = 1 - unit[test] @ unit[train].T
        nearest = np.argsort(dist, axis=1)[:, :k]
        votes = np.array([np.bincount(y[train][row]).argmax() for row in nearest])
        scores.append(np.mean(votes == y[test]))
    return float(np.mean(scores))


def test_knn_matches_a_brute_force_knn_and_cross_val_score_on_the_same_folds() -> None:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y = _features(40, 6, 2, signal=1.0, seed=1)
    splits = _folds(y, 4, seed=3)
    ours = knn_accuracy(f, y, k=3, folds=4, seed=3)
    assert ours == pytest.approx(_brute_knn_accuracy(f, y, 3, splits), abs=1e-12)
    for metric in ("cosine", "euclidean"):
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(3, metric=metric))
        expected = cross_val_score(model, f, y, cv=splits).mean()
        assert knn_accuracy(f, y, k=3, metric=metric, folds=4, seed=3) == pytest.approx(expected)


def test_linear_probe_matches_cross_val_score_on_the_same_folds() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y = _features(45, 6, 3, signal=1.0, seed=2)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    expected = cross_val_score(model, f, y, cv=_folds(y, 5, seed=7)).mean()
    assert linear_probe_accuracy(f, y, folds=5, seed=7, c=0.5) == pytest.approx(expected)


def test_folds_shrink_to_the_smallest_class_and_a_lone_example_is_an_error() -> None:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y = _features(12, 4, 4, signal=2.0, seed=4)  # 3 per class: 3 folds, not 5
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(5, metric="cosine"))
    expected = cross_val_score(model, f, y, cv=_folds(y, 3, seed=0)).mean()
    assert knn_accuracy(f, y, folds=5) == pytest.approx(expected)
    y_lone = y.copy()
    y_lone[0] = 9
    for score in (knn_accuracy, linear_probe_accuracy):
        with pytest.raises(DataError, match="fewer than 2 examples"):
            score(f, y_lone)
    with pytest.raises(ConfigError, match="metric"):
        knn_accuracy(f, y, metric="manhattan")
    # 2 per class: 2 folds of 2 training examples, so k drops from 5 to 2
    tiny = np.array([0, 0, 1, 1])
    assert 0 <= knn_accuracy(f[:4], tiny) <= 1


@pytest.mark.parametrize(
    "score",
    [logme, knn_accuracy, linear_probe_accuracy],
    ids=["logme", "knn", "linear-probe"],
)
def test_separating_features_score_higher_than_random_ones(score: Callable[..., float]) -> None:
    separating, y = _features(60, 10, 3, signal=3.0, seed=8)
    random, _ = _features(60, 10, 3, signal=0.0, seed=9)
    assert score(separating, y) > score(random, y)


def test_unlabelled_or_broken_features_are_refused() -> None:
    f, y = _features(20, 4, 2, signal=1.0, seed=0)
    with pytest.raises(DataError, match="no label"):
        logme(f, np.where(np.arange(20) == 0, -1, y))
    with pytest.raises(ConfigError, match="NaN"):
        logme(np.where(np.arange(4) == 0, np.nan, f), y)


# --------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def digits_source() -> Source:
    return build_source("builtin:digits-cnn", weights="none")


@pytest.fixture(scope="module")
def digits_data() -> LabeledData:
    return load_data("builtin:digits?classes=0-2&per_class=10")


def test_extract_features_shapes_and_determinism(
    digits_source: Source, digits_data: LabeledData
) -> None:
    digits_source.backbone.train()
    a = extract_features(digits_source, digits_data, batch_size=7, progress=False)
    assert digits_source.backbone.training  # its mode is given back
    b = extract_features(digits_source, digits_data, progress=False)
    assert a.features.shape == (30, digits_source.feature_dim)
    assert a.features.dtype == np.float32
    assert a.targets.dtype == np.int64
    np.testing.assert_array_equal(a.targets, digits_data.targets)
    assert a.source_probs is None
    # eval mode: batch size does not change a feature (BatchNorm uses stored statistics)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)
    c = extract_features(digits_source, digits_data, batch_size=7, progress=False)
    np.testing.assert_array_equal(a.features, c.features)


def test_extract_features_with_the_source_head(
    digits_source: Source, digits_data: LabeledData
) -> None:
    feats = extract_features(digits_source, digits_data, with_source_logits=True, progress=False)
    assert feats.source_probs is not None
    assert feats.source_probs.shape == (30, 10)
    np.testing.assert_allclose(feats.source_probs.sum(axis=1), 1.0, atol=1e-12)
    headless = replace(digits_source, old_head=None)
    bare = extract_features(headless, digits_data, with_source_logits=True, progress=False)
    assert bare.source_probs is None


def test_score_source_runs_each_method_once_and_notes_a_missing_head(
    digits_source: Source, digits_data: LabeledData
) -> None:
    assert RANKERS.names() == ["knn", "leep", "linear-probe", "logme"]
    results = score_source(digits_source, digits_data, progress=False)
    assert set(results) == set(RANKERS.names())
    for r in results.values():
        assert r.value is not None and math.isfinite(r.value) and r.seconds >= 0
    assert "randomly initialised" in results["leep"].note
    headless = replace(digits_source, old_head=None)
    results = score_source(headless, digits_data, methods=["leep", "logme"], progress=False)
    assert results["leep"].value is None and NO_SOURCE_HEAD in results["leep"].note
    assert results["logme"].value is not None
    with pytest.raises(ConfigError, match="valid: knn, leep"):
        score_source(digits_source, digits_data, methods=["logmee"], progress=False)


def test_score_features_skips_leep_without_probabilities() -> None:
    f, y = _features(20, 4, 2, signal=1.0, seed=0)
    results = score_features(Features(f.astype(np.float32), y), methods=["leep"])
    assert results["leep"].value is None and results["leep"].note


# --------------------------------------------------------------------------- against a baseline


def test_paired_comparison_of_mean_scores_is_the_mean_and_se_of_per_item_differences() -> None:
    f, y = _features(60, 6, 3, signal=1.5, seed=11)
    noise = np.random.default_rng(12).normal(size=f.shape)
    a, b = Features(f, y), Features(noise, y)
    got = compare_features(a, b, "knn", seed=4)
    assert got is not None and got.how == "per item"
    ours, theirs = knn_correct(f, y, seed=4), knn_correct(noise, y, seed=4)
    assert got.difference == pytest.approx(
        knn_accuracy(f, y, seed=4) - knn_accuracy(noise, y, seed=4)
    )
    d = ours - theirs
    assert got.se == pytest.approx(np.sqrt(np.sum((d - d.mean()) ** 2) / (len(d) - 1) / len(d)))
    assert got.above and got.z is not None and got.z > CLEARLY_ABOVE_Z
    # the terms score_features kept give the same comparison without recomputing
    scores_a = score_features(a, methods=["knn"], seed=4)["knn"]
    scores_b = score_features(b, methods=["knn"], seed=4)["knn"]
    again = compare_features(a, b, "knn", seed=4, scored=(scores_a, scores_b))
    assert again == got
    # LEEP needs both sides' class probabilities
    assert compare_features(a, b, "leep") is None


def test_logme_comparison_uses_the_delete_half_jackknife_over_random_halves() -> None:
    from sklearn.model_selection import StratifiedShuffleSplit

    f, y = _features(45, 5, 3, signal=1.0, seed=21)
    g = np.random.default_rng(22).normal(size=f.shape)
    got = compare_features(Features(f, y), Features(g, y), "logme", seed=3)
    assert got is not None and got.how == "half samples"
    assert got.difference == pytest.approx(logme(f, y) - logme(g, y))
    splitter = StratifiedShuffleSplit(n_splits=HALF_SAMPLES, train_size=0.5, random_state=3)
    diffs, kept = [], 0
    for half, _ in splitter.split(y, y):
        kept = len(half)
        diffs.append(logme(f[half], y[half]) - logme(g[half], y[half]))
    d = len(y) - kept  # deleted from each half sample
    jackknife = (len(y) - d) / (d * len(diffs)) * sum((x - np.mean(diffs)) ** 2 for x in diffs)
    assert got.se == pytest.approx(math.sqrt(jackknife))


def test_logme_difference_standard_error_matches_its_spread_over_fresh_data_sets() -> None:
    """The jackknife's standard error is calibrated: over many data sets drawn from one
    model, the mean estimate is within 35% of the actual spread of the difference."""
    ses, diffs = [], []
    for seed in range(40):
        f, y = _features(60, 6, 3, signal=0.6, seed=100 + seed)
        g, _ = _features(60, 6, 3, signal=0.3, seed=200 + seed)
        got = compare_features(Features(f, y), Features(g[np.argsort(np.argsort(y))], y), "logme")
        assert got is not None
        ses.append(got.se)
        diffs.append(got.difference)
    assert np.mean(ses) == pytest.approx(np.std(diffs, ddof=1), rel=0.35)


def test_the_same_features_are_not_above_themselves_and_noise_is_not_above_noise() -> None:
    f, y = _features(50, 6, 5, signal=0.0, seed=31)
    same = compare_features(Features(f, y), Features(f.copy(), y), "logme")
    assert same is not None and same.difference == 0 and same.se == 0
    assert not same.above and same.z is None
    for method in ("logme", "knn", "linear-probe"):
        above = 0
        for seed in range(10):
            a, _ = _features(50, 6, 5, signal=0.0, seed=40 + seed)
            b, _ = _features(50, 6, 5, signal=0.0, seed=60 + seed)
            got = compare_features(Features(a, y), Features(b, y), method, seed=seed)
            assert got is not None
            above += got.above
        assert above <= 3, method  # one-sided 5% each: 0.5 expected of 10


def test_comparisons_refuse_features_of_other_examples() -> None:
    f, y = _features(20, 4, 2, signal=1.0, seed=1)
    with pytest.raises(ConfigError, match="not of the same examples"):
        compare_features(Features(f, y), Features(f, y[::-1].copy()), "logme")
