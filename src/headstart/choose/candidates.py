"""What ``headstart rank`` ranks and returns: the candidates given, each one's scores, the
table and its order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.choose.rankers import RANKERS, ScoreResult
from headstart.choose.vs_random import CLEARLY_ABOVE_Z, Comparison
from headstart.errors import ConfigError
from headstart.sources import parse_source_spec
from headstart.weights.resolve import parse_weights

__all__ = [
    "METHOD_ALIASES",
    "Candidate",
    "CandidateResult",
    "RankResult",
    "format_rank",
    "line_notes",
    "parse_candidates",
    "parse_methods",
    "ranked",
]

log = logging.getLogger(__name__)


# Short names the command accepts for the registered methods.
METHOD_ALIASES = {"probe": "linear-probe"}


# Where --method all puts each method, and so which one ranks the table: k-NN accuracy,
# the score whose order (with the random-initialisation line) matched fine-tuning most
# often in bench/rank_validate.py (bench/RESULTS.md), then LogME.
_ALL_ORDER = ("knn", "logme", "leep", "linear-probe")


@dataclass(frozen=True)
class Candidate:
    """One candidate: ``text`` as given, split into a source spec and its weights."""

    text: str
    source: str
    weights: str = "default"


def parse_candidates(text: str) -> list[Candidate]:
    """``SPEC[@WEIGHTS],SPEC[@WEIGHTS],...`` -> candidates, checked for form.

    A candidate is split at its first ``@``; a ``file:PATH`` candidate whose whole
    ``PATH`` exists is not split (so a run dir with an ``@`` in its name still works).
    Raises :class:`ConfigError` for an empty list, an empty part, a duplicate, or a
    malformed spec or weights.
    """

    parts = [p.strip() for p in text.split(",")] if text else []
    if not parts or not any(parts):
        raise ConfigError(
            "--sources: give the candidates, comma-separated, each SPEC or SPEC@WEIGHTS, "
            "e.g. builtin:digits-cnn,builtin:digits-cnn@none"
        )
    out: list[Candidate] = []
    for part in parts:
        if not part:
            raise ConfigError(f"--sources {text!r}: an empty candidate (two commas in a row?)")
        if part.startswith("file:") and Path(part[len("file:") :]).exists():
            spec, weights = part, "default"
        else:
            spec, at, weights = part.partition("@")
            if at and not weights:
                raise ConfigError(
                    f"--sources: {part!r} has nothing after '@'; give default, none, a weights "
                    "file or a URL"
                )
            weights = weights or "default"
        parse_source_spec(spec)
        try:
            parse_weights(weights)
        except Exception as exc:  # name the candidate, not a --weights flag it never used
            raise type(exc)(f"--sources candidate {part!r}: {exc}") from None
        candidate = Candidate(text=part, source=spec, weights=weights)
        if any((c.source, c.weights) == (spec, weights) for c in out):
            raise ConfigError(f"--sources: {part!r} is listed twice")
        out.append(candidate)
    return out


def parse_methods(text: str) -> list[str]:
    """``all`` or a comma-separated list of method names (``probe`` = ``linear-probe``)."""
    names = [m.strip() for m in (text or "").split(",") if m.strip()]
    if not names:
        raise ConfigError("--method: give logme, leep, knn, probe or all")
    if "all" in names:
        registered = RANKERS.names()
        return [m for m in _ALL_ORDER if m in registered] + [
            m for m in registered if m not in _ALL_ORDER
        ]
    out = []
    for name in names:
        name = METHOD_ALIASES.get(name, name)
        if name not in RANKERS:
            valid = ", ".join([*RANKERS.names(), *METHOD_ALIASES, "all"])
            raise ConfigError(f"--method: unknown method {name!r}; valid: {valid}")
        if name not in out:
            out.append(name)
    return out


@dataclass
class CandidateResult:
    """What ``rank`` measured for one candidate."""

    candidate: str
    source: str
    weights: str
    weights_description: str
    scores: dict[str, ScoreResult]
    features_s: float  # the one forward pass over the data that every method shares
    feature_dim: int
    # the architecture, as the names and shapes of the backbone's parameters: candidates
    # with the same one are the same network with other weights
    architecture: str = ""
    random_init: bool = False  # weights `none`: the architecture randomly initialised
    reference: bool = False  # not listed in --sources: added as its architecture's line
    # per method: the score minus that of the same architecture randomly initialised
    vs_random: dict[str, Comparison | None] = field(default_factory=dict)
    vs_random_of: str | None = None  # the random-initialisation candidate compared with
    compare_s: float = 0.0  # the seconds the comparisons took
    # with --validate: held-out accuracy after fine-tuning, per fold, and the seconds
    fold_accuracies: list[float] = field(default_factory=list)
    finetune_s: float | None = None
    # CPU seconds of this process (all threads) over the scoring and the fine-tuning: on
    # a shared machine the wall clock of a sub-second step moves with what else runs
    scoring_cpu_s: float = 0.0
    finetune_cpu_s: float | None = None
    # a file:RUN candidate trained on items of the data ranked: why it is out of the verdict
    seen_data: str = ""

    @property
    def scoring_s(self) -> float:
        return self.features_s + sum(s.seconds for s in self.scores.values()) + self.compare_s

    @property
    def accuracy(self) -> float | None:
        return float(np.mean(self.fold_accuracies)) if self.fold_accuracies else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "source": self.source,
            "weights": self.weights,
            "weights_description": self.weights_description,
            "feature_dim": self.feature_dim,
            "architecture": self.architecture,
            "random_init": self.random_init,
            "reference": self.reference,
            "scores": {k: v.to_dict() for k, v in self.scores.items()},
            "vs_random": {k: None if v is None else v.to_dict() for k, v in self.vs_random.items()},
            "vs_random_of": self.vs_random_of,
            "features_s": self.features_s,
            "compare_s": self.compare_s,
            "scoring_s": self.scoring_s,
            "accuracy": self.accuracy,
            "fold_accuracies": self.fold_accuracies,
            "finetune_s": self.finetune_s,
            "scoring_cpu_s": self.scoring_cpu_s,
            "finetune_cpu_s": self.finetune_cpu_s,
            "seen_data": self.seen_data,
        }


@dataclass
class RankResult:
    """Candidates best first by ``methods[0]``; with validation, Kendall's tau per method."""

    data: str
    n_items: int
    n_classes: int
    methods: list[str]
    candidates: list[CandidateResult]
    validation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ranked_by(self) -> str:
        return self.methods[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "n_items": self.n_items,
            "n_classes": self.n_classes,
            "methods": self.methods,
            "ranked_by": self.ranked_by,
            "candidates": [c.to_dict() for c in self.candidates],
            "validation": self.validation,
            "notes": self.notes,
            "timings": self.timings,
        }


def ranked(candidates: list[CandidateResult], method: str) -> list[CandidateResult]:
    """``candidates`` best first by ``method``'s score, except that a pretrained source
    not clearly above its own network at random (``vs_random[method].above`` false) goes
    just below that random initialisation when it scored higher; unscored ones, and then
    those trained on the data ranked (``seen_data``: their scores say nothing), last."""
    by_name = {c.candidate: c for c in candidates}

    def key(c: CandidateResult) -> tuple[int, float, int, float]:
        value = c.scores[method].value
        if c.seen_data:
            return (2, -(value or 0.0), 0, 0.0)
        if value is None:
            return (1, 0.0, 0, 0.0)
        line = c.vs_random.get(method)
        baseline = by_name.get(c.vs_random_of or "")
        floor = None if baseline is None else baseline.scores[method].value
        if line is not None and not line.above and floor is not None and value >= floor:
            return (0, -floor, 1, -value)  # right after the random initialisation
        return (0, -value, 0, 0.0)

    return sorted(candidates, key=key)


def line_notes(results: list[CandidateResult], method: str) -> list[str]:
    """What the random-initialisation line says, by ``method``: which pretrained sources
    are no better than random weights of their own network."""
    notes = []
    for r in results:
        c = r.vs_random.get(method)
        if c is None or c.above:
            continue
        notes.append(
            f"{r.candidate}: {method} is not clearly above {r.vs_random_of} "
            f"({c.difference:+.4f} +- {c.se:.4f}, needs > {CLEARLY_ABOVE_Z} standard errors): "
            "its features are no better than random ones of the same network, so fine-tuning "
            "it gently is unlikely to beat training from scratch (negative transfer); ranked "
            "below the random initialisation -- try `fit --strategy scratch` or another source"
        )
    return notes


def format_rank(result: RankResult) -> str:
    """The ranked table (each score with its seconds, and the first method's difference
    from the random initialisation), the notes, and the validation."""
    first = result.ranked_by
    names = [
        c.candidate + (" (reference)" if c.reference else "") + (" (seen!)" if c.seen_data else "")
        for c in result.candidates
    ]
    width = max(len("candidate"), *(len(n) for n in names))
    cell = 17
    header = f"{'#':>2}  {'candidate':<{width}}  " + "  ".join(
        f"{m:>{cell}}" for m in result.methods
    )
    compared = any(c.vs_random.get(first) is not None for c in result.candidates)
    if compared:
        header += f"  {'vs random init':>18}"
    header += f"  {'features s':>10}"
    validated = result.validation is not None
    if validated:
        header += f"  {'fine-tuned acc':>14}  {'fine-tune s':>11}"
    lines = [
        f"{result.n_items} items, {result.n_classes} classes; best first by {first} "
        "(higher is better), a pretrained source not clearly above its network at random "
        "below that; each score with the seconds it took",
        header,
    ]
    for i, (c, name) in enumerate(zip(result.candidates, names, strict=True), 1):
        cells = []
        for m in result.methods:
            s = c.scores[m]
            text = "skipped" if s.value is None else f"{s.value:.4f} ({s.seconds:.2f}s)"
            cells.append(f"{text:>{cell}}")
        row = f"{i:>2}  {name:<{width}}  " + "  ".join(cells)
        if compared:
            line = c.vs_random.get(first)
            text = (
                "-"
                if line is None
                else f"{line.difference:+.4f} +- {line.se:.4f}" + ("" if line.above else "!")
            )
            row += f"  {text:>18}"
        row += f"  {c.features_s:>10.2f}"
        if validated:
            acc = "-" if c.accuracy is None else f"{c.accuracy:.3f}"
            row += f"  {acc:>14}  {c.finetune_s or 0.0:>11.1f}"
        lines.append(row)
    if any(c.seen_data for c in result.candidates):
        lines.append("seen!: trained on items of the data ranked; out of the ranking")
    lines += [f"note: {n}" for n in result.notes]
    lines += _validation_lines(result)
    return "\n".join(lines)


def _validation_lines(result: RankResult) -> list[str]:
    """With ``--validate``: how the candidates were fine-tuned, Kendall's tau per method,
    and what scoring cost next to fine-tuning."""
    v = result.validation
    if v is None:
        return []
    lines = [
        f"validation: {v['strategy']} fine-tuning, {v['epochs']} epochs, accuracy on the "
        f"held-out folds of {v['folds']}-fold cross-validation (a random candidate's "
        "backbone trains at the head's rate)"
    ]
    for m, t in v["kendall_tau"].items():
        if t["tau"] is None:
            lines.append(f"  Kendall's tau, {m} vs accuracy: - ({t['note']})")
        else:
            lines.append(
                f"  Kendall's tau, {m} vs accuracy: {t['tau']:+.2f} (p = {t['p_value']:.2f}, "
                f"{len(result.candidates)} candidates; {m}'s scores alone, without the "
                f"random-initialisation line: {t['score_tau']:+.2f})"
            )
    ratio = "-" if v["ratio"] is None else f"{v['ratio']:.1%}"
    cpu_ratio = "-" if v.get("cpu_ratio") is None else f"{v['cpu_ratio']:.1%}"
    lines.append(
        f"  time: scoring all {v['scoring_s']:.1f}s, fine-tuning all {v['finetune_s']:.1f}s "
        f"(scoring costs {ratio} of fine-tuning); CPU time {v['scoring_cpu_s']:.1f}s vs "
        f"{v['finetune_cpu_s']:.1f}s ({cpu_ratio})"
    )
    return lines
