"""The plans a recommendation chooses between, and their short names.

:func:`plan_for` turns one of the articles' four cases into a plan (strategy, backbone
rate multiplier, head-only epochs); :func:`alternatives` lists the case's rivals, each a
:class:`Candidate` with why it is still open, for :mod:`headstart.choose.race` to train;
:func:`plan_label` names a plan, e.g. ``full (head 2, x0.1)``.  The measurements that pick
the case are :mod:`headstart.choose.recommend`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from headstart.config.strategies import BackboneRate, strategy_of

__all__ = ["Candidate", "alternatives", "head_epochs_for", "plan_for", "plan_label"]


@dataclass(frozen=True)
class Candidate:
    """One plan a race may train: the fit options it sets (``strategy``,
    ``backbone_lr_mult``, ``head_epochs``, as :meth:`Recommendation.options`) and why it
    is in the race."""

    changes: dict[str, Any]
    reason: str

    @property
    def label(self) -> str:
        """A short name, e.g. ``full (head 2, x0.1)``, ``linear``, ``scratch``."""
        return plan_label(self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "changes": dict(self.changes), "reason": self.reason}


def plan_label(changes: dict[str, Any]) -> str:
    """``full (head 2, x0.1)``; the backbone multiplier only where the strategy uses it
    (not for ``linear``, which trains no backbone, nor ``scratch``, at the base rate)."""
    strategy = str(changes["strategy"])
    record = strategy_of(strategy)
    parts = [f"head {changes['head_epochs']}"] if changes.get("head_epochs") else []
    if record.trains_backbone and record.rate is BackboneRate.MULTIPLIED:
        parts.append(f"x{float(changes.get('backbone_lr_mult', 1.0)):g}")
    return f"{strategy} ({', '.join(parts)})" if parts else strategy


def head_epochs_for(epochs: int) -> int:
    """Head-only epochs before fine-tuning small data: a fifth of the run, at least one,
    and never all of it."""
    return min(max(1, round(epochs / 5)), epochs - 1) if epochs > 1 else 0


def plan_for(
    large: bool, similar: bool, stage_names: tuple[str, ...], epochs: int
) -> tuple[str, str, float, int, str]:
    """The case's name, strategy, backbone rate multiplier, head-only epochs and why."""
    n = len(stage_names)
    if not large and similar:
        return (
            "small + similar",
            "full",
            0.1,
            0,
            (
                "the source's features already separate the classes, and a small rate can "
                "still adapt them: fine-tune every stage at a tenth of the head's rate "
                "(freezing outright gives up what a small rate can still adapt, Kornblith et "
                "al., CVPR 2019; on digits 5-9 from a 0-4 source, 20 per class, 3 seeds: "
                "0.970 against 0.951 with the head solved first, LP-FT, which races as a rival)"
            ),
        )
    if not large and not similar:
        k = max(1, math.ceil(n / 2))
        return (
            "small + dissimilar",
            f"partial:{k}",
            0.1,
            0,
            (
                f"keep the generic early stages ({', '.join(stage_names[:k])}) as they are and "
                f"adapt the later, task-specific ones ({', '.join(stage_names[k:])}) to the new "
                "task: too few labels to move the whole network, too different a task to keep "
                "all of it"
            ),
        )
    if similar:
        return (
            "large + similar",
            "full",
            0.1,
            0,
            ("enough data to fine-tune every stage, starting from useful weights (backbone /10)"),
        )
    return (
        "large + dissimilar",
        "full",
        1.0,
        0,
        (
            "enough data to retrain every stage and little to keep from the source: "
            "fine-tune everything at the full rate"
        ),
    )


def alternatives(
    large: bool,
    similar: bool,
    stage_names: tuple[str, ...],
    epochs: int,
    chosen: dict[str, Any],
) -> list[Candidate]:
    """The rivals of the case's plan ``chosen``, each with why it is still open.

    Small data: the two axes are measured on few examples (a probe's cross-validated
    accuracy on 20 images moves by 5 points with one image), so each small case's
    rivals include the *other* small case's strategy; and each case's classic alternative
    from the articles (freeze everything when similar, start from scratch when not).
    Large data: one rival each, the articles' other plan for the case.
    """
    if not large:
        rivals = (_small_similar_rivals if similar else _small_dissimilar_rivals)(
            stage_names, epochs
        )
    else:
        rivals = (_large_similar_rivals if similar else _large_dissimilar_rivals)(stage_names)
    # a rival that is the chosen plan under another name is no rival
    seen = {plan_label(chosen)}
    unique = []
    for c in rivals:
        if c.label not in seen:
            seen.add(c.label)
            unique.append(c)
    return unique


def _halves(stage_names: tuple[str, ...]) -> tuple[int, str, str, bool]:
    """``partial:K``'s K (half the stages, rounded up), the early and the late stages'
    names, and whether ``partial:K`` is possible (it needs a stage left to train)."""
    n = len(stage_names)
    k = max(1, math.ceil(n / 2))
    return k, ", ".join(stage_names[:k]), ", ".join(stage_names[k:]), 1 <= k < n


def _small_similar_rivals(stage_names: tuple[str, ...], epochs: int) -> list[Candidate]:
    head = head_epochs_for(epochs)
    out = []
    if head:
        out.append(
            Candidate(
                {"strategy": "full", "backbone_lr_mult": 0.1, "head_epochs": head},
                f"linear probing, then fine-tuning (LP-FT, Kumar et al., ICLR 2022): the head "
                f"solved on the frozen features first ({head} of {epochs} epochs), so that a "
                "random head's first gradients cannot distort good features (it won on "
                "clip-art, 0.451 against 0.421, and lost on the digits)",
            )
        )
    out.append(
        Candidate(
            {"strategy": "linear", "backbone_lr_mult": 0.1, "head_epochs": 0},
            "the articles' plan for small + similar: keep the whole source frozen and "
            "train only the new head; with this few labels, fine-tuning may move the "
            "features for nothing",
        )
    )
    return out


def _small_dissimilar_rivals(stage_names: tuple[str, ...], epochs: int) -> list[Candidate]:
    return [
        Candidate(
            {"strategy": "full", "backbone_lr_mult": 0.1, "head_epochs": 0},
            "the plan for small + similar, should the similarity measure underrate the "
            "source: every stage at a tenth of the head's rate",
        ),
        Candidate(
            {"strategy": "scratch", "backbone_lr_mult": 1.0, "head_epochs": 0},
            "a source that explains little of the target may not help at all (negative "
            "transfer): the same network from random weights, the baseline it must beat",
        ),
    ]


def _large_similar_rivals(stage_names: tuple[str, ...]) -> list[Candidate]:
    k, early, _, partial_ok = _halves(stage_names)
    if not partial_ok:
        return []
    return [
        Candidate(
            {"strategy": f"partial:{k}", "backbone_lr_mult": 0.1, "head_epochs": 0},
            f"the early stages ({early}) are the most general (Yosinski et al., 'How "
            "transferable are features in deep neural networks?', NeurIPS 2014): a "
            "similar source's may be kept as they are, with fewer weights to move",
        )
    ]


def _large_dissimilar_rivals(stage_names: tuple[str, ...]) -> list[Candidate]:
    return [
        Candidate(
            {"strategy": "scratch", "backbone_lr_mult": 1.0, "head_epochs": 0},
            "the articles' plan for large + dissimilar: with this much data and little to "
            "keep, training from random weights may do as well (He, Girshick & Dollár, "
            "'Rethinking ImageNet Pre-training', ICCV 2019)",
        )
    ]
