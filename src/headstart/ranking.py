"""``headstart rank``: score candidate sources on the target data, without fine-tuning.

Each candidate is a source spec with, optionally, its weights: ``SPEC`` or
``SPEC@WEIGHTS`` (``WEIGHTS`` as for ``--weights``: ``default``, ``none``, a weights file or
a URL), so one architecture can be ranked with several sets of weights, e.g.
``builtin:digits-cnn,builtin:digits-cnn@none,builtin:digits-cnn@runs/other/model.safetensors``.

For every candidate the backbone runs once over the target data
(:func:`~headstart.features.extract_features`: images, or texts for ``hf:`` text
encoders, cut to ``--max-length`` tokens; one call ranks one kind of source, on data of
that kind) and each transferability score of
:mod:`headstart.rank` is computed on those features; the table lists the scores and the
seconds each took, best first by the first method asked for.

``--validate`` measures what the scores predict: every candidate is fine-tuned briefly
(``train_on``, the same machinery as ``fit`` and ``compare``) on stratified k folds of the
same data and scored on the held-out fold; Kendall's tau between each score and that
accuracy says whether the score orders the candidates as fine-tuning does, and the
seconds (wall and CPU) spent scoring and fine-tuning say what the shortcut saves.  Each
candidate is fine-tuned as a user would fit it: a pretrained backbone at
``--backbone-lr-mult`` x the rate, a random (``@none``) one at the full rate, as
``--strategy scratch`` trains it; and for at least ``MIN_STEPS`` optimizer steps per
fold (:func:`validation_epochs`), so that a tiny fold is not judged after a few steps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data import LabeledData
from headstart.errors import ConfigError, DataError
from headstart.features import Features
from headstart.options import RankOptions
from headstart.rank import (
    CLEARLY_ABOVE_Z,
    NO_SOURCE_HEAD,
    RANKERS,
    Comparison,
    ScoreResult,
    compare_features,
    score_features,
)
from headstart.sources.base import Source

__all__ = [
    "METHOD_ALIASES",
    "Candidate",
    "CandidateResult",
    "RankResult",
    "format_rank",
    "kendall_taus",
    "parse_candidates",
    "parse_methods",
    "rank_sources",
    "ranked",
    "validation_epochs",
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
    from headstart.sources import parse_source_spec
    from headstart.weights import parse_weights

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
    just below that random initialisation when it scored higher; unscored ones last."""
    by_name = {c.candidate: c for c in candidates}

    def key(c: CandidateResult) -> tuple[int, float, int, float]:
        value = c.scores[method].value
        if value is None:
            return (1, 0.0, 0, 0.0)
        line = c.vs_random.get(method)
        baseline = by_name.get(c.vs_random_of or "")
        floor = None if baseline is None else baseline.scores[method].value
        if line is not None and not line.above and floor is not None and value >= floor:
            return (0, -floor, 1, -value)  # right after the random initialisation
        return (0, -value, 0, 0.0)

    return sorted(candidates, key=key)


def _architecture(source: Source) -> str:
    """A short digest of the backbone's parameter names and shapes."""
    import hashlib

    shapes = [(k, tuple(v.shape)) for k, v in source.backbone.state_dict().items()]
    return f"{source.arch} {hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]}"


def _score_candidate(
    candidate: Candidate,
    data: LabeledData,
    options: RankOptions,
    methods: list[str],
    *,
    reference: bool = False,
) -> tuple[CandidateResult, Features, Source]:
    """Score one candidate; also returns its features (for the comparisons) and the
    built source (whose ``arch`` rebuilds the architecture at random)."""
    from headstart.api import _build_source, _max_length
    from headstart.features import extract_features
    from headstart.train import seed_everything

    # The same seed as train_on uses before building: a randomly initialised candidate
    # is scored with the very weights --validate then fine-tunes.
    seed_everything(options.seed)
    source = _build_source(
        replace(options, source=candidate.source, weights=candidate.weights), scratch=False
    )
    _check_kind(candidate, source.text is not None, data)
    need_probs = any(RANKERS.get(m).needs_source_probs for m in methods)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    features = extract_features(
        source,
        data,
        batch_size=options.batch_size,
        device=options.device,
        with_source_logits=need_probs,
        workers=options.workers,
        progress=options.progress,
        max_length=None if source.text is None else _max_length(options, source),
    )
    features_s = time.perf_counter() - t0
    scores = score_features(features, methods=methods, seed=options.seed)
    if need_probs and source.old_head is not None and not source.weights.pretrained:
        for name in methods:
            if RANKERS.get(name).needs_source_probs and scores[name].value is not None:
                scores[name] = replace(
                    scores[name], note="the source's classifier head is randomly initialised"
                )
    log.info(
        "%s: %s (%.2fs)",
        candidate.text,
        ", ".join(f"{m} {'-' if s.value is None else f'{s.value:.4f}'}" for m, s in scores.items()),
        features_s + sum(s.seconds for s in scores.values()),
    )
    result = CandidateResult(
        candidate=candidate.text,
        source=candidate.source,
        weights=candidate.weights,
        weights_description=source.weights.description,
        scores=scores,
        features_s=features_s,
        feature_dim=features.dim,
        architecture=_architecture(source),
        random_init=not source.weights.pretrained,
        reference=reference,
        scoring_cpu_s=time.process_time() - cpu0,
    )
    return result, features, source


def _kind_hint(spec: str) -> str | None:
    """``"text"`` or ``"image"``: what kind of source ``spec`` builds, where that is known
    without building it (an image family, or an ``hf:`` folder on disk); else None."""
    from headstart.sources import parse_source_spec

    family, name = parse_source_spec(spec)
    if family in ("builtin", "timm", "torchvision"):
        return "image"
    if family == "hf":
        from headstart.sources.hf import _is_vision

        folder = Path(name).expanduser()
        if (folder / "config.json").is_file():
            return "image" if _is_vision(folder) else "text"
    return None


def _check_not_mixed(candidates: list[Candidate]) -> None:
    """One call ranks image sources on images or text encoders on texts, not both."""
    kinds: dict[str, list[str]] = {}
    for c in candidates:
        kind = _kind_hint(c.source)
        if kind is not None:
            kinds.setdefault(kind, []).append(c.text)
    if len(kinds) > 1:
        raise ConfigError(
            f"--sources mixes text encoders ({', '.join(kinds['text'])}) and image sources "
            f"({', '.join(kinds['image'])}); rank one kind at a time, on data of that kind"
        )


def _check_kind(candidate: Candidate, text_source: bool, data: LabeledData) -> None:
    """A text encoder needs texts, an image source images: name the candidate."""
    from headstart.textdata import TextData

    texts = isinstance(data, TextData)
    if text_source and not texts:
        raise ConfigError(
            f"--sources candidate {candidate.text!r} is a text encoder, but {data.spec} holds "
            "images; rank text encoders on texts (a CSV, TSV or JSONL with text and label "
            "columns, or a folder of .txt files per class), and every candidate of one call "
            "on the same kind of data"
        )
    if not text_source and texts:
        raise ConfigError(
            f"--sources candidate {candidate.text!r} is an image source, but {data.spec} holds "
            "texts; rank text encoders (hf:FOLDER) on texts, and every candidate of one call "
            "on the same kind of data"
        )


def _add_random_references(
    scored: list[tuple[CandidateResult, Features, Source]],
    data: LabeledData,
    options: RankOptions,
    methods: list[str],
    notes: list[str],
) -> None:
    """For each architecture with no random initialisation among the candidates, score
    it randomly initialised (``ARCH@none``) and append it as a reference row."""
    from headstart.errors import HeadstartError

    have = {r.architecture for r, _, _ in scored if r.random_init}
    for result, _, source in list(scored):
        if result.architecture in have:
            continue
        have.add(result.architecture)
        size = source.arch_options.get("image_size") or options.image_size
        candidate = Candidate(text=f"{source.arch}@none", source=source.arch, weights="none")
        try:
            extra = _score_candidate(
                candidate, data, replace(options, image_size=size), methods, reference=True
            )
        except HeadstartError as exc:
            notes.append(
                f"no random-initialisation line for {result.candidate}: building "
                f"{candidate.text} failed ({exc})"
            )
            continue
        if extra[0].architecture != result.architecture:
            notes.append(
                f"no random-initialisation line for {result.candidate}: {candidate.text} "
                "builds a network of another shape"
            )
            continue
        scored.append(extra)


def _compare_with_random(
    scored: list[tuple[CandidateResult, Features, Source]], methods: list[str], seed: int
) -> None:
    """Each pretrained candidate's scores against its architecture at random."""
    randoms = {r.architecture: (r, f) for r, f, _ in scored if r.random_init}
    for result, features, _ in scored:
        if result.random_init or result.architecture not in randoms:
            continue
        baseline, baseline_features = randoms[result.architecture]
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        result.vs_random = {
            m: None
            if result.scores[m].value is None or baseline.scores[m].value is None
            else compare_features(
                features,
                baseline_features,
                m,
                seed=seed,
                scored=(result.scores[m], baseline.scores[m]),
            )
            for m in methods
        }
        result.vs_random_of = baseline.candidate
        result.compare_s = time.perf_counter() - t0
        result.scoring_cpu_s += time.process_time() - cpu0


def _folds(data: LabeledData, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ConfigError(f"--folds must be at least 2 (got {folds})")
    counts = np.bincount(data.targets, minlength=len(data.classes))
    if int(counts.min()) < folds:
        worst = data.classes[int(counts.argmin())]
        raise DataError(
            f"{data.spec}: class {worst!r} has {int(counts.min())} examples, fewer than "
            f"--folds {folds}; use fewer folds or add data"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(data.targets, data.targets))


def validation_epochs(options: RankOptions, splits: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """``--epochs``, raised where needed so that every fold's fine-tuning takes at least
    ``MIN_STEPS`` optimizer steps (the count below which ``fit`` warns that a new head
    may not converge): with 5 images per class a fold's training part is one batch, and
    ten epochs would be ten steps, a measure of how far each candidate got in ten steps
    rather than of what fine-tuning it gives."""
    from headstart.api import MIN_STEPS

    smallest = min(len(train) for train, _ in splits)
    rest = smallest % options.batch_size
    # as the training loader counts them: a last batch of one example is dropped
    batches = smallest // options.batch_size + (1 if rest >= 2 or smallest < 2 else 0)
    return max(options.epochs, math.ceil(MIN_STEPS / max(batches, 1)))


def _finetune(
    result: CandidateResult,
    data: LabeledData,
    options: RankOptions,
    splits: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    from headstart.api import train_on

    fold_options = replace(
        options,
        source=result.source,
        weights=result.weights,
        select="last",  # picking the best epoch on the held-out fold would flatter it
        patience=None,
    )
    if result.random_init:
        # A random backbone has nothing to preserve: it trains at the head's rate, as
        # `fit --strategy scratch` would train it, not at the slower rate that protects
        # pretrained weights (which would handicap the random baseline).
        fold_options = replace(fold_options, backbone_lr_mult=1.0)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for fold, (train_idx, test_idx) in enumerate(splits):
        trained = train_on(
            fold_options,
            data.subset(train_idx, note=f"fold {fold + 1} train"),
            data.subset(test_idx, note=f"fold {fold + 1} held out"),
        )
        result.fold_accuracies.append(float(trained.metrics["val_acc"]))
    result.finetune_s = time.perf_counter() - t0
    result.finetune_cpu_s = time.process_time() - cpu0
    log.info(
        "%s: fine-tuned (%s, %d epochs) accuracy %.3f over %d folds (%.1fs)",
        result.candidate,
        options.strategy,
        options.epochs,
        result.accuracy,
        len(splits),
        result.finetune_s,
    )


def kendall_taus(candidates: list[CandidateResult], methods: list[str]) -> dict[str, Any]:
    """Per method: Kendall's tau-b between the order the method ranks the candidates in
    (:func:`ranked`, with the random-initialisation line) and their fine-tuned
    accuracies; ``score_tau`` is the same for the raw scores alone.

    ``tau`` is None (with a note) when a score is missing for some candidate or either
    side is constant, where tau is undefined.
    """
    from scipy.stats import kendalltau

    accs = [c.accuracy for c in candidates]
    out: dict[str, Any] = {}
    for m in methods:
        values = [c.scores[m].value for c in candidates]
        if any(v is None for v in values) or any(a is None for a in accs):
            out[m] = {
                "tau": None,
                "p_value": None,
                "score_tau": None,
                "note": "not scored for every candidate",
            }
            continue
        if len(set(values)) < 2 or len(set(accs)) < 2:
            out[m] = {
                "tau": None,
                "p_value": None,
                "score_tau": None,
                "note": "undefined: the scores or the accuracies are all equal",
            }
            continue
        order = ranked(candidates, m)
        place = [-order.index(c) for c in candidates]  # higher is better, as a score
        res = kendalltau(place, accs)
        tau, p = float(res.statistic), float(res.pvalue)
        score_tau = float(kendalltau(values, accs).statistic)
        out[m] = {
            "tau": None if math.isnan(tau) else tau,
            "p_value": None if math.isnan(p) else p,
            "score_tau": None if math.isnan(score_tau) else score_tau,
            "note": "",
        }
    return out


def rank_sources(options: RankOptions) -> RankResult:
    """Score every candidate of ``options.sources`` on ``options.data``; with
    ``options.validate`` also fine-tune each and compare the orders."""
    from headstart.api import MIN_STEPS, load_training_data

    t_start = time.perf_counter()
    if not options.data:
        raise ConfigError("no target data given (DATA)")
    candidates = parse_candidates(options.sources)
    _check_not_mixed(candidates)
    methods = parse_methods(options.method)
    if options.validate:
        from headstart.plan import parse_strategy

        options.train_config()  # --epochs, --batch-size... before any slow work
        parse_strategy(options.strategy)
        if options.strategy == "scratch":
            raise ConfigError(
                "--strategy scratch re-initialises every candidate, so --validate would "
                "fine-tune the same network each time; use full, partial:K or linear (rank "
                "a random initialisation as SPEC@none)"
            )
    data = load_training_data(options)
    for c in candidates:  # where known without building it, before any slow work
        kind = _kind_hint(c.source)
        if kind is not None:
            _check_kind(c, kind == "text", data)
    unlabelled = int((data.targets < 0).sum())
    if unlabelled:
        raise DataError(f"{options.data}: {unlabelled} items have no label; rank needs labels")
    splits = _folds(data, options.folds, options.seed) if options.validate else []

    notes: list[str] = []
    scored = [_score_candidate(c, data, options, methods) for c in candidates]
    if options.random_init:
        _add_random_references(scored, data, options, methods, notes)
    _compare_with_random(scored, methods, options.seed)
    results = [r for r, _, _ in scored]
    del scored  # the features and the built sources are not needed past this point
    t_scored = time.perf_counter()
    for m in methods:
        if RANKERS.get(m).needs_source_probs:
            skipped = [r.candidate for r in results if r.scores[m].value is None]
            if skipped:
                notes.append(f"{m} skipped for {', '.join(skipped)}: {NO_SOURCE_HEAD}")
            guessed = [r.candidate for r in results if "randomly initialised" in r.scores[m].note]
            if guessed:
                notes.append(
                    f"{m} of {', '.join(guessed)} uses a randomly initialised classifier head"
                )

    notes += _line_notes(results, methods[0])

    validation = None
    if options.validate:
        epochs = validation_epochs(options, splits)
        if epochs > options.epochs:
            notes.append(
                f"--validate fine-tuned for {epochs} epochs, not --epochs {options.epochs}: "
                f"{options.epochs} epochs of the smallest fold are fewer than {MIN_STEPS} "
                "optimizer steps"
            )
        for r in results:
            _finetune(r, data, replace(options, epochs=epochs), splits)
        scoring_s = sum(r.scoring_s for r in results)
        finetune_s = sum(r.finetune_s or 0.0 for r in results)
        scoring_cpu_s = sum(r.scoring_cpu_s for r in results)
        finetune_cpu_s = sum(r.finetune_cpu_s or 0.0 for r in results)
        validation = {
            "strategy": options.strategy,
            "epochs": epochs,
            "min_steps": MIN_STEPS,
            "random_backbone_lr_mult": 1.0,
            "folds": len(splits),
            "kendall_tau": kendall_taus(results, methods),
            "scoring_s": scoring_s,
            "finetune_s": finetune_s,
            "ratio": scoring_s / finetune_s if finetune_s > 0 else None,
            "scoring_cpu_s": scoring_cpu_s,
            "finetune_cpu_s": finetune_cpu_s,
            "cpu_ratio": scoring_cpu_s / finetune_cpu_s if finetune_cpu_s > 0 else None,
        }
    results = ranked(results, methods[0])
    timings = {
        "scoring_total_s": t_scored - t_start,
        "total_s": time.perf_counter() - t_start,
    }
    return RankResult(
        data=options.data,
        n_items=len(data),
        n_classes=len(data.classes),
        methods=methods,
        candidates=results,
        validation=validation,
        notes=notes,
        timings=timings,
    )


def _line_notes(results: list[CandidateResult], method: str) -> list[str]:
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
    names = [c.candidate + (" (reference)" if c.reference else "") for c in result.candidates]
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
    lines += [f"note: {n}" for n in result.notes]
    v = result.validation
    if v is not None:
        lines.append(
            f"validation: {v['strategy']} fine-tuning, {v['epochs']} epochs, accuracy on the "
            f"held-out folds of {v['folds']}-fold cross-validation (a random candidate's "
            "backbone trains at the head's rate)"
        )
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
    return "\n".join(lines)
