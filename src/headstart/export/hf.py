"""``--format hf``: a folder transformers (or sentence-transformers) loads, for runs of an
``hf:`` source.

- Images: ``AutoModelForImageClassification.from_pretrained(PATH)``, with ``id2label``
  and the source's image processor.  The architecture's class feeds its classifier the
  CLS token or the pooled output, as headstart's image body does.
- Texts pooled by the first token (``cls``): ``AutoModelForSequenceClassification``.  Its
  head is ``out(tanh(dense(h[:, 0])))`` (BERT's pooler and classifier; RoBERTa's
  classification head), while headstart's is ``W h[:, 0] + b``: the export sets
  ``dense = eps * I`` and ``out = W / eps`` with ``eps = 1e-4``, so that
  ``tanh(eps x) / eps = x (1 - (eps x)^2 / 3 ...)`` agrees with ``x`` to about 1e-7
  relative for the activations encoders make; the check below measures it.
- Texts pooled by ``mean`` or ``max`` (sentence-transformers encoders, all-MiniLM):
  no built-in transformers class pools so, and a model that would load but pool otherwise
  gives other labels.  The folder then carries its own class, ``modeling_headstart.py``
  (:mod:`.modeling_headstart`: the encoder, the run's pooling over the attention mask,
  the linear head), and ``config.json`` names it in ``auto_map``:
  ``AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)``
  loads it, with ``id2label``.  ``model.safetensors`` holds the encoder's own keys (no
  prefix) and ``head.*``.  The same folder is a sentence-transformers model: the encoder
  (``AutoModel``, which leaves ``head.*`` unused), its pooling, and the head again as a
  ``Dense`` layer without activation: ``SentenceTransformer(PATH).encode(texts)`` returns
  the logits.  Runs pooled by the first token whose architecture's head is not
  ``out(tanh(dense(.)))`` get this folder too.

Each folder is loaded back before it is kept and run against the run's model; the
custom-code folder both ways (its class through ``AutoModelForSequenceClassification``,
with every weight loaded, and ``AutoModel`` + the pooling + the ``Dense`` weights).
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from headstart.errors import RunError
from headstart.export.result import Written
from headstart.sources.hf import HF_DIR, _quiet_transformers, pool
from headstart.sources.target import LoadedRun

__all__ = ["write_hf"]

EPS = 1e-4  # the near-identity first layer of a sequence-classification head
TOLERANCE = 1e-3  # max |logit difference|, relative to the largest logit (at least 1)
CODE = Path(__file__).with_name("modeling_headstart.py")  # copied into the folder as is
CLASS = "HeadstartForSequenceClassification"

TEXT_USAGE = """\
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForSequenceClassification.from_pretrained("{path}").eval()
batch = tokenizer(["a text to label"], padding=True, truncation=True, return_tensors="pt")
labels = [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]
"""
REMOTE_USAGE = """\
from transformers import AutoModelForSequenceClassification, AutoTokenizer

{why}
tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForSequenceClassification.from_pretrained(
    "{path}", trust_remote_code=True
).eval()
batch = tokenizer(["a text to label"], padding=True, truncation=True, return_tensors="pt")
labels = [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]

# or with sentence-transformers, no custom code: encode() returns the logits
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig

id2label = AutoConfig.from_pretrained("{path}").id2label
logits = SentenceTransformer("{path}").encode(["a text to label"], convert_to_tensor=True)
labels = [id2label[i] for i in logits.argmax(-1).tolist()]
"""
IMAGE_USAGE = """\
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("{path}")
model = AutoModelForImageClassification.from_pretrained("{path}").eval()
inputs = processor(Image.open("image.png").convert("RGB"), return_tensors="pt")
label = model.config.id2label[model(**inputs).logits.argmax(-1).item()]
"""


def _labelled_config(loaded: LoadedRun) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(loaded.path / HF_DIR))
    config.num_labels = len(loaded.classes)
    config.id2label = dict(enumerate(loaded.classes))
    config.label2id = {c: i for i, c in enumerate(loaded.classes)}
    return config


def _encoder(loaded: LoadedRun) -> nn.Module:
    body: Any = loaded.model.backbone.body
    encoder: nn.Module = body.model
    return encoder


def _fill_base(model: Any, loaded: LoadedRun) -> None:
    """The run's encoder weights into ``model``'s base model; only a pooler headstart
    dropped may be missing."""
    base = getattr(model, model.base_model_prefix)
    missing, unexpected = base.load_state_dict(_encoder(loaded).state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise RunError(
            f"{loaded.path}: the encoder does not fit {type(model).__name__} "
            f"(missing {missing[:4]}, unexpected {list(unexpected)[:4]}); export it as onnx"
        )


def _head_linears(model: Any) -> list[nn.Linear]:
    """The linear layers of ``model`` outside its base model, in order."""
    prefix = model.base_model_prefix + "."
    return [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not name.startswith(prefix)
    ]


def _relative_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


def _check(diff: float, loaded: LoadedRun, what: str) -> float:
    if not diff <= TOLERANCE:
        raise RunError(
            f"{loaded.path}: {what}, loaded back, differs from the run's model by {diff:.3g} "
            f"(more than {TOLERANCE} of the largest logit); export it as onnx"
        )
    return diff


def _text_batch(loaded: LoadedRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids with padding (two lengths), as a tokenizer would give them."""
    tokenizer: Any = loaded.text.tokenizer if loaded.text is not None else None
    vocab = int(getattr(tokenizer, "vocab_size", 0) or 100)
    length = min(16, int((loaded.meta.get("text") or {}).get("max_length") or 16))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (4, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[2:, length // 2 :] = 0  # two shorter texts, padded
    ids[mask == 0] = int(getattr(tokenizer, "pad_token_id", None) or 0)
    return ids, mask


def _run_logits(loaded: LoadedRun, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model.cpu().eval()(torch.stack([ids, mask], dim=1))


def _save_tokenizer(loaded: LoadedRun, folder: Path) -> None:
    """The run's tokenizer, cutting texts where headstart did (``truncation=True``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(loaded.path / HF_DIR))
    max_length = (loaded.meta.get("text") or {}).get("max_length")
    if max_length:
        tokenizer.model_max_length = int(max_length)
    tokenizer.save_pretrained(str(folder))


def _sequence_classification(loaded: LoadedRun, folder: Path) -> Written | None:
    """The ``AutoModelForSequenceClassification`` folder, or None (and the folder left
    to be emptied) when the architecture's head is not ``out(tanh(dense(h[:, 0])))``."""
    from transformers import AutoModelForSequenceClassification

    model: Any = AutoModelForSequenceClassification.from_config(_labelled_config(loaded)).eval()
    _fill_base(model, loaded)
    pooler: Any = getattr(getattr(model, model.base_model_prefix), "pooler", None)
    first = getattr(pooler, "dense", None)
    layers = [*([first] if isinstance(first, nn.Linear) else []), *_head_linears(model)]
    if len(layers) != 2 or layers[1].out_features != len(loaded.classes):
        return None
    dense, out = layers
    head = loaded.model.head
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.in_features) * EPS)
        dense.bias.zero_()
        out.weight.copy_(head.weight / EPS)
        out.bias.copy_(head.bias)
    model.save_pretrained(str(folder))
    _save_tokenizer(loaded, folder)
    back: Any = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    ids, mask = _text_batch(loaded)
    with torch.inference_mode():
        got = back(input_ids=ids, attention_mask=mask).logits
    diff = _relative_diff(got, _run_logits(loaded, ids, mask))
    if not diff <= TOLERANCE:  # another activation than tanh (ELECTRA's gelu)
        return None
    return Written(
        library="transformers",
        pipeline_tag="text-classification",
        loader='AutoModelForSequenceClassification.from_pretrained("{path}")',
        usage=TEXT_USAGE,
        max_abs_diff=diff,
        notes=(
            f"the classification head's first layer is {EPS} x the identity and its "
            f"output layer the fitted head / {EPS}: tanh({EPS} x) / {EPS} is x to within "
            "the float precision, so the class computes headstart's linear head on the "
            "first token",
        ),
    )


def _st_files(loaded: LoadedRun, folder: Path, pooling: str) -> None:
    """sentence-transformers' module files: Transformer (the folder), Pooling, Dense."""
    dim = loaded.model.head.in_features
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    max_length = (loaded.meta.get("text") or {}).get("max_length")
    files: dict[str, Any] = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
        "2_Dense/config.json": {
            "in_features": dim,
            "out_features": len(loaded.classes),
            "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
    }
    for name, obj in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(obj, indent=2) + "\n")
    head = loaded.model.head
    save_file(
        {"linear.weight": head.weight.detach().clone(), "linear.bias": head.bias.detach().clone()},
        str(folder / "2_Dense" / "model.safetensors"),
    )


def _why(pooling: str) -> str:
    """Why the folder needs its own class, for the usage text and the card."""
    if pooling == "cls":
        return (
            "the run's linear head on the first token is not the architecture's "
            "sequence-classification head, so no built-in class computes it"
        )
    return (
        f"the run pools the tokens by {pooling}, and no built-in transformers "
        "sequence-classification class pools so (they take the first token)"
    )


def _comment(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 86, initial_indent="# ", subsequent_indent="# "))


def _forget_module(cls: type) -> None:
    """Remove the copy of modeling_headstart.py that transformers made in its module
    cache for the staging folder (named after it, so nobody else's) and its import."""
    module = cls.__module__
    try:
        package = Path(inspect.getfile(cls)).parent.parent  # .../transformers_modules/<folder>
    except (TypeError, OSError):
        return
    prefix = module.rsplit(".", 2)[0]  # transformers_modules.<folder>
    if package.name != prefix.rsplit(".", 1)[-1] or not prefix.startswith("transformers_modules."):
        return
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        sys.modules.pop(name, None)
    shutil.rmtree(package, ignore_errors=True)


def _remote_logits(loaded: LoadedRun, folder: Path, ids: torch.Tensor, mask: torch.Tensor) -> Any:
    """The logits of the folder loaded as its users will: the Auto class, custom code;
    every weight of the class must come from the folder."""
    from transformers import AutoModelForSequenceClassification

    what = f"AutoModelForSequenceClassification (trust_remote_code=True, {CODE.name})"
    try:
        back, info = AutoModelForSequenceClassification.from_pretrained(
            str(folder), trust_remote_code=True, output_loading_info=True
        )
    except Exception as exc:  # the custom code or the weights: say which export failed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunError(
            f"{loaded.path}: the hf folder does not load with {what} "
            f"({type(exc).__name__}: {first[:300]}); export it as onnx"
        ) from exc
    try:
        if type(back).__name__ != CLASS:
            raise RunError(f"{loaded.path}: {what} loaded {type(back).__name__}, not {CLASS}")
        bad = {
            k: sorted(info.get(k) or ())[:4]
            for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
            if info.get(k)
        }
        if bad:
            raise RunError(
                f"{loaded.path}: {what} does not load every weight from the folder ({bad}); "
                "export it as onnx"
            )
        with torch.inference_mode():
            return back.eval()(input_ids=ids, attention_mask=mask).logits
    finally:
        _forget_module(type(back))


def _sentence_transformers(loaded: LoadedRun, folder: Path, pooling: str) -> Written:
    """The folder both loaders take: the custom class and sentence-transformers'."""
    from transformers import AutoModel

    encoder: Any = copy.deepcopy(_encoder(loaded))
    config = _labelled_config(loaded)
    config.headstart_pooling = pooling
    config.auto_map = {"AutoModelForSequenceClassification": f"{CODE.stem}.{CLASS}"}
    encoder.config = config
    if hasattr(encoder, "head"):
        raise RunError(
            f"{loaded.path}: {type(encoder).__name__} has a head of its own; export it as onnx"
        )
    # the head as one more module, so that save_pretrained writes its keys (head.*)
    # beside the encoder's, unprefixed, however it shards or deduplicates the encoder's
    encoder.add_module("head", copy.deepcopy(loaded.model.head).cpu())
    encoder.save_pretrained(str(folder))
    shutil.copyfile(CODE, folder / CODE.name)
    _save_tokenizer(loaded, folder)
    _st_files(loaded, folder, pooling)
    ids, mask = _text_batch(loaded)
    want = _run_logits(loaded, ids, mask)
    remote = _relative_diff(_remote_logits(loaded, folder, ids, mask), want)
    _check(remote, loaded, f"AutoModelForSequenceClassification with {CODE.name}")
    back: Any = AutoModel.from_pretrained(str(folder)).eval()
    dense = load_file(str(folder / "2_Dense" / "model.safetensors"))
    with torch.inference_mode():
        hidden = back(input_ids=ids, attention_mask=mask).last_hidden_state
        got = pool(hidden, mask, pooling) @ dense["linear.weight"].T + dense["linear.bias"]
    st = _check(_relative_diff(got, want), loaded, "the sentence-transformers folder")
    why = _why(pooling)
    return Written(
        library="transformers",
        pipeline_tag="text-classification",
        loader=(
            'AutoModelForSequenceClassification.from_pretrained("{path}", trust_remote_code=True)'
        ),
        usage=REMOTE_USAGE.replace(
            "{why}", _comment(f"trust_remote_code=True runs this folder's {CODE.name}: {why}")
        ),
        max_abs_diff=max(remote, st),
        notes=(
            f"{why}: the folder carries its own class, {CODE.name} ({CLASS}: the encoder, "
            f"the {pooling} pooling over the attention mask, the linear head), which "
            "config.json's auto_map names; trust_remote_code=True lets transformers run it. "
            "Without it, AutoModelForSequenceClassification loads the architecture's own "
            "class with a new, untrained head (its load report says so) and other labels",
            "the folder is also a sentence-transformers model (modules.json: the encoder, "
            "1_Pooling, 2_Dense holding the head), loaded without custom code; transformers' "
            "load report then lists head.* as unexpected (the custom class's copy of the "
            "head) and the pooler, if the architecture has one, as missing (headstart "
            "dropped it; neither loader uses its output)",
        ),
        code=CODE.name,
        tags=("sentence-transformers", "custom_code"),
    )


def _image_classification(loaded: LoadedRun, folder: Path) -> Written:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model: Any = AutoModelForImageClassification.from_config(_labelled_config(loaded)).eval()
    _fill_base(model, loaded)
    layers = _head_linears(model)
    if len(layers) != 1:
        raise RunError(
            f"{loaded.path}: {type(model).__name__}'s head is not one linear layer as "
            "headstart's is; export it as onnx"
        )
    with torch.no_grad():
        layers[0].weight.copy_(loaded.model.head.weight)
        layers[0].bias.copy_(loaded.model.head.bias)
    model.save_pretrained(str(folder))
    AutoImageProcessor.from_pretrained(str(loaded.path / HF_DIR)).save_pretrained(str(folder))
    back: Any = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, *loaded.preprocessing.input_size, generator=gen)
    with torch.inference_mode():
        diff = _relative_diff(back(pixel_values=x).logits, loaded.model.cpu().eval()(x))
    return Written(
        library="transformers",
        pipeline_tag="image-classification",
        loader='AutoModelForImageClassification.from_pretrained("{path}")',
        usage=IMAGE_USAGE,
        max_abs_diff=_check(diff, loaded, "AutoModelForImageClassification"),
        notes=(
            "the image processor is the source's own; headstart resizes the short side and "
            "centre-crops (see headstart_export.json), which is the same for square images",
        ),
    )


def write_hf(loaded: LoadedRun, folder: Path) -> Written:
    """Write the hf folder of ``loaded`` into ``folder``, checked against the run."""
    with _quiet_transformers():
        if loaded.text is None:
            return _image_classification(loaded, folder)
        pooling = loaded.text.pooling
        if pooling == "cls":
            written = _sequence_classification(loaded, folder)
            if written is not None:
                return written
            for path in folder.iterdir():  # start over as a sentence-transformers folder
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return _sentence_transformers(loaded, folder, pooling)
