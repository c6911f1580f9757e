"""How images become tensors: the :class:`Preprocessing` a source's weights expect, the
transforms made from it (with light augmentation for training), and the dataset that
applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from headstart.config.fields import Augment
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError, DataError, SourceError


@dataclass(frozen=True)
class Preprocessing:
    """How inputs must be prepared for a source: what its weights were trained with.

    ``input_size`` is ``(channels, height, width)``; images are converted to RGB (3
    channels) or grayscale (1 channel) to match.  Evaluation resizes the short side to
    ``size / crop_pct`` and centre-crops ``size`` (the timm / torchvision convention).
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise SourceError(
                f"preprocessing has {channels} channels but mean/std of length "
                f"{len(self.mean)}/{len(self.std)}"
            )

    @property
    def channels(self) -> int:
        return self.input_size[0]

    def with_image_size(self, size: int | None) -> Preprocessing:
        """The same preprocessing at another square input size (``None``: unchanged)."""
        if size is None:
            return self
        return Preprocessing(
            input_size=(self.channels, size, size),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(float(m) for m in d["mean"]),
            std=tuple(float(s) for s in d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )


_INTERPOLATION = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "box": T.InterpolationMode.BOX,
    "hamming": T.InterpolationMode.HAMMING,
    "lanczos": T.InterpolationMode.LANCZOS,
}


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_model_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to what the model takes: ``RGB`` (3 channels) or ``L`` (1).

    Transparency is composed over white; 16-bit images are scaled to 8 bits (a 32-bit
    ``I`` image is taken as 8-bit when no value exceeds 255, 16-bit when none exceeds
    65535, else scaled by its maximum); a float ``F`` image is taken as 0..1 when no value
    exceeds 1, else like ``I``; palette, CMYK and the other modes go through PIL's own
    conversion.  Raises :class:`DataError` for a mode PIL cannot convert.
    """
    if channels not in (1, 3):
        raise ConfigError(f"images can be given to a model as 1 or 3 channels, not {channels}")
    want = "RGB" if channels == 3 else "L"
    if img.mode in (*_SIXTEEN_BIT, "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        high = float(arr.max(initial=0))
        if img.mode in _SIXTEEN_BIT:
            top = 65535.0
        elif img.mode == "F" and high <= 1.0:
            top = 1.0
        else:
            top = 255.0 if high <= 255 else 65535.0 if high <= 65535 else high
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if img.mode == want:
        return img
    try:
        return img.convert(want)
    except ValueError as exc:
        raise DataError(f"cannot convert a {img.mode} image to {want} ({exc})") from exc


def make_transform(
    pre: Preprocessing, *, train: bool, augment: str = "light", allow_hflip: bool = True
) -> Callable[[Image.Image], torch.Tensor]:
    """The source's preprocessing as a PIL -> tensor transform.

    Evaluation (and ``augment="none"``): resize to ``size / crop_pct`` (short side, for a
    square input), centre-crop ``size``, normalise.  Training with ``augment="light"``:
    a mild random resized crop, a horizontal flip when ``allow_hflip``, normalise.
    Give it images already passed through :func:`to_model_mode`.
    """
    if augment not in (Augment.LIGHT, Augment.NONE):  # auto is resolved for the strategy
        raise ConfigError(f"--augment {augment!r}; valid: {Augment.LIGHT}, {Augment.NONE}")
    if pre.interpolation not in _INTERPOLATION:
        raise ConfigError(
            f"interpolation {pre.interpolation!r}; valid: {', '.join(_INTERPOLATION)}"
        )
    interpolation = _INTERPOLATION[pre.interpolation]
    _, height, width = pre.input_size
    size = (height, width)
    normalize = [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    if train and augment == "light":
        steps: list[Any] = [
            T.RandomResizedCrop(
                size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=interpolation
            )
        ]
        if allow_hflip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose(steps + normalize)
    # timm's convention: a square input resizes the short side, keeping the aspect ratio.
    resize: int | tuple[int, int] = (
        math.floor(height / pre.crop_pct)
        if height == width
        else (math.floor(height / pre.crop_pct), math.floor(width / pre.crop_pct))
    )
    return T.Compose(
        [T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *normalize]
    )


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """``(tensor, target)`` pairs: each image decoded, converted and transformed.

    Holds only plain data (paths or arrays, a transform), so it pickles into
    DataLoader worker processes.
    """

    def __init__(
        self,
        data: LabeledData,
        transform: Callable[[Image.Image], torch.Tensor],
        channels: int,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.data = data
        self.transform = transform
        self.channels = channels
        self.indices = (
            list(range(len(data)))
            if indices is None
            else [int(i) for i in np.asarray(indices).reshape(-1)]
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        img = self.data.load_image(j)
        try:
            img = to_model_mode(img, self.channels)
        except DataError as exc:
            raise DataError(f"{self.data.name_of(j)}: {exc}") from exc
        return self.transform(img), int(self.data.targets[j])
