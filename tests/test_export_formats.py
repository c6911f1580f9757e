"""headstart export --format timm|hf: the folders load with the ecosystem's own loaders,
offline, and label the test inputs as ``headstart predict`` does; each has a model card."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import run_cli
from tests.hf_tiny import make_tiny_bert, sentiment_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = ["the movie was great", "the plot was awful", "really fun", "boring and dull", "a film"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _fit(data: Path, source: str, out: Path, *extra: str) -> Path:
    r = run_cli(
        "fit", data, "--source", source, "--strategy", "full", "--epochs", "1",
        "--out", out, "-q", *extra,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    return out


def _export(run: Path, fmt: str, out: Path, *extra: str) -> dict[str, Any]:
    r = run_cli("export", run, "--format", fmt, "--out", out, "--json", *extra)
    assert r.code == 0, r.stderr
    return dict(r.json())


def _predicted(run: Path, *inputs: str | Path) -> list[str]:
    r = run_cli("predict", run, *inputs, "--json")
    assert r.code == 0, r.stderr
    return [row["label"] for row in r.json()["predictions"]]


def _images(digits_folder: Path) -> list[Path]:
    return sorted(digits_folder.rglob("*.png"))[::3]


def _card(folder: Path) -> tuple[dict[str, Any], str]:
    text = (folder / "README.md").read_text()
    _, block, body = text.split("---\n", 2)
    return dict(yaml.safe_load(block)), body


@pytest.fixture(scope="module")
def timm_run(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("timm") / "run"
    return _fit(digits_folder, "timm:test_resnet", out, "--weights", "none", "--image-size", "32")


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("text", "label"))
        writer.writerows(sentiment_rows(40))
    return path


def test_timm_folder_is_the_fine_tuned_model(
    timm_run: Path, digits_folder: Path, tmp_path: Path
) -> None:
    import timm

    out = tmp_path / "timm"
    summary = _export(timm_run, "timm", out)
    assert summary["max_abs_diff"] <= 1e-4 and "local-dir:" in summary["loader"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == ["d0", "d1", "d2"]
    assert model.num_classes == 3
    config = timm.data.resolve_data_config({}, model=model)
    pre = json.loads((timm_run / "headstart.json").read_text())["preprocessing"]
    assert list(config["input_size"]) == pre["input_size"]
    assert list(config["mean"]) == pre["mean"] and list(config["std"]) == pre["std"]
    assert config["crop_pct"] == pre["crop_pct"]
    assert config["interpolation"] == pre["interpolation"]
    transform = timm.data.create_transform(**config)
    paths = _images(digits_folder)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        got = [model.pretrained_cfg["label_names"][i] for i in model(x).argmax(1).tolist()]
    assert got == _predicted(timm_run, *paths)
    meta, body = _card(out)
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert "timm.create_model" in body and "`d0`, `d1`, `d2`" in body


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_hf_text_folder_labels_like_headstart(
    pooling: str, sentiment_csv: Path, tmp_path: Path
) -> None:
    encoder = make_tiny_bert(tmp_path / "bert", pooling=pooling)
    run = _fit(sentiment_csv, f"hf:{encoder}", tmp_path / "run")
    out = tmp_path / "hf"
    summary = _export(run, "hf", out)
    assert summary["max_abs_diff"] <= 1e-3
    want = _predicted(run, *(a for t in TEXTS for a in ("--text", t)))
    from transformers import AutoConfig, AutoTokenizer

    id2label = AutoConfig.from_pretrained(str(out)).id2label
    assert id2label == {0: "neg", 1: "pos"}
    if pooling == "cls":  # the architecture's own class pools as the run did
        from transformers import AutoModelForSequenceClassification

        tokenizer = AutoTokenizer.from_pretrained(str(out))
        model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
        batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**batch).logits
        library = "transformers"
    else:  # mean pooling: sentence-transformers' Pooling + Dense
        from sentence_transformers import SentenceTransformer

        logits = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_tensor=True)
        library = "sentence-transformers"
    assert [id2label[i] for i in logits.argmax(-1).tolist()] == want
    meta, body = _card(out)
    assert meta["library_name"] == library and meta["pipeline_tag"] == "text-classification"
    fingerprint = json.loads((run / "headstart.json").read_text())["data"]["train"]["fingerprint"]
    assert meta["headstart"]["data_fingerprint"] == fingerprint
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    assert str(out) in body


def test_hf_image_folder_labels_like_headstart(
    tiny_vit: Path, digits_folder: Path, tmp_path: Path
) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    run = _fit(digits_folder, f"hf:{tiny_vit}", tmp_path / "run")
    out = tmp_path / "hf"
    _export(run, "hf", out)
    processor = AutoImageProcessor.from_pretrained(str(out))
    model = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    paths = _images(digits_folder)
    inputs = processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    with torch.inference_mode():
        got = [model.config.id2label[i] for i in model(**inputs).logits.argmax(-1).tolist()]
    assert got == _predicted(run, *paths)
    assert _card(out)[0]["library_name"] == "transformers"


def test_folder_exports_refuse(timm_run: Path, digits_folder: Path, tmp_path: Path) -> None:
    builtin = _fit(digits_folder, "builtin:digits-cnn", tmp_path / "b", "--weights", "none")
    r = run_cli("export", builtin, "--format", "timm", "--out", tmp_path / "x")
    assert r.code == 1 and "onnx, torchscript" in r.stderr and "builtin:" in r.stderr
    r = run_cli("export", timm_run, "--format", "hf", "--out", tmp_path / "x")
    assert r.code == 1 and "onnx, torchscript, timm" in r.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run_cli("export", timm_run, "--format", "timm", "--out", mine, "--overwrite")
    assert r.code == 1 and "not a headstart export" in r.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "exp"
    _export(timm_run, "timm", out)
    r = run_cli("export", timm_run, "--format", "timm", "--out", out)
    assert r.code == 1 and "--overwrite" in r.stderr
    _export(timm_run, "timm", out, "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "exp", "mine"]  # no leftovers
