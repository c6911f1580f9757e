"""Full fine-tuning: headstart against a plain PyTorch loop and fastai's ``fine_tune``.

Two JSON lines (``settings``).  First ``"defaults"``: ``headstart fit DIR --source
timm:resnet18 --weights none --strategy full --image-size S`` alone, no training flag
(the budget sized from the data, the rate by the range test, the backbone at its
default x0.1 rate, no head-only epochs): what a user gets, its seconds, accuracy and
what the training came to (``trained``).  The other two have no defaults of
headstart's to run, and the work differs, so that line has no ratios.  Then
``"tuned: --lr 0.001 --select best --backbone-lr-mult 1 --epochs E --head-epochs H
--batch-size B"``, the comparison this bench was written for (lr 1e-3 and the best
epoch were fit's defaults then, and are the others' rate and choice).

One process, the same data folder (digits drawn as PNGs), the same architecture
(timm resnet18, random initialisation: nothing is downloaded), the same input size,
split, number of passes over the data, batch size and shape of training: H passes
with the body frozen (only the new head trains), then E - H passes training everything,
every layer at one learning rate (a random body has nothing to protect: see
bench/README.md):

- ``headstart``: ``headstart fit DIR --source timm:resnet18 --weights none --strategy full
  --image-size S`` with the tuned flags above (its default light augmentation, run dir,
  checkpoint each epoch, plots and report included);
- ``plain``: ImageFolder, the same kind of light augmentation, AdamW at 1e-3, H epochs
  with the body frozen (``requires_grad_(False)``, eval mode), then E - H epochs of all;
- ``fastai``: ``vision_learner(dls, "resnet18", pretrained=False)`` and
  ``fine_tune(E - H, freeze_epochs=H, base_lr=2e-3, lr_mult=1)`` (its one-cycle schedule;
  the unfrozen passes at 2e-3 / 2 = 1e-3 for every layer), on the same split
  (``IndexSplitter``).  fastai is not a headstart dependency: put it on ``PYTHONPATH``
  (see bench/README.md); without it this part is reported as skipped.

``--image-size`` (64: the digits are drawn at 32x32) is the same in both lines: the
input, not a training setting; resnet18's own 224 would cost ~12x the compute for the
same pixels.

Everything each competitor imports is imported before any clock starts (matplotlib,
fastai, headstart's modules), so that no competitor pays for another's imports.  With
``--repeats R`` the competitors run R rounds in rotating order and the medians count.

Prints one JSON line per settings: seconds, CPU seconds, validation accuracy and peak
memory of each, and (tuned) headstart's time ratio against each.  Usage::

    PYTHONPATH=src:/tmp/fastai-pkgs .venv/bin/python bench/finetune.py --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_settings_flag,
    digits_folder,
    flags,
    headstart_json,
    measured,
    settings_label,
    split_indices,
    trained_with,
    which_settings,
)


def _tuned(args: argparse.Namespace) -> dict[str, Any]:
    """The bench's own settings: the others' shape of training, every layer at 1e-3."""
    return {
        "lr": 1e-3,
        "select": "best",
        "backbone_lr_mult": 1,
        "epochs": args.epochs,
        "head_epochs": args.head_epochs,
        "batch_size": args.batch_size,
    }


def _headstart(
    data: Path, out: Path, args: argparse.Namespace, settings: dict[str, Any]
) -> dict[str, Any]:
    argv = [
        "fit", str(data), "--source", "timm:resnet18", "--weights", "none",
        "--strategy", "full", "--image-size", str(args.image_size), *flags(settings),
        "--cache-dir", str(out.parent / "cache"), "--out", str(out), "--json", "-q",
    ]  # fmt: skip
    val_acc = float(headstart_json(argv)["metrics"]["val_acc"])
    meta = json.loads((out / "headstart.json").read_text())
    return {"val_acc": val_acc, "trained": trained_with(meta)}


def _plain(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import timm
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision import transforms as T

    torch.manual_seed(0)
    size = args.image_size
    norm = [T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0)), *norm])
    val_tf = T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), *norm])
    train_ds = datasets.ImageFolder(str(data), transform=train_tf)
    val_ds = datasets.ImageFolder(str(data), transform=val_tf)
    train_idx, val_idx = split_indices(np.asarray(train_ds.targets))
    train = DataLoader(
        Subset(train_ds, train_idx.tolist()), batch_size=args.batch_size, shuffle=True
    )
    val = DataLoader(Subset(val_ds, val_idx.tolist()), batch_size=128)
    model = timm.create_model("resnet18", pretrained=False, num_classes=len(train_ds.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    head = model.get_classifier()
    body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    best = 0.0
    for epoch in range(args.epochs):
        frozen = epoch < args.head_epochs  # the first H epochs train only the new head
        for p in body:
            p.requires_grad_(not frozen)
        if frozen:
            model.eval()
            head.train()
        else:
            model.train()
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
                n += len(y)
        best = max(best, correct / n)
    return {"val_acc": best}


def _fastai(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from fastai.vision.all import (  # type: ignore[import-not-found]
        CategoryBlock,
        DataBlock,
        ImageBlock,
        IndexSplitter,
        Resize,
        accuracy,
        aug_transforms,
        parent_label,
        vision_learner,
    )

    torch.manual_seed(0)
    files = sorted(data.rglob("*.png"))
    targets = np.asarray([int(p.parent.name[1:]) for p in files])
    _, val_idx = split_indices(targets)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=lambda _: files,
        splitter=IndexSplitter(val_idx.tolist()),
        get_y=parent_label,
        item_tfms=Resize(args.image_size),
        batch_tfms=aug_transforms(do_flip=False, max_rotate=0.0, max_warp=0.0),
    )
    dls = block.dataloaders(data, bs=args.batch_size, num_workers=0, device="cpu")
    learn = vision_learner(dls, "resnet18", pretrained=False, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(
            args.epochs - args.head_epochs,
            freeze_epochs=args.head_epochs,
            base_lr=2e-3,
            lr_mult=1,
        )
    accs = [float(row[2]) for row in learn.recorder.values]
    return {"val_acc": max(accs)}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each measure over the rounds, and every round as measured."""
    out: dict[str, Any] = {
        k: statistics.median(r[k] for r in runs)
        for k in ("seconds", "cpu_seconds", "peak_rss_mb", "peak_rss_added_mb", "val_acc")
    }
    out["rounds"] = runs
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    return round(a[key] / b[key], 2) if key in a and key in b else None


def _rounds(
    competitors: dict[str, Any], data: Path, root: Path, repeats: int, tag: str
) -> dict[str, list[dict[str, Any]]]:
    """``repeats`` rounds of every competitor, in rotating order."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in competitors}
    names = list(competitors)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            work = root / f"{tag}-{name}-{round_}"
            work.mkdir()
            measure: dict[str, Any] = {"round": round_}
            with measured(measure):
                measure.update(competitors[name](data, work))
            runs[name].append(measure)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data in all (tuned)")
    parser.add_argument(
        "--head-epochs",
        type=int,
        default=1,
        help="of which the first ones train only the head (tuned)",
    )
    parser.add_argument("--per-class", type=int, default=30, help="images per digit (10 digits)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="tuned")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, in rotating order")
    add_settings_flag(parser)
    args = parser.parse_args()
    if not 1 <= args.head_epochs < args.epochs:
        parser.error("--head-epochs must be >= 1 and < --epochs (fastai's fine_tune)")
    runs = which_settings(args.settings)

    # Every import before any clock starts: no competitor pays for another's.
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import timm
    import torchvision  # noqa: F401

    try:
        import fastai.vision.all  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:
        skipped = f"fastai not importable ({exc})"
    else:
        skipped = ""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = digits_folder(root / "digits", per_class=args.per_class)
        images = sum(1 for _ in data.rglob("*.png"))
        # warm up the thread pool and kernels once, for whoever goes first
        warm = timm.create_model("resnet18", pretrained=False, num_classes=10)
        warm(torch.randn(4, 3, args.image_size, args.image_size)).sum().backward()
        del warm
        for run in runs:
            settings = _tuned(args) if run == "tuned" else {}
            competitors: dict[str, Any] = {
                "headstart": lambda d, r, s=settings: _headstart(d, r / "run", args, s)
            }
            if run == "tuned":
                competitors["plain"] = lambda d, r: _plain(d, args)
                if not skipped:
                    competitors["fastai"] = lambda d, r: _fastai(d, args)
            summary = {
                name: _median(r)
                for name, r in _rounds(competitors, data, root, args.repeats, run).items()
            }
            hs = summary["headstart"]
            alone = "defaults: headstart alone (the others run with the tuned settings)"
            plain = summary.get("plain", {"skipped": alone})
            fa = summary.get("fastai", {"skipped": skipped or alone})
            results: dict[str, Any] = {
                "bench": "finetune",
                "settings": settings_label(settings),
                "model": "timm:resnet18 (random init)",
                "epochs": settings.get("epochs", "auto"),
                "head_epochs": settings.get("head_epochs", 0),
                "image_size": args.image_size,
                "batch_size": settings.get("batch_size", "auto"),
                "repeats": args.repeats,
                "torch_threads": torch.get_num_threads(),
                "images": images,
                "headstart": hs,
                "plain": plain,
                "fastai": fa,
                "time_ratio_vs_plain": _ratio(hs, plain, "seconds"),
                "cpu_ratio_vs_plain": _ratio(hs, plain, "cpu_seconds"),
                "time_ratio_vs_fastai": _ratio(hs, fa, "seconds"),
                "cpu_ratio_vs_fastai": _ratio(hs, fa, "cpu_seconds"),
            }
            print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
