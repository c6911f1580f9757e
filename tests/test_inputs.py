"""A source's inputs (headstart.sources.inputs): the one kind check, the loaders' item order,
and what rank knows of a spec's kind without building it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart.data.labelled import LabeledData
from headstart.data.texts import TextData
from headstart.data.transforms import Preprocessing
from headstart.errors import ConfigError, DataError
from headstart.sources.inputs import ImageInputs, TextInputs, check_candidate
from headstart.sources.kinds import check_one_kind, known_kind


class _Tokenizer:
    """Whitespace tokens, id = length of the word: enough for the loaders."""

    pad_token_id = 0

    def __call__(
        self, texts: list[str], truncation: bool, max_length: int
    ) -> dict[str, list[list[int]]]:
        return {"input_ids": [[len(w) for w in t.split()][:max_length] for t in texts]}


def _texts(items: list[str]) -> TextData:
    return TextData(
        spec="reviews.csv",
        classes=["a", "b"],
        items=list(items),
        targets=np.arange(len(items), dtype=np.int64) % 2,
        rows=[f"line {i}" for i in range(len(items))],
    )


def _images() -> LabeledData:
    return LabeledData(
        spec="digits/",
        classes=["a", "b"],
        items=[np.zeros((8, 8), dtype=np.uint8)] * 2,
        targets=np.array([0, 1], dtype=np.int64),
    )


PRE = Preprocessing(input_size=(1, 8, 8), mean=(0.0,), std=(1.0,))


def test_data_of_the_other_kind_is_one_clear_error() -> None:
    text = TextInputs(tokenizer=_Tokenizer(), max_length=16)
    with pytest.raises(DataError, match=r"digits/: images, but hf:x is a text model; give a CSV"):
        text.check(_images(), where="digits/", model="hf:x")
    with pytest.raises(DataError, match=r"reviews.csv: texts, but b:y is an image model; use a"):
        ImageInputs(PRE).check(_texts(["good"]), where="reviews.csv", model="b:y")
    text.check(_texts(["good"]), where="reviews.csv", model="hf:x")
    ImageInputs(PRE).check(_images(), where="digits/", model="b:y")


def test_text_rows_come_with_their_item_order_images_in_order() -> None:
    data = _texts(["a", "a b c", "a b", "a b c d"])
    loader, order = TextInputs(tokenizer=_Tokenizer(), max_length=16).eval_loader(
        data, batch_size=2
    )
    assert order is not None and order.tolist() == [3, 1, 2, 0]  # longest first
    assert [x.shape[-1] for x, _ in loader] == [4, 2]
    _, none = ImageInputs(PRE).eval_loader(_images(), batch_size=2)
    assert none is None


def test_max_length_is_at_most_what_the_model_takes() -> None:
    text = TextInputs(tokenizer=_Tokenizer(), max_length=64)
    assert text.limited(None, "hf:x").length == 64  # min(128, 64)
    assert text.limited(16, "hf:x").length == 16
    assert text.limited(500, "hf:x").length == 64
    assert text.with_length(None).truncation == 64
    assert ImageInputs(PRE).limited(16, "b:y").length is None


def test_rank_names_the_candidate_and_the_kinds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'hf:x' is a text encoder, but digits/ holds images"):
        check_candidate("texts", _images(), "hf:x")
    with pytest.raises(ConfigError, match="'b:y' is an image source, but reviews.csv holds"):
        check_candidate("images", _texts(["good"]), "b:y")
    assert known_kind("builtin:digits-cnn") == "images"
    assert known_kind(f"hf:{tmp_path / 'nowhere'}") is None  # not on disk: build it to know
    check_one_kind([("builtin:digits-cnn", "builtin:digits-cnn"), ("timm:resnet18", "t")])
