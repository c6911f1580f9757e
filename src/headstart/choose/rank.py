"""``headstart rank``: score candidate sources on the target data, without fine-tuning.

Each candidate is a source spec with, optionally, its weights: ``SPEC`` or
``SPEC@WEIGHTS`` (``WEIGHTS`` as for ``--weights``: ``default``, ``none``, a weights file or
a URL), so one architecture can be ranked with several sets of weights, e.g.
``builtin:digits-cnn,builtin:digits-cnn@none,builtin:digits-cnn@runs/other/model.safetensors``.

For every candidate the backbone runs once over the target data
(:func:`~headstart.features.extract.extract_features`: images, or texts for ``hf:`` text
encoders, cut to ``--max-length`` tokens; one call ranks one kind of source, on data of
that kind) and each transferability score of
:mod:`headstart.choose.scores` is computed on those features; the table lists the scores and the
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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart._progress import bar, inner
from headstart.choose.candidates import (
    Candidate,
    CandidateResult,
    RankResult,
    line_notes,
    parse_candidates,
    parse_methods,
    ranked,
)
from headstart.choose.rank_validate import (
    finetune_on_folds,
    kendall_taus,
    validation_epochs,
    validation_folds,
)
from headstart.choose.rankers import RANKERS, score_features
from headstart.choose.scores import NO_SOURCE_HEAD
from headstart.choose.seen import overlap
from headstart.choose.vs_random import compare_features
from headstart.config.options import RankOptions
from headstart.config.strategies import strategy_of
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError, DataError, HeadstartError
from headstart.features.extract import Features, extract_features
from headstart.rundir import META_FILE, read_meta
from headstart.runtime import seed_everything
from headstart.sources.base import Source
from headstart.sources.inputs import check_candidate
from headstart.sources.kinds import check_known_kinds, check_one_kind
from headstart.train.assemble import MIN_STEPS, _build_source, load_training_data
from headstart.train.loop import EVAL_BATCH

log = logging.getLogger(__name__)


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

    # The same seed as train_on uses before building: a randomly initialised candidate
    # is scored with the very weights --validate then fine-tunes.
    seed_everything(options.seed)
    source = _build_source(
        options.fit_options(source=candidate.source, weights=candidate.weights), scratch=False
    )
    check_candidate(source.inputs.kind, data, candidate.text)
    need_probs = any(RANKERS.get(m).needs_source_probs for m in methods)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    features = extract_features(
        source,
        data,
        batch_size=options.batch_size or EVAL_BATCH,
        device=options.device,
        with_source_logits=need_probs,
        workers=options.workers,
        progress=options.progress,
        max_length=source.inputs.limited(options.max_length, source.spec).length,
    )
    features_s = time.perf_counter() - t0
    scores = score_features(features, methods=methods, seed=options.seed)
    if need_probs and source.old_head is not None and not source.weights.pretrained:
        for name in methods:
            if RANKERS.get(name).needs_source_probs and scores[name].value is not None:
                scores[name] = replace(
                    scores[name], note="the source's classifier head is randomly initialised"
                )
    log.debug(  # the table says it again
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


def _add_random_references(
    scored: list[tuple[CandidateResult, Features, Source]],
    data: LabeledData,
    options: RankOptions,
    methods: list[str],
    notes: list[str],
) -> None:
    """For each architecture with no random initialisation among the candidates, score
    it randomly initialised (``ARCH@none``) and append it as a reference row."""

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


def rank_sources(options: RankOptions) -> RankResult:
    """Score every candidate of ``options.sources`` on ``options.data``; with
    ``options.validate`` also fine-tune each and compare the orders."""

    t_start = time.perf_counter()
    if not options.data:
        raise ConfigError("no target data given (DATA)")
    candidates = parse_candidates(options.sources)
    check_one_kind([(c.source, c.text) for c in candidates])
    methods = parse_methods(options.method)
    if options.validate:
        _check_validate(options)
    data = load_training_data(options.fit_options())
    # where known without building it, before any slow work
    check_known_kinds([(c.source, c.text) for c in candidates], data)
    unlabelled = int((data.targets < 0).sum())
    if unlabelled:
        raise DataError(f"{options.data}: {unlabelled} items have no label; rank needs labels")
    splits = validation_folds(data, options.folds, options.seed) if options.validate else []

    notes: list[str] = []
    scored = [
        _score_candidate(c, data, options, methods)
        for c in bar(candidates, desc="rank", enabled=options.progress)
    ]
    if options.random_init:
        _add_random_references(scored, data, options, methods, notes)
    _compare_with_random(scored, methods, options.seed)
    results = [r for r, _, _ in scored]
    del scored  # the features and the built sources are not needed past this point
    t_scored = time.perf_counter()
    notes += _head_notes(results, methods)
    _mark_seen(results, data, options.data)
    notes += line_notes(results, methods[0])
    validation = (
        _validate(results, data, options, splits, methods, notes) if options.validate else None
    )
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


def _mark_seen(results: list[CandidateResult], data: LabeledData, spec: str) -> None:
    """A ``file:RUN`` candidate trained on items of the data ranked scores them from
    memory: warned of, marked (``seen_data``), and left out of the verdict (ranked last)."""
    for r in results:
        run = Path(r.source.removeprefix("file:"))
        if not r.source.startswith("file:") or not (run / META_FILE).is_file():
            continue
        found = overlap(read_meta(run), data, spec)
        if found is None:
            continue
        r.seen_data = found.why
        log.warning(
            "%s was trained on the data ranked (%s): its scores measure memory, not "
            "transfer; left out of the ranking (listed last, marked seen!)",
            *(r.candidate, found.why),
        )


def _check_validate(options: RankOptions) -> None:
    """``--validate``'s options, before any slow work: the training ones, and a strategy
    that fine-tunes each candidate as it is."""
    if strategy_of(options.strategy).reinitialise:
        raise ConfigError(
            "--strategy scratch re-initialises every candidate, so --validate would "
            "fine-tune the same network each time; use full, partial:K or linear (rank "
            "a random initialisation as SPEC@none)"
        )


def _head_notes(results: list[CandidateResult], methods: list[str]) -> list[str]:
    """Which scores that read the source's classifier head were skipped (no head) or
    read a randomly initialised one."""
    notes: list[str] = []
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
    return notes


def _validate(
    results: list[CandidateResult],
    data: LabeledData,
    options: RankOptions,
    splits: list[tuple[np.ndarray, np.ndarray]],
    methods: list[str],
    notes: list[str],
) -> dict[str, Any]:
    """``--validate``: fine-tune every candidate on ``splits`` (at least ``MIN_STEPS``
    steps each, said in ``notes`` when that is more than ``--epochs``), Kendall's tau of
    each score against that accuracy, and the seconds each way."""
    epochs = validation_epochs(options, splits)
    if epochs > options.epochs:
        notes.append(
            f"--validate fine-tuned for {epochs} epochs, not --epochs {options.epochs}: "
            f"{options.epochs} epochs of the smallest fold are fewer than {MIN_STEPS} "
            "optimizer steps"
        )
    for r in bar(results, desc="rank --validate", enabled=options.progress):
        with inner():  # each candidate's folds: -v only
            finetune_on_folds(r, data, replace(options, epochs=epochs), splits)
    scoring_s = sum(r.scoring_s for r in results)
    finetune_s = sum(r.finetune_s or 0.0 for r in results)
    scoring_cpu_s = sum(r.scoring_cpu_s for r in results)
    finetune_cpu_s = sum(r.finetune_cpu_s or 0.0 for r in results)
    return {
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
