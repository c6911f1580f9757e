"""The data pipeline: images prepared once give exactly the per-epoch tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from headstart.data import pipeline
from headstart.data.images import load_data
from headstart.data.transforms import ImageDataset, Preprocessing, make_transform

PRE = Preprocessing(input_size=(3, 24, 20), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _dataset(folder: Path, pre: Preprocessing = PRE) -> ImageDataset:
    data = load_data(str(folder))
    return ImageDataset(data, make_transform(pre, train=False), pre.channels)


def test_float_tier_when_it_fits(digits_folder: Path) -> None:
    ds = _dataset(digits_folder)
    got = pipeline.preprocessed(ds, PRE.input_size)
    assert isinstance(got, TensorDataset) and len(got) == len(ds)
    for i in (0, 7, len(ds) - 1):
        assert torch.equal(got[i][0], ds[i][0]) and got[i][1] == ds[i][1]


@pytest.mark.parametrize("channels", [3, 1])
def test_uint8_tier_is_bit_for_bit(
    digits_folder: Path, monkeypatch: pytest.MonkeyPatch, channels: int
) -> None:
    pre = Preprocessing(
        input_size=(channels, 24, 20), mean=PRE.mean[:channels], std=PRE.std[:channels]
    )
    ds = _dataset(digits_folder, pre)
    n = len(ds)
    # room for the uint8 images, not for the floats
    monkeypatch.setattr(pipeline, "BUDGET_BYTES", n * channels * 24 * 20 * 2)
    got = pipeline.preprocessed(ds, pre.input_size)
    assert isinstance(got, pipeline.PreResized) and got.images.dtype == torch.uint8
    for i in range(n):
        x, y = got[i]
        want_x, want_y = ds[i]
        assert y == want_y
        assert torch.equal(x, want_x), i


def test_nothing_kept_when_it_does_not_fit(
    digits_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _dataset(digits_folder)
    monkeypatch.setattr(pipeline, "BUDGET_BYTES", 10)
    assert pipeline.preprocessed(ds, PRE.input_size) is ds


def test_split_needs_totensor_then_at_most_normalize() -> None:
    pil, norm = pipeline.split_transform(make_transform(PRE, train=False)) or (None, None)
    assert pil is not None and norm is not None and list(norm.mean) == list(PRE.mean)
    assert pipeline.split_transform(lambda img: img) is None
