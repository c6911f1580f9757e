"""``--format timm``: a folder ``timm.create_model("local-dir:PATH", pretrained=True)``
loads as the fine-tuned model.

The run's architecture is built again by timm with the run's number of classes; its body
takes the run's backbone weights and its classifier (``pretrained_cfg["classifier"]``)
the run's new head.  timm's own ``save_for_hf`` writes ``model.safetensors`` and
``config.json``: the label names, the construction arguments (an image size for the
fixed-size models) and the run's preprocessing as the pretrained config (input size,
mean, std, interpolation, crop_pct), which ``timm.data.resolve_data_config`` reads back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from headstart.errors import RunError
from headstart.export.result import Written
from headstart.sources.target import LoadedRun

__all__ = ["write_timm"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |logit difference| between the folder, loaded back, and the run

USAGE = """\
import timm
import torch
from PIL import Image

model = timm.create_model("local-dir:{path}", pretrained=True).eval()
config = timm.data.resolve_data_config({}, model=model)
transform = timm.data.create_transform(**config)
x = transform(Image.open("image.png").convert("{mode}")).unsqueeze(0)
with torch.inference_mode():
    label = model.pretrained_cfg["label_names"][model(x).argmax(1).item()]
"""


def _classifier_keys(cfg: dict[str, Any]) -> tuple[str, ...]:
    classifier = cfg.get("classifier")
    if not classifier:
        raise RunError("this timm architecture names no classifier; export it as onnx instead")
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _timm_state(loaded: LoadedRun, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The run's tensors under timm's names: the body as is, the new head as every
    classifier (a distilled model's two heads both get it: their mean is the head)."""
    state: dict[str, torch.Tensor] = dict(loaded.model.backbone.body.state_dict())
    for key in _classifier_keys(cfg):
        for name, tensor in loaded.model.head.state_dict().items():
            state[f"{key}.{name}"] = tensor
    return state


def _data_config(loaded: LoadedRun) -> dict[str, Any]:
    pre = loaded.preprocessing
    return {
        "input_size": tuple(pre.input_size),
        "mean": tuple(pre.mean),
        "std": tuple(pre.std),
        "interpolation": pre.interpolation,
        "crop_pct": pre.crop_pct,
        "crop_mode": "center",
    }


def _max_diff(loaded: LoadedRun, folder: Path) -> float:
    """Load ``folder`` as a timm user would and compare it with the run on random inputs."""
    import timm

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, *loaded.preprocessing.input_size, generator=gen)
    with torch.inference_mode():
        return float((model(x) - loaded.model.cpu().eval()(x)).abs().max())


def write_timm(loaded: LoadedRun, folder: Path) -> Written:
    """Write the timm folder of ``loaded`` into ``folder`` and check it loads back as the
    run's model; raises :class:`RunError` if it does not."""
    import timm
    from timm.models import save_for_hf

    name = str(loaded.meta["source"]["arch"]).split(":", 1)[1]
    image_size = (loaded.meta["source"].get("arch_options") or {}).get("image_size")
    kwargs: dict[str, Any] = {}
    cfg = timm.models.get_pretrained_cfg(name)
    if image_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # as the source was built (sources/timm_)
    classes = len(loaded.classes)
    model: Any = timm.create_model(name, pretrained=False, num_classes=classes, **kwargs)
    try:
        model.load_state_dict(_timm_state(loaded, model.pretrained_cfg), strict=True)
    except RuntimeError as exc:
        raise RunError(
            f"{loaded.path}: its tensors do not fit timm's {name} "
            f"({str(exc).splitlines()[0][:200]}); export it as onnx instead"
        ) from exc
    save_for_hf(
        model,
        str(folder),
        model_config={"label_names": list(loaded.classes)},
        model_args=kwargs or None,
        data_config=_data_config(loaded),
        safe_serialization=True,
    )
    diff = _max_diff(loaded, folder)
    if not diff <= TOLERANCE:
        raise RunError(
            f"{loaded.path}: the timm folder, loaded back, differs from the run's model by "
            f"{diff:.3g} (more than {TOLERANCE}); not written"
        )
    mode = "RGB" if loaded.preprocessing.input_size[0] == 3 else "L"
    return Written(
        library="timm",
        pipeline_tag="image-classification",
        loader='timm.create_model("local-dir:{path}", pretrained=True)',
        usage=USAGE.replace("{mode}", mode),
        max_abs_diff=diff,
    )
