"""Transferability: how well a source's features suit a target task, without fine-tuning.

Every score is computed once on :class:`~headstart.features.extract.Features` (the backbone run
once over the target data) and is *higher-is-better*:

- ``logme`` — LogME (K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of
  Pre-trained Models for Transfer Learning", ICML 2021): per target class, the log
  marginal evidence of a Bayesian linear regression from the features to the class's
  one-hot column, maximised over the prior precision ``alpha`` and the noise precision
  ``beta`` by the MacKay fixed-point iteration, divided by N and averaged over classes.
  The iteration works in the SVD basis of F, in the form of the authors' later
  "Ranking and Tuning Pre-trained Models" (JMLR 2022, arXiv:2110.10545) and their code
  (github.com/thuml/LogME, ``LogME._fit_fixed_point``), with one correction: ``log|A|``
  counts the D - rank(F) zero singular values as ``log(alpha)`` each, as the ICML
  paper's formula (and the authors' ICML code) does; the fixed-point code leaves them
  out, which is wrong when N < D (thuml/LogME issue #23).  And it iterates until
  ``alpha/beta`` settles (relative change 1e-6) where the authors stop after 11 steps
  or a 1e-3 change: features that fit a class poorly need 30-100 steps, and stopping
  early under-states their evidence (by up to 1e-3 relative in our checks), while a
  step costs O(rank x classes), nothing next to the decomposition.
- ``leep`` — LEEP (C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau, "LEEP: A New
  Measure to Evaluate Transferability of Learned Representations", ICML 2020): the mean
  log-likelihood of the target labels under the "expected empirical predictor" built
  from the source classifier's own softmax outputs.  It needs the source's old output
  layer; a source without one is skipped with a note.
- ``knn`` and ``linear-probe`` — cross-validated accuracy of a k-nearest-neighbour
  classifier and of a logistic regression on the standardised features (scikit-learn).

Here they are plain functions of arrays.  :mod:`headstart.choose.rankers` registers them by
name and runs them on a source's features; :mod:`headstart.choose.vs_random` sets a score
against a baseline's.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from headstart.errors import ConfigError, DataError
from headstart.train.head_solver import solve_head

__all__ = [
    "KNN_METRICS",
    "NO_SOURCE_HEAD",
    "knn_accuracy",
    "knn_correct",
    "leep",
    "leep_per_item",
    "linear_probe_accuracy",
    "linear_probe_correct",
    "logme",
]

log = logging.getLogger(__name__)


NO_SOURCE_HEAD = (
    "the source has no classifier head (its old output layer is not kept), and LEEP "
    "needs the source's own class probabilities"
)


KNN_METRICS = ("cosine", "euclidean")


# As in the authors' code: keeps alpha and beta finite when a class's weights or
# residuals vanish.  Where the evidence's supremum lies at alpha or beta -> infinity
# (features with no linear information about a class; an exact fit when N <= D), this
# guard is what stops the iteration, a little below the supremum.
_LOGME_EPS = 1e-5


def _check_labels(targets: np.ndarray, n: int) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim != 1 or len(targets) != n:
        raise ConfigError(f"targets of shape {targets.shape} do not match {n} examples")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ConfigError(f"targets must be integer class indices (got {targets.dtype})")
    unlabelled = int((targets < 0).sum())
    if unlabelled:
        raise DataError(f"{unlabelled} examples have no label; scoring needs labelled data")
    if n == 0:
        raise DataError("no examples to score")
    return targets.astype(np.int64, copy=False)


def _check_features(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ConfigError(f"features must be [N, D] (got shape {f.shape})")
    y = _check_labels(targets, len(f))
    if not np.isfinite(f).all():
        raise ConfigError("features contain NaN or infinity; is the source's model broken?")
    return f, y


def _cv_splits(
    features: np.ndarray, targets: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds, fewer than ``folds`` when the smallest class is smaller."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds (got {folds})")
    labels, counts = np.unique(targets, return_counts=True)
    if len(labels) < 2:
        raise DataError("cross-validated accuracy needs at least 2 classes")
    few = [f"#{t} ({c})" for t, c in zip(labels, counts, strict=True) if c < 2]
    if few:
        raise DataError(
            f"class(es) with fewer than 2 examples: {', '.join(few)}; cross-validation "
            "needs at least 2 of every class"
        )
    n_folds = min(folds, int(counts.min()))
    if n_folds < folds:
        log.info("%d folds, not %d: the smallest class has %d examples", n_folds, folds, n_folds)
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(cv.split(features, targets))


def logme(
    features: np.ndarray, targets: np.ndarray, *, tol: float = 1e-6, max_iter: int = 1000
) -> float:
    """LogME of ``features`` [N, D] for class indices ``targets`` [N] (higher is better).

    For each class present, the maximum over ``alpha, beta`` of the log evidence
    ``log p(y | F, alpha, beta)`` of ``y = (targets == c)`` under ``y ~ N(F w, 1/beta)``,
    ``w ~ N(0, 1/alpha)``, divided by N; the result is the mean over classes.  The
    fixed-point iteration starts at ``alpha = beta = 1`` and stops when ``alpha/beta``
    changes by at most ``tol`` (relative) or after ``max_iter`` steps; the evidence is
    then evaluated exactly at the final ``alpha, beta``.  Raises :class:`ConfigError`
    for malformed input and :class:`DataError` for unlabelled or no examples.
    """
    if not tol > 0 or max_iter < 1:
        raise ConfigError(f"LogME needs tol > 0 and max_iter >= 1 (got {tol}, {max_iter})")
    _, _, evidence = _logme_fit(features, targets, tol=tol, max_iter=max_iter)
    return float(evidence.mean())


def _logme_fit(
    features: np.ndarray, targets: np.ndarray, *, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class present: the final ``alpha``, ``beta`` and the log evidence / N."""
    f, y = _check_features(features, targets)
    n = len(f)
    _, y, counts = np.unique(y, return_inverse=True, return_counts=True)
    sigma, x = _logme_basis(f, y, len(counts))
    s = sigma[:, None]
    x2 = x**2  # [k, C]: each class column's squared coordinates in F's column space
    # what of each column lies outside F's column space (|y|^2 = the class count)
    rest = np.maximum(counts - x2.sum(axis=0), 0.0)

    def fit_terms(t: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # With t = alpha / beta the posterior mean is m = (t I + F'F)^-1 F' y; in F's
        # singular basis each term is a sum over the singular values.
        gamma = (s / (s + t)).sum(axis=0)  # effective number of well-determined weights
        m2 = (s * x2[:, cols] / (s + t) ** 2).sum(axis=0)  # |m|^2
        res2 = (x2[:, cols] * (t / (s + t)) ** 2).sum(axis=0) + rest[cols]  # |y - F m|^2
        return gamma, m2, res2

    n_classes = len(counts)
    alpha = np.ones(n_classes)
    beta = np.ones(n_classes)
    active = np.arange(n_classes)  # classes still iterating
    for _ in range(max_iter):
        t = alpha[active] / beta[active]
        gamma, m2, res2 = fit_terms(t, active)
        alpha[active] = gamma / (m2 + _LOGME_EPS)
        beta[active] = (n - gamma) / (res2 + _LOGME_EPS)
        active = active[np.abs(alpha[active] / beta[active] - t) > tol * t]
        if len(active) == 0:
            break
    else:
        log.debug("LogME: %d class(es) not converged in %d steps", len(active), max_iter)
    t = alpha / beta
    _, m2, res2 = fit_terms(t, np.arange(n_classes))
    # The paper's D/2 log(alpha) - 1/2 log|alpha I + beta F'F|, where the D - k zero
    # singular values contribute log(alpha) each, is -1/2 sum_k log(1 + s_k / t): the
    # same number, and finite when F is all zeros (k = 0, alpha = 0).
    evidence = (
        n / 2 * np.log(beta)
        - 0.5 * np.log1p(s / t).sum(axis=0)
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )
    return alpha, beta, evidence / n


def _logme_basis(f: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """F's nonzero squared singular values [k] and ``U' Y`` [k, C] for the one-hot Y of
    class indices ``y``, where ``F = U diag(s) V'`` is the thin SVD.

    Both come from the eigendecomposition of the smaller Gram matrix (F'F when N > D,
    as in the authors' code, FF' otherwise): much cheaper than an SVD of F.
    """
    from scipy import sparse

    n, d = f.shape
    onehot_t = sparse.csr_matrix((np.ones(n), (y, np.arange(n))), shape=(n_classes, n))  # Y'
    sigma, vecs = np.linalg.eigh(f.T @ f if n > d else f @ f.T)
    # rank cutoff as numpy's matrix_rank, on the squared singular values
    keep = sigma > sigma.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    sigma, vecs = sigma[keep], vecs[:, keep]
    if n > d:
        # U' Y = diag(1/s) V' F' Y, without forming U; F' Y holds the per-class sums
        x = vecs.T @ np.asarray(onehot_t @ f).T / np.sqrt(sigma)[:, None]
    else:
        x = np.asarray(onehot_t @ vecs).T  # U' Y
    return sigma, x


def leep(source_probs: np.ndarray | None, targets: np.ndarray) -> float:
    """LEEP of the source classifier's outputs ``source_probs`` [N, C_src] (rows sum to 1)
    for class indices ``targets`` [N]: a log-likelihood, at most 0, higher is better.

    Raises :class:`ConfigError` when ``source_probs`` is None (the source has no
    classifier head) or is not a matrix of probabilities.
    """
    return float(leep_per_item(source_probs, targets).mean())


def leep_per_item(source_probs: np.ndarray | None, targets: np.ndarray) -> np.ndarray:
    """Each example's term of :func:`leep` [N]: the log of the expected empirical
    predictor's probability of its label (LEEP is their mean).  Errors as for
    :func:`leep`."""
    if source_probs is None:
        raise ConfigError(NO_SOURCE_HEAD)
    theta = np.asarray(source_probs, dtype=np.float64)
    if theta.ndim != 2:
        raise ConfigError(f"source probabilities must be [N, C_src] (got shape {theta.shape})")
    y = _check_labels(targets, len(theta))
    if (theta < 0).any() or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise ConfigError("source probabilities must be non-negative with rows summing to 1")
    _, y = np.unique(y, return_inverse=True)
    onehot = np.eye(int(y.max()) + 1)[y]  # [N, C]
    joint = onehot.T @ theta / len(y)  # empirical P(y, z)  [C, C_src]
    p_z = joint.sum(axis=0, keepdims=True)
    # P(y | z); a source class no example ever gets probability for contributes nothing
    cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)
    eep = np.einsum("nz,nz->n", theta, cond[y])  # sum_z P(y_i | z) theta(x_i)_z
    return np.log(eep)


def knn_accuracy(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    k: int = 5,
    metric: str = "cosine",
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a ``k``-nearest-neighbour classifier under stratified folds,
    pooled over the folds (every example predicted once, by the model that did not see
    it; equal to the mean of the folds' accuracies when the folds are of one size).

    Features are standardised on each training fold.  ``folds`` drops to the size of the
    smallest class when that is smaller, and ``k`` to the smallest training fold.
    Raises :class:`DataError` when a class has fewer than 2 examples (or there is only
    one class) and :class:`ConfigError` for a bad ``k``, ``metric`` or ``folds``.
    """
    return float(knn_correct(features, targets, k=k, metric=metric, folds=folds, seed=seed).mean())


def knn_correct(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    k: int = 5,
    metric: str = "cosine",
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Per example [N]: 1.0 where the classifier of :func:`knn_accuracy` fitted on the
    other folds predicts its class, else 0.0 (the accuracy is their mean)."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if k < 1:
        raise ConfigError(f"k must be at least 1 (got {k})")
    if metric not in KNN_METRICS:
        raise ConfigError(f"k-NN metric {metric!r}; valid: {', '.join(KNN_METRICS)}")
    f, y = _check_features(features, targets)
    splits = _cv_splits(f, y, folds, seed)
    k = min(k, min(len(train) for train, _ in splits))
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k, metric=metric))
    return _held_out_correct(model, f, y, splits)


def linear_probe_accuracy(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    c: float | None = None,
) -> float:
    """Held-out accuracy of a logistic regression under stratified folds, pooled as in
    :func:`knn_accuracy`: on each training fold the head is solved to convergence on
    standardised features with the L2 strength chosen by an inner cross-validation
    (:func:`headstart.train.head_solver.solve_head`, as scikit-learn's
    ``LogisticRegressionCV``), or at inverse strength ``c`` when given.

    Folds and errors as for :func:`knn_accuracy`.
    """
    return float(linear_probe_correct(features, targets, folds=folds, seed=seed, c=c).mean())


def linear_probe_correct(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    c: float | None = None,
) -> np.ndarray:
    """Per example [N], as :func:`knn_correct` for :func:`linear_probe_accuracy`."""
    if c is not None and c <= 0:
        raise ConfigError(f"regularisation c must be positive (got {c})")
    f, y = _check_features(features, targets)
    n_classes = int(y.max()) + 1
    correct = np.zeros(len(y), dtype=np.float64)
    for train_idx, test_idx in _cv_splits(f, y, folds, seed):
        head = solve_head(
            f[train_idx], y[train_idx], n_classes, cs=None if c is None else [c], seed=seed
        )
        logits = f[test_idx] @ head.weight.numpy().T.astype(f.dtype) + head.bias.numpy()
        correct[test_idx] = (logits.argmax(axis=1) == y[test_idx]).astype(np.float64)
    return correct


def _held_out_correct(
    model: Any, f: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """1.0 where the model fitted on the other folds predicts an example's class, else 0.0."""
    from sklearn.model_selection import cross_val_predict

    return (cross_val_predict(model, f, y, cv=splits) == y).astype(np.float64)
