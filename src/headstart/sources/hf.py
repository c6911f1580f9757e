"""``hf:ID_OR_DIR`` sources: Hugging Face transformers encoders, for texts or images.

``hf:/path/to/folder`` loads a model folder (``config.json`` + weights, with a tokenizer
for text models or a ``preprocessor_config.json`` for image models) through
``AutoModel`` and ``AutoTokenizer`` / ``AutoImageProcessor``.  ``hf:org/name`` is a
Hub ID: it is fetched into headstart's cache (``$HEADSTART_CACHE/huggingface``), and
refused with a one-line error when ``HF_HUB_OFFLINE`` or ``HEADSTART_OFFLINE`` is set.

Stages: everything before the encoder's list of layers (the embeddings), then one stage
per layer, then whatever follows (a final norm), so ``partial:K`` freezes the
embeddings and the first K layers (:attr:`Backbone.leading_stages`).  The old pooler
(BERT's tanh layer, trained for next-sentence prediction) is dropped: text models pool
the last hidden states as the folder's sentence-transformers config says (``mean``,
``cls``, ``max``; ``mean`` when there is none), image models take the CLS token or the
model's own pooled output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.data.transforms import Preprocessing
from headstart.errors import SourceError
from headstart.sources.base import (
    RANDOM_WEIGHTS,
    Backbone,
    BuildOptions,
    Source,
    WeightsOrigin,
)
from headstart.sources.inputs import TextInputs
from headstart.weights.resolve import cache_dir

__all__ = ["POOLINGS", "HfAdapter", "pool"]

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "max")
HF_DIR = "hf"  # the run dir's copy of config + tokenizer / image processor
_META = "headstart_hf.json"  # kind and pooling, beside that copy
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load reports and progress bars are not headstart's output."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _resolve_folder(name: str, options: BuildOptions) -> Path:
    """The local model folder for ``name``: a folder as given, or a Hub ID's snapshot."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(
                f"hf:{name}: {path} has no config.json; give a transformers model folder "
                "(config.json, weights, tokenizer or preprocessor_config.json)"
            )
        return path
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_local or not _HUB_ID.match(name):
        raise SourceError(f"hf:{name}: no such model folder")
    fetch = f"hf download {name} --local-dir DIR (or huggingface-cli download ...), then hf:DIR"
    if _truthy("HF_HUB_OFFLINE") or _truthy("HEADSTART_OFFLINE"):
        raise SourceError(
            f"hf:{name} is a Hub ID and this run is offline (HF_HUB_OFFLINE or "
            f"HEADSTART_OFFLINE is set); on a machine with network run: {fetch}"
        )
    from huggingface_hub import snapshot_download

    target = cache_dir(options.cache_dir) / "huggingface"
    try:
        return Path(
            snapshot_download(
                repo_id=name,
                cache_dir=str(target),
                allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"],
            )
        )
    except Exception as exc:  # network, auth, no such repo: one line and what to do
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"hf:{name}: cannot fetch from the Hub ({first}); {fetch}") from exc


def _is_vision(folder: Path) -> bool:
    has_tokenizer = any(
        (folder / f).is_file()
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")
    )
    return (folder / "preprocessor_config.json").is_file() and not has_tokenizer


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: unreadable ({exc})") from exc


def _pooling(folder: Path) -> str:
    """The sentence-transformers pooling of ``folder`` (modules.json), else ``mean``."""
    own = folder / _META
    if own.is_file():
        return str(_read_json(own).get("pooling", "mean"))
    modules = folder / "modules.json"
    if not modules.is_file():
        return "mean"
    for module in _read_json(modules):
        if str(module.get("type", "")).endswith("Pooling"):
            config = folder / str(module.get("path", "")) / "config.json"
            if not config.is_file():
                return "mean"
            cfg = _read_json(config)
            for mode, key in (
                ("cls", "pooling_mode_cls_token"),
                ("max", "pooling_mode_max_tokens"),
                ("mean", "pooling_mode_mean_tokens"),
            ):
                if cfg.get(key):
                    return mode
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            raise SourceError(
                f"{config}: pooling {', '.join(modes) or '(none)'} is not supported; "
                f"headstart pools by {', '.join(POOLINGS)}"
            )
    return "mean"


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[N, L, D]`` hidden states -> ``[N, D]``, over the tokens where ``mask`` is 1."""
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class _TextBody(nn.Module):
    """A transformers text encoder as a backbone body: packed ``[N, 2, L]`` in, pooled out."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.pooling)


class _VisionBody(nn.Module):
    """A transformers image encoder: pixels in, the pooled output or the CLS token out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:  # convolutional: [N, C, H, W]
            pooled = getattr(out, "pooler_output", None)
            return pooled.flatten(1) if pooled is not None else hidden.mean(dim=(-2, -1))
        return hidden[:, 0]


def _drop_pooler(model: nn.Module) -> None:
    """Remove a trained pooler layer (BERT's, ViT's): its output is not used."""
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
        model.pooler = None  # type: ignore[assignment]


def _shared_parts(a: str, b: str) -> int:
    """How many leading dotted parts two names share."""
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


def _stages(model: nn.Module) -> tuple[list[str], dict[str, int], int]:
    """Stages of a transformers encoder: before its layer list, each layer, after it.

    The layer list is the ``nn.ModuleList`` holding the most parameters (BERT's
    ``encoder.layer``, ViT's ``encoder.layer``, ConvNeXt's ``encoder.stages``).  Returns
    stage names, the assignment (names as ``body`` sees them, under ``model.``) and the
    number of leading stages (the embeddings).
    """
    lists = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0
    ]
    if not lists:
        raise SourceError(f"{type(model).__name__}: no list of layers found to split in stages")

    def size(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    prefix, layers = max(lists, key=lambda t: (size(t[1]), -t[0].count(".")))
    n_layers = len(layers)
    params = [n for n, _ in model.named_parameters()]
    raw: dict[str, int] = {}  # -1: before the layers, n_layers: after them
    seen_layer = False
    for n in params:
        if n.startswith(prefix + "."):
            raw[n] = int(n[len(prefix) + 1 :].split(".", 1)[0])
            seen_layer = True
        else:
            raw[n] = n_layers if seen_layer else -1
    for b, _ in model.named_buffers():  # a buffer goes with its closest parameter
        best, best_len = -1, -1
        for n in params:
            common = _shared_parts(b, n)
            if common > best_len:
                best, best_len = raw[n], common
        raw[b] = best if not b.startswith(prefix + ".") else int(b[len(prefix) + 1 :].split(".")[0])

    def label(names: list[str], fallback: str) -> str:
        tops = sorted({n.split(".", 1)[0] for n in names})
        return "+".join(tops) if tops else fallback

    before = [n for n, s in raw.items() if s == -1]
    after = [n for n, s in raw.items() if s == n_layers]
    stage_names = ([label(before, "embeddings")] if before else []) + [
        f"{prefix}.{i}" for i in range(n_layers)
    ]
    if after:
        stage_names.append(label(after, "final"))
    offset = 1 if before else 0
    assignment = {f"model.{n}": s + offset for n, s in raw.items()}
    return stage_names, assignment, offset


def _vision_preprocessing(processor: Any, image_size: int | None) -> Preprocessing:
    size = getattr(processor, "size", None) or {}
    crop = getattr(processor, "crop_size", None) or {}
    if "height" in crop:
        side = int(crop["height"])
    elif "height" in size:
        side = int(size["height"])
    else:
        side = int(size.get("shortest_edge", 224))
    crop_pct = float(getattr(processor, "crop_pct", None) or (1.0 if "height" in size else 0.875))
    mean = tuple(float(m) for m in (getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5)))
    std = tuple(float(s) for s in (getattr(processor, "image_std", None) or (0.5, 0.5, 0.5)))
    resample = getattr(processor, "resample", 2)
    interpolation = _RESAMPLE.get(int(resample), "bilinear") if resample is not None else "bilinear"
    return Preprocessing(
        input_size=(len(mean), side, side),
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_pct=crop_pct,
    ).with_image_size(image_size)


def _lora_targets(model_type: str) -> tuple[str, ...] | None:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    found = defaults.get(model_type)
    if found is None and model_type in ("vit", "deit", "dinov2", "beit"):
        found = ["query", "value"]
    return tuple(found) if found else None


def _save_files(folder_in: Path, config: Any, tokenizer: Any, processor: Any, pooling: str) -> Any:
    """A function writing config + tokenizer / processor into ``RUN/hf``: the run needs
    nothing else to be rebuilt (the weights are in its own model file)."""

    def save(run_dir: Path) -> None:
        out = run_dir / HF_DIR
        out.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(out))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        if processor is not None:
            processor.save_pretrained(str(out))
        kind = "vision" if processor is not None else "text"
        (out / _META).write_text(
            json.dumps({"kind": kind, "pooling": pooling, "from": str(folder_in)}, indent=2) + "\n"
        )

    return save


class HfAdapter:
    """Builds ``hf:ID_OR_DIR`` sources; weights ``default`` are the folder's own."""

    family = "hf"

    def names(self) -> list[str]:
        return []  # any model folder or Hub ID

    def build(self, name: str, *, weights: str, options: BuildOptions) -> Source:
        from transformers import AutoConfig, AutoModel

        if weights not in ("default", "none"):
            raise SourceError(
                f"hf:{name}: --weights must be default (the folder's weights) or none "
                f"(random initialisation), not {weights!r}"
            )
        run_dir = options.extra.get("run_dir")
        if run_dir is not None and (Path(run_dir) / HF_DIR).is_dir():
            folder = Path(run_dir) / HF_DIR  # a run dir rebuilds from its own copy
        else:
            folder = _resolve_folder(name, options)
        vision = _is_vision(folder)
        with _quiet_transformers():
            try:
                config = AutoConfig.from_pretrained(str(folder))
                if vision and options.image_size is not None and hasattr(config, "image_size"):
                    config.image_size = options.image_size
                tokenizer = processor = None
                if vision:
                    from transformers import AutoImageProcessor

                    processor = AutoImageProcessor.from_pretrained(str(folder))
                else:
                    from transformers import AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(str(folder))
                info: dict[str, Any] = {}
                if weights == "none":
                    model = AutoModel.from_config(config)
                else:
                    model, info = AutoModel.from_pretrained(
                        str(folder), config=config, output_loading_info=True
                    )
            except SourceError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise SourceError(f"hf:{name}: cannot load {folder} ({first[:300]})") from exc
        model.eval()
        _drop_pooler(model)
        pooling = _pooling(folder) if not vision else "cls"
        body: nn.Module = _VisionBody(model) if vision else _TextBody(model, pooling)
        stage_names, assignment, leading = _stages(model)
        if vision:
            pre = _vision_preprocessing(processor, options.image_size)
            with torch.no_grad():
                feature_dim = int(body(torch.zeros(1, *pre.input_size)).shape[-1])
            text = None
        else:
            feature_dim = int(config.hidden_size)
            limit = min(
                int(getattr(config, "max_position_embeddings", 512) or 512),
                int(getattr(tokenizer, "model_max_length", 10**6) or 10**6),
            )
            st_config = folder / "sentence_bert_config.json"  # what it was trained at
            if st_config.is_file():
                limit = min(limit, int(_read_json(st_config).get("max_seq_length") or limit))
            # text needs no image preprocessing; this placeholder keeps the run format
            pre = Preprocessing(input_size=(1, 1, 1), mean=(0.0,), std=(1.0,))
            text = TextInputs(
                tokenizer=tokenizer, pooling=pooling, max_length=limit, folder=str(folder)
            )
        backbone = Backbone(
            body,
            stage_names=stage_names,
            assignment=assignment,
            feature_dim=feature_dim,
            leading_stages=leading,
        )
        origin = RANDOM_WEIGHTS
        if weights == "default":
            origin = WeightsOrigin(
                spec="default",
                description=f"hf {config.model_type} from {folder}",
                pretrained=True,
                path=str(folder),
                # the old pooler (dropped on purpose) is not worth reporting
                missing_keys=tuple(k for k in info.get("missing_keys", ()) if "pooler" not in k),
                unexpected_keys=tuple(
                    k for k in info.get("unexpected_keys", ()) if "pooler" not in k
                ),
            )
            if origin.missing_keys:
                log.warning(
                    "hf:%s: %d weights not in the folder, left random: %s",
                    name,
                    len(origin.missing_keys),
                    ", ".join(origin.missing_keys[:8]),
                )
        return Source(
            spec=f"hf:{name}",
            arch=f"hf:{name}",
            backbone=backbone,
            preprocessing=pre,
            weights=origin,
            old_head=None,
            arch_options={"image_size": options.image_size} if options.image_size else {},
            text=text,
            lora_targets=_lora_targets(str(config.model_type)),
            save_files=_save_files(folder, config, tokenizer, processor, pooling),
        )
