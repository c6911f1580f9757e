"""The L-BFGS head solver: scikit-learn's logistic regression, folded into an nn.Linear."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from headstart.errors import ConfigError, DataError
from headstart.train.head_solver import DEFAULT_CS, HeadSolution, solve_head


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x, y


def _logits(solution: HeadSolution, x: np.ndarray) -> np.ndarray:
    weight, bias = solution.weight.double().numpy(), solution.bias.double().numpy()
    return np.asarray(x, dtype=np.float64) @ weight.T + bias


def _proba(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _lrcv(x: np.ndarray, y: np.ndarray, cv: object = None, **kwargs: object) -> object:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its FutureWarning about the scoring default
        lrcv = LogisticRegressionCV(Cs=10, max_iter=5000, **({"cv": cv} if cv else {}), **kwargs)
        return make_pipeline(StandardScaler(), lrcv).fit(x, y)


def test_accuracy_is_within_half_a_point_of_logistic_regression_cv(digits) -> None:
    x, y = digits
    train, test = np.arange(300), np.arange(300, len(y))
    ours = solve_head(x[train], y[train], 10)
    ref = _lrcv(x[train], y[train])
    accuracy = float((_logits(ours, x[test]).argmax(1) == y[test]).mean())
    assert accuracy == pytest.approx(ref.score(x[test], y[test]), abs=0.005)
    assert ours.cs == DEFAULT_CS and ours.folds == 5 and len(ours.cv_accuracy) == 10
    assert ours.converged and ours.weight.dtype == torch.float32
    i = ours.cs.index(ours.c)
    tied = sum(abs(a - ours.cv_accuracy[i]) < 1e-9 for a in ours.cv_accuracy)
    assert tied == 5  # on these 300 digits five C share the best held-out accuracy
    assert ours.describe() == (
        f"L-BFGS logistic head, C={ours.c:.3g} chosen by 5-fold CV "
        f"(held-out accuracy {max(ours.cv_accuracy):.2f}, the best held-out log-loss "
        f"({ours.cv_log_loss[i]:.3f}) of 5 tied)"
    )


@pytest.mark.parametrize("seed", [None, 0])
def test_held_out_scores_are_logistic_regression_cvs_on_the_same_folds(digits, seed) -> None:
    # seed=None (our default): LogisticRegressionCV's default folds (StratifiedKFold
    # unshuffled); seed=0: the same splitter shuffled with that seed.  On the same
    # folds the held-out accuracies and log-losses agree per C (both solve to a gradient
    # tolerance of 1e-4, so at large C the two solutions differ a little: an example or
    # two of accuracy); the C chosen has LogisticRegressionCV's best accuracy, and of
    # those tied on it, the lowest log-loss.
    from sklearn.model_selection import StratifiedKFold

    x, y = digits[0][:300], digits[1][:300]
    ours = solve_head(x, y, 10) if seed is None else solve_head(x, y, 10, seed=seed)
    cv = None if seed is None else StratifiedKFold(5, shuffle=True, random_state=seed)
    ref = _lrcv(x, y, cv)[-1]
    ref_accuracy = ref.scores_[0].mean(axis=0).ravel()
    np.testing.assert_allclose(ours.cv_accuracy, ref_accuracy, atol=0.01)
    assert list(ours.cs) == pytest.approx(list(ref.Cs_), rel=1e-12)
    i = ours.cs.index(ours.c)
    assert ref_accuracy[i] == pytest.approx(ref_accuracy.max(), abs=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = _lrcv(x, y, cv or 5, scoring="neg_log_loss")[-1].scores_[0].mean(axis=0)
    np.testing.assert_allclose(ours.cv_log_loss, -ll.ravel(), rtol=0.05, atol=0.005)
    tied = [j for j, a in enumerate(ours.cv_accuracy) if abs(a - ours.cv_accuracy[i]) < 1e-9]
    assert ours.cv_log_loss[i] == min(ours.cv_log_loss[j] for j in tied)


def test_ties_of_held_out_accuracy_go_to_the_lowest_log_loss() -> None:
    from headstart.train.head_solver import _best

    accuracy = np.array([0.6, 0.85, 0.85 + 1e-12, 0.84, 0.85])
    # the best accuracy alone decides; of the three tied at 0.85 the lowest log-loss
    assert _best(accuracy, np.array([0.1, 0.5, 0.4, 0.2, 0.45])) == 2
    assert _best(np.array([0.6, 0.9, 0.85]), np.array([0.1, 0.5, 0.2])) == 1
    # equal log-losses too: the first, the smallest C (scikit-learn's argmax)
    assert _best(accuracy, np.array([0.1, 0.4, 0.4, 0.2, 0.4])) == 1
    assert _best(np.array([0.5, 0.5]), np.array([0.3, 0.3])) == 0


@pytest.mark.parametrize("classes", [None, (3, 8)], ids=["multinomial", "binary"])
@pytest.mark.parametrize("c", [0.05, 1.0])
def test_a_fixed_c_gives_scikit_learns_logistic_regression(digits, classes, c) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = digits[0][:300], digits[1][:300]
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
    ours = solve_head(x, y, 10, cs=[c], tol=1e-7)
    assert ours.folds == 0 and ours.cv_accuracy == [] and ours.c == c
    assert "as given" in ours.describe()
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=c, tol=1e-9, max_iter=10_000).fit(scaler.transform(x), y)
    test = digits[0][300:600]
    present = ref.classes_
    p_ours = _proba(_logits(ours, test)[:, present])
    assert np.abs(p_ours - ref.predict_proba(scaler.transform(test))).max() < 1e-3
    # the coefficients on the standardised features, unfolded
    weight = ours.weight.double().numpy()[present] * scaler.scale_
    if classes is not None:  # scikit-learn's one binary vector: w[1] - w[0]
        weight = weight[1:] - weight[:1]
    np.testing.assert_allclose(weight, ref.coef_, atol=1e-4)


def test_the_folded_head_gives_the_standardised_models_logits_on_raw_features(digits) -> None:
    # Standardising makes the solution independent of each feature's offset and scale:
    # fitted on features moved and stretched by up to 1e3, the folded head must give the
    # same logits on those raw features as the head fitted on the originals, which are
    # the standardised model's logits.  And it loads into an ordinary nn.Linear.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = digits[0][:300], digits[1][:300]
    rng = np.random.default_rng(0)
    stretch = 10.0 ** rng.uniform(-3, 3, x.shape[1])
    offset = rng.uniform(-100, 100, x.shape[1])
    plain = solve_head(x, y, 10, cs=[0.3], tol=1e-8)
    moved = solve_head(x * stretch + offset, y, 10, cs=[0.3], tol=1e-8)
    test = digits[0][300:400]
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(scaler.transform(x), y)
    standardised = ref.decision_function(scaler.transform(test))
    np.testing.assert_allclose(_logits(plain, test), standardised, atol=1e-3)
    np.testing.assert_allclose(_logits(moved, test * stretch + offset), standardised, atol=2e-3)

    head = nn.Linear(x.shape[1], 10)
    moved.load_into(head)
    with torch.no_grad():
        out = head(torch.from_numpy(test * stretch + offset).float()).double().numpy()
    np.testing.assert_allclose(out, standardised, atol=0.05)  # float32 at offsets of 1e5
    assert (out.argmax(1) == standardised.argmax(1)).mean() == 1.0
    with pytest.raises(ConfigError, match="the layer is"):
        moved.load_into(nn.Linear(x.shape[1], 9))


def test_a_class_of_one_example_skips_cross_validation(digits) -> None:
    x, y = digits
    rows = np.concatenate([np.flatnonzero(y == k)[:8] for k in range(4)])
    rows = np.concatenate([rows, np.flatnonzero(y == 4)[:1]])
    s = solve_head(x[rows], y[rows], 5)
    assert s.c == 1.0 and s.folds == 0 and s.cv_accuracy == []
    assert "without cross-validation" in s.describe()
    assert "class #4 has a single example" in s.describe()
    assert (_logits(s, x[rows]).argmax(1) == y[rows]).all()  # it still learns class 4


def test_a_small_class_reduces_the_folds(digits) -> None:
    x, y = digits
    rows = np.concatenate([np.flatnonzero(y == k)[: 3 if k == 2 else 10] for k in range(3)])
    s = solve_head(x[rows], y[rows], 3)
    assert s.folds == 3 and len(s.cv_accuracy) == 10
    assert "3 folds, not 5: the smallest class has 3" in s.describe()


def test_absent_classes_get_zero_rows_and_are_never_predicted(digits) -> None:
    # labels 0, 1, 3 of range(5): classes 2 and 4 have no example
    x, y = digits
    rows = np.flatnonzero(np.isin(y, [0, 1, 3]))[:90]
    s = solve_head(x[rows], y[rows], 5)
    assert s.weight.shape == (5, x.shape[1]) and s.bias.shape == (5,)
    assert torch.isfinite(s.weight).all() and torch.isfinite(s.bias).all()
    assert (s.weight[[2, 4]] == 0).all()
    assert "2 class(es) without examples are never predicted" in s.describe()
    proba = _proba(_logits(s, x[rows]))
    assert proba[:, [2, 4]].max() <= 1.0 / len(rows) + 1e-9
    # nor on any other input: other digits, noise a thousand times the pixels' range (the
    # present logits average 0 everywhere, the absent ones are -log N)
    noise = np.random.default_rng(0).normal(0, 16_000, (200, x.shape[1]))
    assert set(_logits(s, np.vstack([x, noise])).argmax(1)) <= {0, 1, 3}
    assert s.c > 100  # (a large C, chosen on separable folds: the logits are large too)
    # the present classes' rows are the solution without the absent ones
    compact = solve_head(x[rows], np.searchsorted([0, 1, 3], y[rows]), 3)
    np.testing.assert_allclose(s.weight[[0, 1, 3]], compact.weight, atol=1e-5)
    np.testing.assert_allclose(s.bias[[0, 1, 3]], compact.bias, atol=1e-5)
    # usable with label smoothing: every class's log-probability is finite
    head = nn.Linear(x.shape[1], 5)
    s.load_into(head)
    out = head(torch.from_numpy(x[rows]).float())
    loss = nn.functional.cross_entropy(out, torch.from_numpy(y[rows]), label_smoothing=0.1)
    assert torch.isfinite(loss)


def test_constant_features_get_zero_weights_and_change_nothing(digits) -> None:
    # the digits' own constant pixels (all 0 in these rows) and an added column of 7s
    x, y = digits[0][:200], digits[1][:200]
    constant = x.std(axis=0) == 0
    assert constant.any()
    with_sevens = np.hstack([x, np.full((len(x), 1), 7.0)])
    a = solve_head(x[:, ~constant], y, 10, cs=[0.5])
    b = solve_head(with_sevens, y, 10, cs=[0.5])
    assert (b.weight[:, np.append(constant, True)] == 0).all()
    np.testing.assert_allclose(b.weight[:, np.append(~constant, False)], a.weight, atol=1e-6)
    np.testing.assert_allclose(b.bias, a.bias, atol=1e-5)


def test_torch_input_and_the_thread_count_are_respected(digits) -> None:
    x, y = digits[0][:150], digits[1][:150]
    threads = torch.get_num_threads()
    a = solve_head(torch.from_numpy(x).float(), torch.from_numpy(y), 10, cs=[1.0])
    b = solve_head(x.astype(np.float32), y, 10, cs=[1.0])
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)
    # numpy has no bfloat16: such features are converted, not refused
    half = solve_head(torch.from_numpy(x).bfloat16(), y, 10, cs=[1.0])
    assert half.weight.shape == (10, x.shape[1]) and half.weight.dtype == torch.float32


@pytest.mark.parametrize(
    ("features", "labels", "n_classes", "kwargs", "error", "match"),
    [
        (np.zeros(10), np.zeros(10, int), 2, {}, ConfigError, "2-D"),
        (np.zeros((10, 3)), np.zeros(9, int), 2, {}, ConfigError, "do not match 10"),
        (np.zeros((10, 3)), np.zeros(10), 2, {}, ConfigError, "integer class indices"),
        (np.zeros((10, 3)), np.arange(10) % 2 * 5, 3, {}, ConfigError, "range\\(3\\)"),
        (np.zeros((10, 3)), np.arange(10) % 2, 1, {}, ConfigError, "n_classes >= 2"),
        (np.zeros((10, 3)), np.arange(10) % 2 - 1, 2, {}, DataError, "no label"),
        (np.zeros((10, 3)), np.ones(10, int), 2, {}, DataError, "at least 2 classes"),
        (np.zeros((0, 3)), np.zeros(0, int), 2, {}, DataError, "no examples"),
        (np.zeros((10, 3)), np.arange(10) % 2, 2, {"cs": [1.0, -1.0]}, ConfigError, "cs"),
        (np.zeros((10, 3)), np.arange(10) % 2, 2, {"cs": []}, ConfigError, "cs"),
        (np.zeros((10, 3)), np.arange(10) % 2, 2, {"cs": ["big"]}, ConfigError, "cs"),
        (np.zeros((10, 3), bool), np.arange(10) % 2, 2, {}, ConfigError, "numbers"),
        (np.zeros((10, 3)), np.arange(10) % 2, 2, {"folds": 1}, ConfigError, "folds"),
        (np.zeros((10, 3)), np.arange(10) % 2, 2, {"tol": 0.0}, ConfigError, "tol"),
        (np.zeros((10, 3)), np.arange(10) % 2, 2, {"max_iter": 0}, ConfigError, "max_iter"),
    ],
)
def test_bad_arguments_are_refused_clearly(features, labels, n_classes, kwargs, error, match):
    with pytest.raises(error, match=match):
        solve_head(features, labels, n_classes, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused(bad) -> None:
    x = np.random.default_rng(0).normal(size=(20, 4))
    x[7, 2] = bad
    with pytest.raises(DataError, match="NaN or infinity in 1 of 20 rows \\(first: row 7\\)"):
        solve_head(x, np.arange(20) % 2, 2)
    with pytest.raises(DataError, match="NaN or infinity"):
        solve_head(torch.from_numpy(x).float(), torch.arange(20) % 2, 2)
