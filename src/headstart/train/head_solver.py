"""A linear head on frozen features, solved to convergence: L2-regularised logistic regression.

When the backbone is frozen, the head's training problem is convex, and a few epochs of
AdamW stop well short of its optimum (up to 14 points of accuracy below scikit-learn's
``make_pipeline(StandardScaler(), LogisticRegressionCV())`` on the same features).
:func:`solve_head` solves it the way scikit-learn does, in torch:

- **Features** are standardised (mean 0, standard deviation 1 per feature, computed once
  on all the examples given, as ``StandardScaler`` in front of ``LogisticRegressionCV``
  is; a feature whose variance is indistinguishable from zero keeps scale 1, by
  StandardScaler's own test).  The standardisation is then *folded into* the returned
  weight and bias, so ``features @ weight.T + bias`` on the raw features gives the logits
  and the head loads into an ordinary ``nn.Linear(D, n_classes)``
  (:meth:`HeadSolution.load_into`).  (The folds' held-out rows count in the mean and
  scale too, as in that pipeline, whose scaler sees all of them.  The folded head is
  float32, like the layer: features whose mean is many times their spread lose a few
  digits in ``x @ weight.T + bias``, as in any linear layer on such raw features.)
- **Objective**: scikit-learn's multinomial ``LogisticRegression(solver="lbfgs")``,
  ``C * sum_i CE_i + ||W||^2 / 2`` with the bias not penalised, minimised in the form
  ``mean CE + ||W||^2 / (2 C N)``.  With two classes scikit-learn fits one weight vector
  ``w`` (binary logistic, penalty ``||w||^2 / 2``); the two-row softmax here has ``w =
  W[1] - W[0]`` with ``W[0] = -W[1]`` at the optimum, so its penalty is doubled to give
  the same solution.
- **Solver**: full-batch L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search) in
  float64, stopped when the largest gradient component is at most ``tol`` (scikit-learn's
  ``gtol``, same default 1e-4), warm-started along the C path in increasing order.  The
  k folds' problems at one C are solved as one (:class:`_Problems`): a fifth of the
  Python overhead, which is most of the cost on a head's usual few hundred examples.
- **C** is chosen as ``LogisticRegressionCV`` chooses it: the grid ``cs`` (default
  ``np.logspace(-4, 4, 10)``, its ``Cs=10``), stratified k-fold cross-validation,
  accuracy on each held-out fold, the best sum over folds; then a refit on all the
  examples, started from the folds' mean solution at that C.  One difference: where
  several C tie on that sum (on a hundred examples a plateau of equal held-out accuracy
  is the rule: every C from 3 up scores 0.85), the tie goes to the C whose held-out
  predictions have the lowest log-loss (mean over folds, computed from the same held-out
  logits), not to the smallest C as scikit-learn's ``argmax`` does; equal log-losses
  (to 1e-12) go to the smallest.  Accuracy moves by whole examples, log-loss with every
  held-out probability, so it separates what accuracy cannot.  Measured
  (bench/RESULTS.md, "Ties of held-out accuracy"; bench/head_solver.py): over 193 cases
  (digits pixels at 5-50 per class and BBC News with MiniLM, 20 draws each; the bench's
  three image cases in 31 draws each) 0.12 points ahead of ``LogisticRegressionCV`` on
  average against 0.01 with its rule, the worst case 1.0 behind against 2.0; at 5 per
  class 0.5 ahead.

The folds are ``LogisticRegressionCV``'s own: scikit-learn's ``StratifiedKFold`` in the
examples' order, not shuffled (``seed=K`` shuffles them with that seed, as
:func:`headstart.choose.scores.linear_probe_correct` does for its outer folds). A fit
hands its examples in the data's order, class by class and file by file, so each
held-out fold is a run of neighbouring files; where those are near-duplicates (bursts,
frames) a shuffled fold would score every C on near-copies of its training images, which
no test set holds. Measured (bench/RESULTS.md, "The linear head's folds";
bench/head_solver.py): on 15 cases (digits pixels, BBC News with MiniLM, the bench's
three image cases) these folds are 0.02 points ahead of ``LogisticRegressionCV`` on
average, shuffled ones 0.20 behind, and on the clip-art case shuffled folds picked
C=0.006 (test 0.376) where these pick 2.78 (0.404), over 20 shuffle seeds anything from
1e-4 to 167. So on the same features the held-out accuracies are scikit-learn's up to
the solvers' tolerance: at large C both stop at the gradient tolerance well short of the
exact optimum, a prediction near a tie can come out either way, and the test accuracy
moves with it. That is noise of up to a point on a hundred examples, in scikit-learn
too: over the same 193 cases ``LogisticRegressionCV`` at ``tol=1e-6`` scores more than
half a point below itself at the default 1e-4 on 13, this solver on 12.

Fewer folds are used when the smallest class has fewer than ``folds`` examples (at least
2); with a class of a single example there is no stratified split at all, so C = 1.0
(scikit-learn's default) is used without cross-validation, and :meth:`describe` says so.
A grid of one C is used as given, without cross-validation.

Classes in ``range(n_classes)`` with no example get a zero weight row and the bias ``-log
N``, after the present classes' rows and biases are centred (their mean over classes
subtracted, which leaves every softmax among them as it was). The present logits then
average 0 on any input, so their largest is at least 0 and an absent class is never
predicted, on any input, and its probability is at most ``1/N`` everywhere; yet its
value is finite, so label smoothing and a later fine-tuning can still move it (an
infinite or -1e9 bias would make the loss infinite or the class unlearnable).  (A floor
taken from the training examples' logits held there only: at a large C the logits of a
new example can all lie far below those.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from headstart.errors import ConfigError, DataError

__all__ = ["DEFAULT_CS", "HeadSolution", "solve_head"]

log = logging.getLogger(__name__)

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 10))
"""``LogisticRegressionCV``'s grid for ``Cs=10``."""

NO_CV_C = 1.0
"""C when cross-validation is impossible (a class of one example): scikit-learn's default."""


@dataclass(frozen=True)
class HeadSolution:
    """A solved linear head: ``logits = features @ weight.T + bias`` on the raw features.

    ``weight`` [n_classes, D] and ``bias`` [n_classes] are float32 CPU tensors;
    ``c`` is the inverse L2 strength used for them; ``cs`` the grid tried,
    ``cv_accuracy`` the mean held-out accuracy at each and ``cv_log_loss`` the mean
    held-out log-loss (both empty without cross-validation: a grid of one C, or a class
    of one example); ``folds`` the number of folds (0 without); ``seconds`` the wall
    time of the whole solve; ``converged`` whether the final fit stopped before
    ``max_iter`` (at the gradient tolerance, or where float64 rounding stops the
    objective from decreasing: scikit-learn's notion); ``iterations`` the L-BFGS
    iterations of all fits; ``note`` what was adapted (fewer folds, no cross-validation,
    absent classes).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    c: float
    cv_accuracy: list[float]
    folds: int
    seconds: float
    cs: tuple[float, ...] = ()
    converged: bool = True
    iterations: int = 0
    note: str = ""
    cv_log_loss: list[float] = field(default_factory=list)

    def describe(self) -> str:
        """One line: the solver, the C and how it was chosen."""
        if self.folds:
            i = self.cs.index(self.c) if self.c in self.cs else -1
            best = self.cv_accuracy[i] if i >= 0 else math.nan
            how = f"chosen by {self.folds}-fold CV (held-out accuracy {best:.2f}"
            tied = sum(_same_accuracy(a, best) for a in self.cv_accuracy)
            if tied > 1 and self.cv_log_loss:
                how += f", the best held-out log-loss ({self.cv_log_loss[i]:.3f}) of {tied} tied"
            how += ")"
        elif len(self.cs) == 1:
            how = "as given"
        else:
            how = "without cross-validation"
        text = f"L-BFGS logistic head, C={self.c:.3g} {how}"
        if not self.converged:
            text += ", not converged"
        return f"{text}; {self.note}" if self.note else text

    def load_into(self, head: nn.Linear) -> None:
        """Copy the weight and bias into ``head`` (an ``nn.Linear(D, n_classes)``), in its
        dtype and on its device."""
        if tuple(head.weight.shape) != tuple(self.weight.shape) or head.bias is None:
            raise ConfigError(
                f"the solved head is [{self.weight.shape[0]}, {self.weight.shape[1]}] with a "
                f"bias; the layer is {tuple(head.weight.shape)}"
                f"{'' if head.bias is not None else ' without a bias'}"
            )
        with torch.no_grad():
            head.weight.copy_(self.weight)
            head.bias.copy_(self.bias)


def solve_head(
    features: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    n_classes: int,
    *,
    cs: Sequence[float] | np.ndarray | None = None,
    folds: int = 5,
    seed: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> HeadSolution:
    """The L2-regularised multinomial logistic head of ``features`` [N, D] for ``labels``
    [N] in ``range(n_classes)``, its C chosen by cross-validation (see the module's text).

    ``cs``: the grid of C (inverse regularisation strength); ``folds``: at most this many
    stratified folds; ``seed``: their shuffle (None, the default: in the examples' order);
    ``max_iter``: L-BFGS iterations per fit; ``tol``: the gradient tolerance.  Computes
    on the CPU in float64 with torch's current thread count.

    Raises :class:`ConfigError` for malformed arguments (shapes, labels outside
    ``range(n_classes)``, a bad grid) and :class:`DataError` for unusable data (no
    examples, NaN or infinite features, unlabelled examples, fewer than 2 classes).
    """
    t0 = time.perf_counter()
    x, y = _check(features, labels, n_classes)
    grid = _check_grid(cs, folds, max_iter, tol)
    present, y_local, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(present) < 2:
        raise DataError(
            f"a classifier head needs examples of at least 2 classes; all {len(y)} are of "
            f"class #{int(present[0])}"
        )
    mean, scale = _standardiser(x)
    za = _standardised(x, mean, scale)
    yt = torch.from_numpy(y_local.astype(np.int64))
    # two classes: scikit-learn's binary logistic regression, see the module's text
    penalty = 2.0 if len(present) == 2 else 1.0
    choice = _choose_c(za, yt, present, counts, grid, folds, seed, penalty, max_iter, tol)
    whole = _Problems(za, yt, torch.ones(1, len(yt), dtype=torch.float64), len(present))
    c, theta0 = choice.c, choice.theta0
    theta, n_iter, converged = whole.solve(penalty / (c * whole.n), theta0, max_iter, tol)
    if not converged:
        log.warning(
            "logistic head: L-BFGS did not reach gradient tolerance %g in %d iterations "
            "(C=%g); raise max_iter",
            tol,
            max_iter,
            c,
        )
    del za
    weight, bias = _fold(theta[0].numpy(), mean, scale)
    weight, bias = _all_classes(weight, bias, -math.log(len(y)), present, n_classes)
    notes = list(choice.notes)
    absent = n_classes - len(present)
    if absent:
        notes.append(f"{absent} class(es) without examples are never predicted")
    return HeadSolution(
        weight=torch.from_numpy(weight).to(torch.float32),
        bias=torch.from_numpy(bias).to(torch.float32),
        c=float(c),
        cv_accuracy=choice.cv_accuracy,
        cv_log_loss=choice.cv_log_loss,
        folds=choice.folds,
        seconds=time.perf_counter() - t0,
        cs=tuple(grid),
        converged=converged,
        iterations=choice.iterations + n_iter,
        note="; ".join(notes),
    )


@dataclass(frozen=True)
class _Choice:
    """The C chosen, the refit's start [1, K, D + 1], the cross-validation's record."""

    c: float
    theta0: torch.Tensor
    cv_accuracy: list[float]
    cv_log_loss: list[float]
    folds: int
    iterations: int
    notes: list[str]


def _choose_c(
    za: torch.Tensor,
    y: torch.Tensor,
    present: np.ndarray,
    counts: np.ndarray,
    grid: list[float],
    folds: int,
    seed: int | None,
    penalty: float,
    max_iter: int,
    tol: float,
) -> _Choice:
    """C by cross-validation over ``grid``; as given for a grid of one, :data:`NO_CV_C`
    (with a note) when a class has a single example."""
    n_present, smallest = len(present), int(counts.min())
    if len(grid) == 1 or smallest < 2:
        c = grid[0] if len(grid) == 1 else NO_CV_C
        single = ", ".join(f"#{int(k)}" for k, m in zip(present, counts, strict=True) if m < 2)
        why = f"class {single} has a single example: too few to cross-validate, so C={c:g}"
        theta0 = torch.zeros(1, n_present, za.shape[1], dtype=torch.float64)
        return _Choice(c, theta0, [], [], 0, 0, [why] if len(grid) > 1 else [])
    n_folds = min(folds, smallest)
    notes: list[str] = []
    if n_folds < folds:
        notes.append(f"{n_folds} folds, not {folds}: the smallest class has {smallest}")
    accuracy, log_loss, mean_thetas, iterations = _cross_validate(
        za, y, n_present, grid, n_folds, seed, penalty, max_iter, tol
    )
    best = _best(accuracy, log_loss)
    return _Choice(
        grid[best],
        mean_thetas[best][None],
        [float(a) for a in accuracy],
        [float(v) for v in log_loss],
        n_folds,
        iterations,
        notes,
    )


def _same_accuracy(a: float, b: float) -> bool:
    """Equal mean held-out accuracies (fractions of whole examples) up to float rounding."""
    return abs(a - b) <= 1e-9


def _best(accuracy: np.ndarray, log_loss: np.ndarray) -> int:
    """The index of the best mean held-out accuracy; of equal ones, the lowest mean
    held-out log-loss; of equal log-losses (to 1e-12), the first (the smallest C)."""
    top = float(accuracy.max())
    tied = [i for i, a in enumerate(accuracy) if _same_accuracy(float(a), top)]
    lowest = min(float(log_loss[i]) for i in tied)
    return next(i for i in tied if float(log_loss[i]) <= lowest + 1e-12)


def _check(
    features: torch.Tensor | np.ndarray, labels: object, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features as float64 [N, D] and labels as int64 [N], or a clear error."""
    if isinstance(features, torch.Tensor):
        if features.is_complex() or features.dtype == torch.bool:
            raise ConfigError(f"features must be real numbers (got {features.dtype})")
        features = features.detach().to("cpu", torch.float64).numpy()  # bfloat16 too
    x = np.asarray(features)
    if x.ndim != 2:
        raise ConfigError(f"features must be a 2-D [N, D] array (got shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ConfigError(f"features must be numbers (got dtype {x.dtype})")
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise ConfigError(f"labels of shape {y.shape} do not match {len(x)} feature rows")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"labels must be integer class indices (got {y.dtype})")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer):
        raise ConfigError(f"n_classes must be an integer (got {n_classes!r})")
    if n_classes < 2:
        raise ConfigError(f"a classifier head needs n_classes >= 2 (got {n_classes})")
    if len(x) == 0:
        raise DataError("no examples to train the head on")
    if x.shape[1] == 0:
        raise ConfigError("features have no columns (D = 0)")
    y = y.astype(np.int64)
    unlabelled = int((y < 0).sum())
    if unlabelled:
        raise DataError(f"{unlabelled} examples have no label (a negative class index)")
    if int(y.max()) >= n_classes:
        raise ConfigError(
            f"labels go up to {int(y.max())}, outside range(n_classes) = range({n_classes})"
        )
    x = x.astype(np.float64, copy=False)  # not written to
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(
            f"features contain NaN or infinity in {len(rows)} of {len(x)} rows (first: row "
            f"{int(rows[0])}); is the backbone broken or an input unreadable?"
        )
    return x, y


def _check_grid(cs: object, folds: int, max_iter: int, tol: float) -> list[float]:
    """The grid of C in increasing order, after checking the solver's settings."""
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ConfigError(f"cross-validation needs folds >= 2 (got {folds!r})")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer (got {max_iter!r})")
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise ConfigError(f"tol must be a positive number (got {tol!r})")
    try:
        grid = np.asarray(DEFAULT_CS if cs is None else cs, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ConfigError(f"cs must be positive finite numbers (got {cs!r})") from None
    if grid.size == 0 or not np.isfinite(grid).all() or (grid <= 0).any():
        raise ConfigError(f"cs must be positive finite numbers (got {cs!r})")
    return [float(c) for c in np.unique(grid)]  # sorted, without repeats


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale as ``StandardScaler`` computes them: the standard
    deviation (ddof 0), or 1 where the variance is within float64 rounding of zero."""
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    eps = np.finfo(np.float64).eps
    n = len(x)
    constant = var <= n * eps * var + (n * mean * eps) ** 2  # sklearn's _is_constant_feature
    scale = np.sqrt(var)
    scale[constant] = 1.0
    return mean, scale


def _standardised(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> torch.Tensor:
    """``[(x - mean) / scale, 1]`` [N, D + 1]: the bias as a last weight column, so one
    product gives the logits."""
    za = torch.empty(len(x), x.shape[1] + 1, dtype=torch.float64)
    za[:, :-1] = torch.from_numpy(x)
    za[:, :-1].sub_(torch.from_numpy(mean)).div_(torch.from_numpy(scale))
    za[:, -1] = 1.0
    return za


class _Problems:
    """Logistic regressions on the rows of one matrix, solved as one.

    Problem ``f`` is ``sum_i r[f, i] CE(za[i] @ theta[f].T, y[i]) + lam[f] / 2 *
    ||theta[f, :, :-1]||^2`` with ``r[f]`` = ``1 / n[f]`` on the rows it trains on and 0
    elsewhere (``rows`` [F, N] marks them).  The problems share no parameter, so
    minimising their sum minimises each, and the largest gradient component of the sum is
    the largest of any problem's: one L-BFGS run with one gradient tolerance stops where
    every problem is solved to it.  Cross-validation's folds are solved this way, all
    folds at one C at once: two matrix products per step over the one copy of the data
    (its held-out rows cost a quarter more arithmetic, and give the held-out logits for
    free) instead of one pair per fold, and a fifth of the Python overhead of L-BFGS,
    which dominates on the small problems a head usually is.
    """

    def __init__(
        self, za: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, n_classes: int
    ) -> None:
        self.za, self.k = za, n_classes
        self.onehot = torch.nn.functional.one_hot(y, n_classes).to(za.dtype)[:, None, :]
        self.n = rows.sum(dim=1)
        self.row_weight = (rows / self.n[:, None]).T[:, :, None].contiguous()  # [N, F, 1]
        self.penalised = torch.ones(za.shape[1], dtype=torch.float64)
        self.penalised[-1] = 0.0  # the bias column

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """[N, F, K] for ``theta`` [F, K, D + 1]."""
        n_problems = theta.shape[0]
        flat = self.za @ theta.reshape(n_problems * self.k, -1).T
        return flat.view(len(self.za), n_problems, self.k)

    def solve(
        self, lam: torch.Tensor, theta0: torch.Tensor, max_iter: int, tol: float
    ) -> tuple[torch.Tensor, int, bool]:
        """Minimise from ``theta0`` [F, K, D + 1] with per-problem L2 strengths ``lam``
        [F]; returns theta, the iterations and whether it converged."""
        theta = theta0.clone()
        za, onehot, row_weight = self.za, self.onehot, self.row_weight
        lam3 = lam[:, None, None] * self.penalised
        n_problems = theta.shape[0]

        def closure() -> float:
            with torch.no_grad():
                logits = self.logits(theta)
                shifted = logits - logits.amax(dim=2, keepdim=True)
                e = torch.exp(shifted)
                total = e.sum(dim=2, keepdim=True)
                # CE = log sum exp - the true class's logit, per row and problem
                ce = torch.log(total) - (shifted * onehot).sum(dim=2, keepdim=True)
                w = theta * lam3
                loss = (row_weight * ce).sum() + 0.5 * (w * theta).sum()
                residual = e.div_(total).sub_(onehot).mul_(row_weight)  # dCE/dlogits
                grad = residual.view(len(za), -1).T @ za
                theta.grad = grad.view(n_problems, self.k, -1) + w
            return float(loss)

        optimiser = torch.optim.LBFGS(
            [theta],
            lr=1.0,
            max_iter=max_iter,
            max_eval=max_iter * 2,
            tolerance_grad=tol,
            tolerance_change=1e-14,
            history_size=10,  # as scikit-learn's L-BFGS-B
            line_search_fn="strong_wolfe",
        )
        optimiser.step(closure)
        state = optimiser.state[theta]
        n_iter = int(state.get("n_iter", 0))
        closure()
        assert theta.grad is not None
        # As scikit-learn's L-BFGS-B, whose only convergence warning is for running out
        # of iterations: stopping early because the objective no longer decreases
        # (float64 rounding, reachable with a very small tol) is convergence too.
        out_of_steps = n_iter >= max_iter or int(state.get("func_evals", 0)) >= max_iter * 2
        converged = float(theta.grad.abs().max()) <= tol or not out_of_steps
        return theta.detach(), n_iter, converged


def _cross_validate(
    za: torch.Tensor,
    y: torch.Tensor,
    n_present: int,
    grid: list[float],
    n_folds: int,
    seed: int | None,
    penalty: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor], int]:
    """Per C: the mean over folds of the held-out accuracy and of the held-out log-loss,
    the folds' mean solution (the refit's start); and the iterations spent."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=n_folds, shuffle=seed is not None, random_state=seed)
    y_np = y.numpy()
    tests = [test for _, test in splitter.split(np.zeros((len(y_np), 1)), y_np)]
    held_out = torch.zeros(n_folds, len(y), dtype=torch.bool)
    for f, test in enumerate(tests):
        held_out[f, torch.from_numpy(test)] = True
    problems = _Problems(za, y, (~held_out).double(), n_present)
    accuracy, log_loss = np.zeros(len(grid)), np.zeros(len(grid))
    means: list[torch.Tensor] = []
    theta = torch.zeros(n_folds, n_present, za.shape[1], dtype=torch.float64)
    iterations = 0
    for i, c in enumerate(grid):
        theta, n_iter, _ = problems.solve(penalty / (c * problems.n), theta, max_iter, tol)
        iterations += n_iter
        logits = problems.logits(theta)  # [N, F, K]
        right = logits.argmax(dim=2) == y[:, None]  # [N, F]
        nll = -torch.log_softmax(logits, dim=2).gather(2, y[:, None, None].expand(-1, n_folds, 1))
        for f in range(n_folds):
            accuracy[i] += float(right[held_out[f], f].double().mean()) / n_folds
            log_loss[i] += float(nll[held_out[f], f, 0].mean()) / n_folds
        means.append(theta.mean(dim=0))
    return accuracy, log_loss, means, iterations


def _fold(theta: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias on raw features of the head ``theta`` on standardised ones:
    ``((x - mean) / scale) @ W.T + b == x @ (W / scale).T + (b - (W / scale) @ mean)``."""
    weight = theta[:, :-1] / scale
    bias = theta[:, -1] - weight @ mean
    return weight, bias


def _all_classes(
    weight: np.ndarray, bias: np.ndarray, floor: float, present: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows for every class in ``range(n_classes)``: the present classes' as solved, the
    absent ones' zero with bias ``floor`` (< 0), the present ones then centred so that
    their logits average 0 on any input (see the module's text)."""
    if len(present) == n_classes:
        return weight, bias
    full_w = np.zeros((n_classes, weight.shape[1]))
    full_b = np.full(n_classes, floor)
    full_w[present] = weight - weight.mean(axis=0)
    full_b[present] = bias - bias.mean()
    return full_w, full_b
