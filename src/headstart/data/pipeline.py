"""Feeding images: decode and resize once where the transform allows it.

A deterministic transform (evaluation, or training with ``--augment none``) gives the
same tensor for an image every epoch, so :func:`preprocessed` runs it once per image:

- when the normalised float32 tensors fit in the budget, they are kept as they are;
- else, when the resized ``uint8`` images fit (4x smaller), those are kept and turned
  into normalised floats per item, with the same arithmetic as ``ToTensor`` and
  ``Normalize`` (so the values are bit-for-bit those of the per-epoch pipeline);
- else the images are decoded every epoch, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms as T

from headstart.data.transforms import ImageDataset

log = logging.getLogger(__name__)


# Memory the pre-processed images of one data set may take.
BUDGET_BYTES = 512 * 1024 * 1024


def split_transform(
    transform: Any,
) -> tuple[Callable[[Any], Any], T.Normalize | None] | None:
    """``(PIL steps, Normalize)`` of a ``Compose`` ending in ``ToTensor[, Normalize]``.

    None when the transform does not have that shape (then nothing is pre-resized).
    """
    steps = list(getattr(transform, "transforms", []))
    if not steps:
        return None
    idx = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if idx is None:
        return None
    rest = steps[idx + 1 :]
    if len(rest) > 1 or (rest and not isinstance(rest[0], T.Normalize)):
        return None
    normalize = rest[0] if rest else None
    return T.Compose(steps[:idx]), normalize


class PreResized(Dataset[tuple[torch.Tensor, int]]):
    """Resized ``uint8`` images ``[N, C, H, W]``; each item normalised on the way out."""

    def __init__(
        self, images: torch.Tensor, targets: torch.Tensor, normalize: T.Normalize | None
    ) -> None:
        self.images = images
        self.targets = targets
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # ToTensor's own arithmetic: to the default float dtype, then / 255
        x = self.images[i].to(dtype=torch.get_default_dtype()).div(255)
        if self.normalize is not None:
            x = self.normalize(x)
        return x, int(self.targets[i])


def preprocessed(dataset: ImageDataset, input_size: tuple[int, int, int]) -> Dataset[Any]:
    """``dataset`` with its (deterministic) transform applied once per image, if it fits."""
    n = len(dataset)
    c, h, w = input_size
    if n == 0:
        return dataset
    if n * c * h * w * 4 <= BUDGET_BYTES:
        xs, ys = zip(*(dataset[i] for i in range(n)), strict=True)
        return TensorDataset(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))
    split = split_transform(dataset.transform)
    if split is None or n * c * h * w > BUDGET_BYTES:
        log.debug("%d images do not fit the pre-processing budget: decoded every epoch", n)
        return dataset
    pil_steps, normalize = split
    images = torch.empty((n, c, h, w), dtype=torch.uint8)
    targets = torch.empty(n, dtype=torch.int64)
    plain = ImageDataset(dataset.data, pil_steps, dataset.channels, dataset.indices)
    for i in range(n):
        img, targets[i] = plain[i]
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        images[i] = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    return PreResized(images, targets, normalize)
