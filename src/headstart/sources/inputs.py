"""A source's inputs: images or texts, and everything that depends on which.

Every :class:`~headstart.sources.base.Source` (and every run loaded back) carries one
:class:`Inputs`: :class:`ImageInputs` (the preprocessing its weights expect: transforms,
:class:`~headstart.data.transforms.ImageDataset`, the decode-once pipeline) or
:class:`TextInputs` (its tokenizer and truncation length: the length-grouped loaders of
:mod:`headstart.data.texts`).  It checks data against the source (:meth:`Inputs.check`,
the one error for data of the other kind), builds the training and evaluation loaders,
reads labelled data and the inputs ``predict`` labels, and says what of the speed-ups
(feature cache, several processes, augmentation) applies.  The layers above call these and
do not ask which kind they have.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from headstart.data.images import load_data
from headstart.data.labelled import UNLABELLED, LabeledData, list_inputs
from headstart.data.pipeline import preprocessed
from headstart.data.sampling import EpochBatchSampler, SeededDataset
from headstart.data.scan import scan_images
from headstart.data.texts import (
    DEFAULT_MAX_LENGTH,
    TextData,
    load_labelled,
    loader_order,
    read_texts,
    text_loader,
)
from headstart.data.transforms import ImageDataset, Preprocessing, make_transform
from headstart.errors import ConfigError, DataError

__all__ = [
    "KINDS",
    "ImageInputs",
    "Inputs",
    "TextInputs",
    "ToLabel",
    "check_candidate",
]

log = logging.getLogger(__name__)


@dataclass
class ToLabel:
    """The inputs ``predict`` labels: ``data`` (targets all unlabelled), the name of each
    item (its row's ``path``), what else each row shows (a text: the text itself), and
    for images every input in order with the unreadable ones and why (``skip_bad``)."""

    data: LabeledData
    names: list[str]
    shown: list[dict[str, Any]]
    every: list[Path] = field(default_factory=list)
    unreadable: dict[Path, str] = field(default_factory=dict)


class Inputs(Protocol):
    """What a source takes (images or texts) and how data becomes its batches."""

    kind: ClassVar[str]  # the LabeledData.kind it takes: "images" | "texts"
    noun: ClassVar[str]  # "an image model" | "a text model"
    # why the feature cache (train.cached_head) cannot serve it, or None when it can
    why_no_feature_cache: ClassVar[str | None]
    # why it trains in one process only, or None when --processes N can
    why_one_process: ClassVar[str | None]
    # why --augment is not applied to it, or None when it is
    why_not_augmented: ClassVar[str | None]
    # whether the GPU speed-ups (train.accel: autocast, channels_last, compile) wrap it
    speedups: ClassVar[bool]

    @property
    def length(self) -> int | None:
        """Texts: the most tokens of a text the loaders keep, once chosen; images: None."""
        ...

    def check(self, data: LabeledData, *, where: str, model: str) -> None:
        """Raise :class:`DataError` when ``data`` is not of this kind: ``where`` names the
        data, ``model`` the source or run, and the message what to give instead."""
        ...

    def limited(self, requested: int | None, model: str) -> Inputs:
        """These inputs cut at ``--max-length`` ``requested`` (texts; None: the default),
        at most what the model takes; images: unchanged."""
        ...

    def with_length(self, length: int | None) -> Inputs:
        """These inputs cut at exactly ``length`` tokens (texts; None: the default)."""
        ...

    def train_loader(
        self,
        data: LabeledData,
        *,
        augment: str,
        batch_size: int,
        workers: int,
        generator: torch.Generator | None,
        seed: int,
        world: int = 1,
        rank: int = 0,
    ) -> DataLoader[Any]:
        """The training loader: its order a function of ``(seed, epoch)``, resumable."""
        ...

    def eval_loader(
        self, data: LabeledData, *, batch_size: int, workers: int = 0, decode_once: bool = True
    ) -> tuple[DataLoader[Any], np.ndarray | None]:
        """An evaluation loader of ``data`` and the item index of each row it yields
        (None: in item order); rows go back to item order with
        :func:`headstart.features.extract.in_item_order`."""
        ...

    def load(
        self,
        spec: str,
        *,
        classes: Sequence[str] | None,
        text_col: str | None = None,
        label_col: str | None = None,
    ) -> LabeledData:
        """Labelled data of this kind from ``spec``, numbered by ``classes``."""
        ...

    def to_label(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        texts: Sequence[str],
        *,
        classes: list[str],
        text_col: str | None,
        skip_bad: bool,
        model: str,
    ) -> ToLabel:
        """What ``predict`` labels, read from files (and ``texts``, for a text model)."""
        ...

    def predict_args(self, given: Sequence[str | Path]) -> tuple[list[str | Path], list[str]]:
        """``(inputs, texts)`` for ``predict`` from what a caller gives: files of images,
        or the texts themselves."""
        ...

    def run_meta(self, *, text_col: str | None, label_col: str | None) -> dict[str, Any]:
        """What ``headstart.json`` records of these inputs (texts: ``{"text": ...}``)."""
        ...


def _check(inputs: Inputs, hint: str, data: LabeledData, where: str, model: str) -> None:
    if data.kind != inputs.kind:
        raise DataError(f"{where}: {data.kind}, but {model} is {inputs.noun}; {hint}")


@dataclass
class ImageInputs:
    """Images, prepared as ``preprocessing`` says (what the source's weights expect)."""

    preprocessing: Preprocessing
    kind: ClassVar[str] = "images"
    noun: ClassVar[str] = "an image model"
    why_no_feature_cache: ClassVar[str | None] = None
    why_one_process: ClassVar[str | None] = None
    why_not_augmented: ClassVar[str | None] = None
    speedups: ClassVar[bool] = True

    @property
    def length(self) -> None:
        return None

    def check(self, data: LabeledData, *, where: str, model: str) -> None:
        hint = "use a text source, e.g. --source hf:FOLDER of a transformers text encoder"
        _check(self, hint, data, where, model)

    def limited(self, requested: int | None, model: str) -> ImageInputs:
        return self

    def with_length(self, length: int | None) -> ImageInputs:
        return self

    def _dataset(self, data: LabeledData, *, train: bool, augment: str) -> Dataset[Any]:
        pre = self.preprocessing
        transform = make_transform(pre, train=train, augment=augment, allow_hflip=data.allow_hflip)
        return ImageDataset(data, transform, pre.channels)

    def train_loader(
        self,
        data: LabeledData,
        *,
        augment: str,
        batch_size: int,
        workers: int,
        generator: torch.Generator | None,
        seed: int,
        world: int = 1,
        rank: int = 0,
    ) -> DataLoader[Any]:
        dataset = self._dataset(data, train=True, augment=augment)
        if augment == "none":  # the same tensor every epoch: prepare it once
            dataset = self._decoded_once(dataset)
        # BatchNorm cannot train on a batch of one example: drop a last (global) batch that
        # would leave a process with fewer than two.
        rest = len(data) % batch_size
        drop_last = len(data) > batch_size and 0 < rest < 2 * world
        # Order and augmentation are a function of (seed, epoch, position): the same with any
        # number of workers or processes, and replayable mid-epoch (headstart.data.sampling).
        sampler = EpochBatchSampler(
            len(data), batch_size, seed=seed, drop_last=drop_last, rank=rank, world=world
        )
        return DataLoader(
            SeededDataset(dataset),
            batch_sampler=sampler,
            num_workers=workers,
            generator=generator,
            persistent_workers=workers > 0,
        )

    def eval_loader(
        self, data: LabeledData, *, batch_size: int, workers: int = 0, decode_once: bool = True
    ) -> tuple[DataLoader[Any], np.ndarray | None]:
        if not decode_once:  # features are extracted in one pass: nothing to keep
            dataset = ImageDataset(
                data, make_transform(self.preprocessing, train=False), self.preprocessing.channels
            )
            return DataLoader(
                dataset, batch_size=batch_size, shuffle=False, num_workers=workers
            ), None
        loader = DataLoader(
            self._decoded_once(self._dataset(data, train=False, augment="none")),
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            # Its own generator: a loader without one draws its workers' base seed from
            # torch's global generator, which would move dropout's stream with --workers.
            generator=torch.Generator(),
        )
        return loader, None

    def _decoded_once(self, dataset: Dataset[Any]) -> Dataset[Any]:
        assert isinstance(dataset, ImageDataset)
        return preprocessed(dataset, self.preprocessing.input_size)

    def load(
        self,
        spec: str,
        *,
        classes: Sequence[str] | None,
        text_col: str | None = None,
        label_col: str | None = None,
    ) -> LabeledData:
        return load_data(spec, classes=classes)

    def to_label(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        texts: Sequence[str],
        *,
        classes: list[str],
        text_col: str | None,
        skip_bad: bool,
        model: str,
    ) -> ToLabel:
        """Image files (folders searched), all checked first: unreadable ones are one
        :class:`DataError` listing them, or with ``skip_bad`` left out and kept in
        ``unreadable``.  ``texts`` given to an image model is a :class:`ConfigError`."""
        if texts:
            raise ConfigError(f"--text: {model} is an image model; pass image files")
        paths = list_inputs(inputs)
        unreadable = {Path(c.path): str(c.problem) for c in scan_images(paths) if not c.ok}
        if unreadable and not skip_bad:
            listed = [f"{p} ({why})" for p, why in unreadable.items()]
            raise DataError(
                f"{len(unreadable)} unreadable image(s): {', '.join(listed[:10])}"
                + (f" and {len(listed) - 10} more" if len(listed) > 10 else "")
                + "; fix or remove them, or pass --skip-bad to label the others"
            )
        every = paths
        paths = [p for p in paths if p not in unreadable]
        if not paths:
            raise DataError("none of the inputs is a readable image")
        data = LabeledData(
            spec="predict",
            classes=classes,
            items=list(paths),
            targets=np.full(len(paths), UNLABELLED, dtype=np.int64),
        )
        names = [str(p) for p in paths]
        return ToLabel(data, names, [{} for _ in paths], every=every, unreadable=unreadable)

    def predict_args(self, given: Sequence[str | Path]) -> tuple[list[str | Path], list[str]]:
        return list(given), []

    def run_meta(self, *, text_col: str | None, label_col: str | None) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class TextInputs:
    """How texts become a text source's input: its tokenizer and its pooling.

    A text backbone takes one ``[N, 2, L]`` int64 tensor per batch: token ids in
    ``[:, 0]`` and the attention mask in ``[:, 1]`` (:mod:`headstart.data.texts` builds
    it), so the training loop moves and feeds it like an image batch.  Texts are cut at
    ``length`` tokens (None: ``min(128, max_length)``).
    """

    tokenizer: Any = field(compare=False, repr=False)
    pooling: str = "mean"  # mean | cls | max over the last hidden states
    max_length: int = 512  # the most tokens the model takes (position embeddings)
    folder: str | None = None  # where the tokenizer and config came from
    length: int | None = None  # the truncation length in use; None: the default
    kind: ClassVar[str] = "texts"
    noun: ClassVar[str] = "a text model"
    why_no_feature_cache: ClassVar[str | None] = "a text model (the cache is for image backbones)"
    why_one_process: ClassVar[str | None] = (
        "--processes > 1 is for image sources; train text models in one"
    )
    why_not_augmented: ClassVar[str | None] = "texts are not augmented"
    # the speed-ups are tuned for image batches; token ids train as they are
    speedups: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "model_max_length": self.max_length}

    @property
    def truncation(self) -> int:
        """The most tokens of a text the loaders keep."""
        if self.length is None:
            return min(DEFAULT_MAX_LENGTH, self.max_length)
        return self.length

    def check(self, data: LabeledData, *, where: str, model: str) -> None:
        hint = (
            "give a CSV, TSV or JSONL with text and label columns, or a folder of .txt "
            "files per class"
        )
        _check(self, hint, data, where, model)

    def limited(self, requested: int | None, model: str) -> TextInputs:
        if requested is None:
            return replace(self, length=min(DEFAULT_MAX_LENGTH, self.max_length))
        if requested > self.max_length:
            log.warning(
                "--max-length %d: %s takes at most %d tokens; using %d",
                requested,
                model,
                self.max_length,
                self.max_length,
            )
        return replace(self, length=min(requested, self.max_length))

    def with_length(self, length: int | None) -> TextInputs:
        return replace(self, length=length)

    def _texts(self, data: LabeledData) -> list[str]:
        assert isinstance(data, TextData)  # check() said so
        return data.texts()

    def train_loader(
        self,
        data: LabeledData,
        *,
        augment: str,
        batch_size: int,
        workers: int,
        generator: torch.Generator | None,
        seed: int,
        world: int = 1,
        rank: int = 0,
    ) -> DataLoader[Any]:
        return text_loader(
            self._texts(data),
            data.targets,
            self.tokenizer,
            max_length=self.truncation,
            batch_size=batch_size,
            train=True,
            generator=generator,
            workers=workers,
            seed=seed,
        )

    def eval_loader(
        self, data: LabeledData, *, batch_size: int, workers: int = 0, decode_once: bool = True
    ) -> tuple[DataLoader[Any], np.ndarray | None]:
        loader = text_loader(
            self._texts(data),
            data.targets,
            self.tokenizer,
            max_length=self.truncation,
            batch_size=batch_size,
            train=False,
            workers=workers,
        )
        return loader, loader_order(loader)  # longest first: rows out of item order

    def load(
        self,
        spec: str,
        *,
        classes: Sequence[str] | None,
        text_col: str | None = None,
        label_col: str | None = None,
    ) -> LabeledData:
        return load_labelled(spec, classes=classes, text_col=text_col, label_col=label_col)

    def to_label(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        texts: Sequence[str],
        *,
        classes: list[str],
        text_col: str | None,
        skip_bad: bool,
        model: str,
    ) -> ToLabel:
        """``texts`` and the texts of the files in ``inputs`` (:func:`read_texts`); none
        at all, or an empty one, is a :class:`DataError`."""
        pairs = read_texts(inputs, text_col=text_col)
        pairs += [(f"--text {i}", t) for i, t in enumerate(texts, start=1)]
        if not pairs:
            raise DataError("no texts given; pass --text TEXT or files of texts")
        empty = [w for w, t in pairs if not t.strip()]
        if empty:
            raise DataError(f"empty text: {', '.join(empty[:10])}")
        names = [w for w, _ in pairs]
        data = TextData(
            spec="predict",
            classes=classes,
            items=[t for _, t in pairs],
            targets=np.full(len(pairs), UNLABELLED, dtype=np.int64),
            rows=names,
        )
        return ToLabel(data, names, [{"text": t} for _, t in pairs])

    def predict_args(self, given: Sequence[str | Path]) -> tuple[list[str | Path], list[str]]:
        return [], [str(t) for t in given]  # a text model labels the strings themselves

    def run_meta(self, *, text_col: str | None, label_col: str | None) -> dict[str, Any]:
        return {
            "text": {
                **self.to_dict(),
                "max_length": self.length,
                "text_col": text_col,
                "label_col": label_col,
            }
        }


# what a source of each kind is called in rank's messages, and what to rank it on
_CANDIDATE = {
    "images": ("an image source", "rank text encoders (hf:FOLDER) on texts"),
    "texts": (
        "a text encoder",
        "rank text encoders on texts (a CSV, TSV or JSONL with text and label columns, or "
        "a folder of .txt files per class)",
    ),
}

KINDS = tuple(_CANDIDATE)


def check_candidate(kind: str, data: LabeledData, candidate: str) -> None:
    """Raise :class:`ConfigError` when rank's ``candidate``, a source taking ``kind``
    ("images" or "texts"), is to be scored on data of the other kind."""
    if data.kind == kind:
        return
    noun, hint = _CANDIDATE[kind]
    raise ConfigError(
        f"--sources candidate {candidate!r} is {noun}, but {data.spec} holds {data.kind}; "
        f"{hint}, and every candidate of one call on the same kind of data"
    )
