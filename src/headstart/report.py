"""Plots and the short markdown report a run dir carries."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import atomic_path, atomic_write_text

__all__ = ["plot_confusion", "plot_curves", "write_report_md"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; files only
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: Sequence[dict[str, Any]], dest: Path, *, title: str) -> None:
    """Loss and accuracy per epoch (train and validation) as one PNG."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], marker="o", label="train")
    if any(r.get("val_acc") is not None for r in rows):
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation")
        ax_acc.plot(epochs, [r["val_acc"] for r in rows], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], dest: Path, *, title: str) -> None:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = _pyplot()
    n = len(classes)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set(xlabel="predicted", ylabel="true")
    # Data specs can be long (builtin:digits?classes=...): wrap rather than cut off.
    ax.set_title(textwrap.fill(title, width=int(8 * size)), fontsize=9)
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if top and matrix[i, j] > top / 2 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_report_md(meta: dict[str, Any], rows: Sequence[dict[str, Any]], dest: Path) -> None:
    """A short human report: what was trained on what, the plan, and the results."""
    src, plan, metrics = meta["source"], meta["plan"], meta["metrics"]
    data = meta["data"]
    lines = [
        f"# headstart {meta['kind']}: {src['spec']} on {data['train']['spec']}",
        "",
        "## Source",
        f"- architecture: `{src['arch']}` ({src['parameters']:,} backbone parameters, "
        f"{src['feature_dim']}-d features)",
        f"- weights: {src['weights']['description']}",
        f"- stages: {', '.join(src['stages'])}",
        f"- input: {tuple(meta['preprocessing']['input_size'])}, "
        f"mean {meta['preprocessing']['mean']}, std {meta['preprocessing']['std']}",
        "",
        "## Plan",
        f"- strategy: `{plan['strategy']}`"
        + (" (random initialisation)" if plan["reinitialise"] else ""),
        f"- frozen: {', '.join(plan['frozen_stages']) or 'nothing'}",
        f"- trains: {', '.join(plan['trainable_stages']) or 'head only'}"
        + (f" at lr {plan['backbone_lr']:g}" if plan["trainable_stages"] else ""),
        f"- head: new Linear({src['feature_dim']}, {len(meta['classes'])}) at lr "
        f"{plan['head_lr']:g}",
        f"- BatchNorm: {plan['bn_mode']}",
        "",
        "## Data",
        f"- classes ({len(meta['classes'])}): {', '.join(meta['classes'])}",
        f"- train: {data['train']['n_items']} items; validation: "
        f"{data['val']['n_items'] if data.get('val') else 0} items",
        f"- fingerprint: `{data['train']['fingerprint'][:16]}`",
        "",
        "## Result",
        f"- selected epoch: {metrics['best_epoch']} of {len(rows)} ({meta['config']['select']})",
        f"- validation accuracy: {_fmt(metrics.get('val_acc'))}, macro-F1: "
        f"{_fmt(metrics.get('val_f1'))}",
        f"- time: {meta['timings']['train_s']:.1f} s training, "
        f"{meta['timings']['total_s']:.1f} s in all",
        "",
        "![curves](curves.png)",
        "",
        "| epoch | train loss | train acc | val loss | val acc | val F1 | s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['epoch']} | {_fmt(r['train_loss'])} | {_fmt(r['train_acc'])} | "
            f"{_fmt(r['val_loss'])} | {_fmt(r['val_acc'])} | {_fmt(r['val_f1'])} | "
            f"{r['seconds']:.1f} |"
        )
    atomic_write_text(dest, "\n".join(lines) + "\n")
