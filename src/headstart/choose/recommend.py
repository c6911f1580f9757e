"""``headstart recommend``: measure the target data against the source, then choose a plan.

The articles behind headstart give a rule of thumb with four cases: the target data is
*small* or *large*, and *similar* or *dissimilar* to what the source was trained on.
headstart decides each axis from measurements instead of a guess:

Size
    labelled examples per class (the smallest and the median class), the total, and the
    ratio of examples to the parameters ``full`` fine-tuning would train.

Similarity (three measures, each cheap: one forward pass over the target data)
    * **probe gain**: cross-validated accuracy of a logistic-regression probe on the
      source's frozen features, minus the same probe on the features of a randomly
      initialised copy of the same network.  Random convolutional features are a strong
      baseline on small images, so only the *gain* says what the pretraining learnt that
      is useful here (the linear-evaluation protocol of Kornblith, Shlens & Le, "Do Better
      ImageNet Models Transfer Better?", CVPR 2019, against a random-weights control).
    * **LEEP** (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of
      Learned Representations", ICML 2020), when the source still has its classifier
      head: how well the source's own predicted labels explain the target labels.
    * **BatchNorm statistics shift**: each BatchNorm layer stores the mean and variance
      of its inputs over the *source* data; the same statistics over the target data,
      compared channel by channel as a symmetric KL divergence between Gaussians and
      averaged over layers, say how far the target's feature distribution has moved
      (BatchNorm statistics as a description of a domain: Li et al., "Revisiting Batch
      Normalization For Practical Domain Adaptation" (AdaBN), ICLR workshop 2017).

The decision uses the size (the ``LARGE_*`` thresholds below), and for similarity LEEP
(normalised to [0, 1] by the target labels' entropy) where the source has its
classifier, the probe gain otherwise: on the digits, a source trained on 0-4 gains about
as much probe accuracy over random features on 5-9 as on 0-4 (random convolutional
features of small images are strong), while its LEEP separates the two cleanly (0.90
against 0.07 of the way from chance). The BatchNorm shift is reported alongside, as
evidence of an input-domain change.

The measurements name a case, and the case a plan, but they leave other plans open: each
case's plan has a near rival (the neighbouring case's plan, or the articles' classic plan
where headstart's differs). :meth:`Recommendation.candidates` lists them, the recommended
plan first, each with the reason it is still open; :mod:`headstart.choose.race` trains
them on folds where the data are small enough to afford it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.choose.plans import (
    Candidate,
    alternatives,
    head_epochs_for,
    plan_for,
    plan_label,
)
from headstart.choose.scores import leep, linear_probe_accuracy
from headstart.config.fields import Augment
from headstart.config.options import FitOptions, RecommendOptions
from headstart.config.strategies import resolve_augment
from headstart.data.labelled import LabeledData
from headstart.features.extract import feature_loader, in_item_order
from headstart.sources import Source, build_source
from headstart.train.assemble import build_options, load_training_data
from headstart.train.budget import size_budget

__all__ = [
    "LARGE_EXAMPLES_PER_PARAM",
    "LARGE_MIN_PER_CLASS",
    "LARGE_PER_CLASS",
    "SIMILAR_LEEP",
    "SIMILAR_PROBE_GAIN",
    "Candidate",
    "Measurements",
    "Recommendation",
    "bn_shift",
    "decide",
    "head_epochs_for",
    "measure",
    "open_plans",
    "plan_label",
    "recommend",
    "recommend_for",
]

log = logging.getLogger(__name__)


# "Large" data is enough to move every layer of the network without memorising the
# training set. Two ways to have it: many examples per class (the articles' convention for
# ImageNet-sized networks), or many examples for the size of *this* network, counted per
# trainable parameter, which is what over-fitting depends on. The second threshold comes
# from the digits (digits-cnn, 102k parameters, pre-trained on 0-4, target 5-9, README):
# at 3 labels per class (1.5e-4 examples per parameter) fine-tuning the source beat
# training from scratch by 15 points; by 13 per class (6.4e-4) scratch had caught up, so
# from about 1e-3 the data alone can train every layer. Below LARGE_MIN_PER_CLASS
# examples in some class the data is small whatever the network.
LARGE_PER_CLASS = 200


LARGE_EXAMPLES_PER_PARAM = 1e-3


LARGE_MIN_PER_CLASS = 10


# Pretrained features that beat random features of the same network by this much probe
# accuracy carry something the target needs: the source counts as "similar".
SIMILAR_PROBE_GAIN = 0.05


# Where the source still has its classifier, LEEP decides instead: a source whose own
# predictions explain at least this share of the target labels' entropy is "similar".
# Both thresholds are first settings, to be calibrated on bench/ cases.
SIMILAR_LEEP = 0.5


@dataclass
class Measurements:
    n_items: int
    n_classes: int
    min_per_class: int
    median_per_class: float
    trainable_params_full: int
    examples_per_param: float
    probe_pretrained: float
    probe_random: float
    probe_gain: float
    leep: float | None = None
    leep_normalised: float | None = None  # 0: source labels say nothing of y; 1: all
    bn_shift: float | None = None
    bn_shift_random: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Recommendation:
    case: str  # e.g. "small + similar"
    strategy: str  # e.g. "full", "partial:2"
    lr: float | None  # None: found by the range test when the fit runs
    backbone_lr_mult: float
    reasons: list[str]
    measurements: Measurements
    head_epochs: int = 0
    # the training augmentation --augment auto gives the strategy (none for linear)
    augment: str = "light"
    # the other plans the measurements leave open, best first (see candidates())
    alternatives: list[Candidate] = field(default_factory=list)

    def options(self) -> dict[str, Any]:
        """The fit options this recommendation sets (``dataclasses.replace`` them in)."""
        return {
            "strategy": self.strategy,
            "backbone_lr_mult": self.backbone_lr_mult,
            "head_epochs": self.head_epochs,
        }

    def label(self) -> str:
        """A short name for what was chosen, e.g. ``full (head 2, x0.1)``."""
        parts = [f"head {self.head_epochs}"] if self.head_epochs else []
        parts.append(f"x{self.backbone_lr_mult:g}")
        return f"{self.strategy} ({', '.join(parts)})"

    def candidates(self) -> list[Candidate]:
        """The plans the measurements leave open, the recommended one first: what
        :func:`headstart.choose.race.race` trains on folds (one plan: nothing to race)."""
        chosen = Candidate(self.options(), f"recommended for {self.case}: {self.reasons[-1]}")
        return [chosen, *self.alternatives]

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("measurements", "alternatives")},
            "measurements": asdict(self.measurements),
            "alternatives": [c.to_dict() for c in self.alternatives],
        }

    def describe(self) -> str:
        m = self.measurements
        lines = [
            f"case: {self.case}  ->  --strategy {self.strategy} "
            f"--lr {'auto' if self.lr is None else format(self.lr, 'g')} "
            f"--backbone-lr-mult {self.backbone_lr_mult:g}"
            + (f" --head-epochs {self.head_epochs}" if self.head_epochs else "")
            + f" (augmentation: {self.augment})",
            f"  size: {m.n_items} labelled examples, {m.n_classes} classes, "
            f"{m.min_per_class}-{m.median_per_class:g} per class (min-median), "
            f"{m.examples_per_param:.2g} examples per trainable parameter",
            f"  probe accuracy: {m.probe_pretrained:.3f} on the source's features, "
            f"{m.probe_random:.3f} on random features of the same network "
            f"(gain {m.probe_gain:+.3f})",
        ]
        if m.leep is not None and m.leep_normalised is not None:
            lines.append(
                f"  LEEP of the source's own classifier: {m.leep:.3f} "
                f"({m.leep_normalised:.0%} of the way from chance to perfect)"
            )
        if m.bn_shift is not None:
            extra = (
                f" (random network: {m.bn_shift_random:.3f})"
                if m.bn_shift_random is not None
                else ""
            )
            lines.append(f"  BatchNorm statistics shift: {m.bn_shift:.3f}{extra}")
        lines += [f"  why: {r}" for r in self.reasons]
        if self.alternatives:
            lines.append(f"  also open: {'; '.join(c.label for c in self.alternatives)}")
        lines += [f"  note: {n}" for n in m.notes]
        return "\n".join(lines)


def bn_shift(backbone: nn.Module, batches: list[torch.Tensor]) -> tuple[np.ndarray, float | None]:
    """Features of ``batches`` and, from the same forward pass, the mean symmetric KL
    divergence between each BatchNorm layer's stored (source) statistics and the same
    statistics over the target inputs (None without BatchNorm layers).
    """
    layers = [
        m
        for m in backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]
    sums: dict[int, list[torch.Tensor]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.ndim) if d != 1]
        count = x.numel() / x.shape[1]
        acc = sums.setdefault(
            id(module),
            [torch.zeros(x.shape[1], dtype=torch.float64)] * 2
            + [torch.zeros((), dtype=torch.float64)],
        )
        acc[0] = acc[0] + x.sum(dim=dims)
        acc[1] = acc[1] + (x * x).sum(dim=dims)
        acc[2] = acc[2] + count

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        backbone.eval()
        with torch.no_grad():
            feats = torch.cat([backbone(x) for x in batches]).float().numpy()
    finally:
        for h in handles:
            h.remove()
    if not layers:
        return feats, None
    divergences = []
    for m in layers:
        s, sq, n = sums[id(m)]
        mean_t = s / n
        var_t = (sq / n - mean_t**2).clamp_min(0) + m.eps
        mean_s = m.running_mean.double()  # type: ignore[union-attr]
        var_s = m.running_var.double() + m.eps  # type: ignore[union-attr]
        diff2 = (mean_t - mean_s) ** 2
        # symmetric KL of two 1-d Gaussians, per channel
        kl = 0.5 * ((var_t / var_s + var_s / var_t) + diff2 * (1 / var_s + 1 / var_t)) - 1
        divergences.append(float(kl.mean()))
    return feats, float(np.mean(divergences))


def _input_batches(
    source: Source, data: LabeledData, *, max_length: int, batch_size: int = 128
) -> tuple[list[torch.Tensor], np.ndarray | None]:
    """The backbone's inputs for ``data`` in batches, and the item index of each row
    (texts are batched by length; images stay in order: None)."""
    loader, order = feature_loader(source, data, max_length=max_length, batch_size=batch_size)
    return [x for x, _ in loader], order


def measure(
    source: Source,
    random_source: Source,
    data: LabeledData,
    *,
    seed: int = 0,
    max_length: int = 128,
) -> Measurements:
    """Size and similarity measurements of ``data`` for ``source`` (see module docs).

    Texts (an ``hf:`` encoder) are measured the same way, up to ``max_length`` tokens:
    the probe gain over a randomly initialised copy of the encoder; no LEEP (no
    classifier head) and no BatchNorm shift (transformers normalise per token).
    """
    t0 = time.perf_counter()
    counts = np.bincount(data.targets, minlength=len(data.classes))
    batches, order = _input_batches(source, data, max_length=max_length)
    feats, shift = bn_shift(source.backbone, batches)
    random_feats, shift_random = bn_shift(random_source.backbone, batches)
    feats, random_feats = in_item_order(feats, order), in_item_order(random_feats, order)
    probe = linear_probe_accuracy(feats, data.targets, seed=seed)
    probe_random = linear_probe_accuracy(random_feats, data.targets, seed=seed)
    trainable = sum(p.numel() for p in source.backbone.parameters()) + (
        source.feature_dim + 1
    ) * len(data.classes)
    notes: list[str] = []
    leep_value: float | None = None
    leep_norm: float | None = None
    if source.old_head is not None and source.weights.pretrained:
        source.old_head.eval()
        with torch.no_grad():
            logits = source.old_head(torch.from_numpy(feats))
        probs = torch.softmax(logits.double(), dim=1).numpy()
        leep_value = float(leep(probs, data.targets))
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log(p)).sum())
        # LEEP is at least -H(Y) (source predictions independent of the target labels)
        # and at most 0: rescale to [0, 1] so one threshold serves any number of classes.
        leep_norm = (leep_value + entropy) / entropy if entropy > 0 else None
    else:
        notes.append("LEEP skipped: the source has no pretrained classifier head")
    if shift is None:
        notes.append("BatchNorm shift skipped: the network has no BatchNorm layers")
    return Measurements(
        n_items=len(data),
        n_classes=len(data.classes),
        min_per_class=int(counts.min()),
        median_per_class=float(np.median(counts)),
        trainable_params_full=int(trainable),
        examples_per_param=len(data) / trainable,
        probe_pretrained=probe,
        probe_random=probe_random,
        probe_gain=probe - probe_random,
        leep=leep_value,
        leep_normalised=leep_norm,
        bn_shift=shift,
        bn_shift_random=shift_random,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )


def decide(
    m: Measurements, stage_names: tuple[str, ...], *, lr: float | None = None, epochs: int = 10
) -> Recommendation:
    """The articles' four cases, decided from measurements, each turned into a plan.

    The cases and plans are the articles', but for small + similar: the backbone moves
    slowly (a tenth of the head's rate) instead of staying frozen; freezing and linear
    probing first (LP-FT) are its rivals in the race.
    """
    large, size_reason = _size(m)
    similar, sim_reason = _similarity(m)
    case, strategy, mult, head, why = plan_for(large, similar, stage_names, epochs)
    chosen = {"strategy": strategy, "backbone_lr_mult": mult, "head_epochs": head}
    return Recommendation(
        case=case,
        strategy=strategy,
        lr=lr,
        backbone_lr_mult=mult,
        head_epochs=head,
        reasons=[size_reason, sim_reason, why],
        measurements=m,
        augment=resolve_augment(Augment.AUTO, strategy),
        alternatives=alternatives(large, similar, stage_names, epochs, chosen),
    )


def open_plans(
    m: Measurements, stage_names: tuple[str, ...], *, epochs: int = 10
) -> list[Candidate]:
    """The plans ``m`` leaves open for a backbone with ``stage_names``, the recommended
    one first (``decide(...).candidates()``)."""
    return decide(m, stage_names, epochs=epochs).candidates()


def _size(m: Measurements) -> tuple[bool, str]:
    """Whether the data are large (per class, or per trainable parameter), and why."""
    by_class = m.min_per_class >= LARGE_PER_CLASS
    by_params = (
        m.examples_per_param >= LARGE_EXAMPLES_PER_PARAM and m.min_per_class >= LARGE_MIN_PER_CLASS
    )
    if by_class:
        return True, (
            f"large: the smallest class has {m.min_per_class} labelled examples (at least "
            f"{LARGE_PER_CLASS})"
        )
    if by_params:
        return True, (
            f"large for this network: {m.examples_per_param:.2g} labelled examples per "
            f"trainable parameter (at least {LARGE_EXAMPLES_PER_PARAM:g}), and "
            f"{m.min_per_class} or more in every class"
        )
    return False, (
        f"small: the smallest class has {m.min_per_class} labelled examples (fewer than "
        f"{LARGE_PER_CLASS}) and there are {m.examples_per_param:.2g} per trainable "
        f"parameter (fewer than {LARGE_EXAMPLES_PER_PARAM:g}, or a class under "
        f"{LARGE_MIN_PER_CLASS})"
    )


def _similarity(m: Measurements) -> tuple[bool, str]:
    """Whether the target is similar to the source (by LEEP where the source has a
    pretrained head, else by the probe gain over random features), and why."""
    if m.leep_normalised is not None:
        similar = m.leep_normalised >= SIMILAR_LEEP
        return similar, (
            f"{'similar' if similar else 'dissimilar'}: the source's own classifier "
            f"{'explains' if similar else 'explains little of'} the target labels (LEEP "
            f"{m.leep:.3f}, {m.leep_normalised:.0%} of the way from chance to perfect; "
            f"similar from {SIMILAR_LEEP:.0%})"
        )
    similar = m.probe_gain >= SIMILAR_PROBE_GAIN
    return similar, (
        f"{'similar' if similar else 'dissimilar'}: the source's frozen features "
        f"{'beat' if similar else 'do not beat'} random features of the same network by "
        f"{SIMILAR_PROBE_GAIN:.0%} or more probe accuracy (gain {m.probe_gain:+.3f})"
    )


def recommend(options: RecommendOptions | FitOptions) -> Recommendation:
    """Load ``options.data`` (images or texts) and ``options.source``, measure, decide."""
    fit = options.fit_options()
    return recommend_for(fit, load_training_data(fit))


def recommend_for(options: FitOptions, data: LabeledData) -> Recommendation:
    """Measure ``data`` against ``options.source`` and decide the plan."""
    build = build_options(options)
    source = build_source(options.source, weights=options.weights, options=build)
    torch.manual_seed(options.seed)
    random_source = build_source(
        source.arch,
        weights="none",
        options=replace(build, image_size=source.arch_options.get("image_size")),
    )
    random_source.preprocessing = source.preprocessing
    # texts: --max-length, at most what the model takes; images: measure's default
    max_length = source.inputs.limited(options.max_length, source.spec).length
    m = measure(source, random_source, data, seed=options.seed, max_length=max_length or 128)
    # the epochs the fit will run: as given, or as its budget will size them for this data
    epochs = options.epochs or size_budget(len(data), 0, batch_size=options.batch_size).epochs
    rec = decide(m, source.stage_names, lr=options.lr, epochs=epochs)
    log.info("%s", rec.describe())
    return rec
