"""The model card of a folder export: ``README.md`` with the metadata block the Hugging
Face Hub reads (YAML front matter: library, pipeline tag, tags, the run's accuracy in a
``model-index``, the data's fingerprint) and a paragraph for people.

The front matter is written as JSON values, which are YAML too: no YAML writer needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headstart.export.result import Written
from headstart.sources.target import LoadedRun

__all__ = ["accuracy", "model_card"]


def accuracy(meta: dict[str, Any]) -> tuple[float, str] | None:
    """The run's accuracy and what it was measured on: the validation split when there
    was one, else the training data (small data keeps none aside)."""
    metrics = meta.get("metrics") or {}
    if metrics.get("val_acc") is not None:
        return float(metrics["val_acc"]), "validation accuracy"
    if metrics.get("train_acc") is not None:
        return float(metrics["train_acc"]), "training accuracy (no validation split)"
    return None


def _yaml(key: str, value: Any, indent: int = 0) -> list[str]:
    """``key: value`` as block YAML; scalars and lists of mappings as JSON (flow style)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = [f"{pad}{key}:"]
        for k, v in value.items():
            lines += _yaml(k, v, indent + 2)
        return lines
    if isinstance(value, list) and not any(isinstance(v, dict) for v in value):
        return [f"{pad}{key}:", *(f"{pad}- {json.dumps(v)}" for v in value)]
    return [f"{pad}{key}: {json.dumps(value)}"]


def front_matter(loaded: LoadedRun, written: Written) -> dict[str, Any]:
    """The Hub's metadata of the export (``README.md``'s YAML block)."""
    meta = loaded.meta
    train = (meta.get("data") or {}).get("train") or {}
    kind = "texts" if loaded.text is not None else "images"
    out: dict[str, Any] = {
        "library_name": written.library,
        "pipeline_tag": written.pipeline_tag,
        "tags": [
            written.pipeline_tag,
            written.library,
            *written.tags,
            "headstart",
            "transfer-learning",
        ],
        "metrics": ["accuracy"],
    }
    found = accuracy(meta)
    if found is not None:
        value, name = found
        out["model-index"] = [
            {
                "name": loaded.path.name,
                "results": [
                    {
                        "task": {"type": written.pipeline_tag},
                        "dataset": {"name": str(train.get("spec", "?")), "type": kind},
                        "metrics": [{"type": "accuracy", "value": round(value, 4), "name": name}],
                    }
                ],
            }
        ]
    out["headstart"] = {
        "source": meta["source"].get("spec"),
        "strategy": (meta.get("plan") or {}).get("strategy"),
        "classes": list(loaded.classes),
        "data_fingerprint": train.get("fingerprint"),
        "data_items": train.get("n_items"),
    }
    return out


def _block(data: dict[str, Any]) -> str:
    lines = ["---"]
    for key, value in data.items():
        lines += _yaml(key, value)
    return "\n".join([*lines, "---"])


def model_card(loaded: LoadedRun, written: Written, path: Path) -> str:
    """``README.md`` of the export folder at ``path``."""
    meta = loaded.meta
    head = front_matter(loaded, written)
    info = head["headstart"]
    weights = (meta["source"].get("weights") or {}).get("description", "?")
    found = accuracy(meta)
    score = f"{found[1]}: {found[0]:.4f}" if found else "no accuracy recorded"
    classes = ", ".join(f"`{c}`" for c in loaded.classes)
    usage = written.usage.replace("{path}", str(path))
    notes = "".join(f"\n- {n}" for n in written.notes)
    notes = f"\n\nOf note:\n{notes}" if notes else ""
    data = (meta.get("data") or {}).get("spec", "?")
    code = (
        f"\n\n`trust_remote_code=True` runs `{written.code}`, the Python file in this "
        "folder (it imports only torch and transformers): read it before you run it. "
        "Why the folder needs its own code is the first note below."
        if written.code
        else ""
    )
    return f"""{_block(head)}

# {loaded.path.name}

A classifier fine-tuned by headstart from `{info["source"]}` ({weights}) with the
`{info["strategy"]}` strategy on `{data}` ({info["data_items"]} items, data
fingerprint `{info["data_fingerprint"]}`). {len(loaded.classes)} classes, in output
order: {classes}. {score}.

## How to load it

```python
{usage}```{code}

Exported from the run dir `{loaded.path}`. Loaded back with the code above before it
was kept, it gave the run's logits on a random batch to within {written.max_abs_diff:.2g}.{notes}
"""
