"""Full fine-tuning: headstart against a plain PyTorch loop and fastai's ``fine_tune``.

One process, the same data folder (digits drawn as PNGs), the same architecture
(timm resnet18, random initialisation: nothing is downloaded), the same input size,
split, number of passes over the data and batch size:

- ``headstart``: ``headstart fit DIR --source timm:resnet18 --weights none --strategy full
  --epochs E --image-size S --batch-size B`` (its default light augmentation);
- ``plain``: ImageFolder, the same kind of light augmentation, AdamW, E epochs;
- ``fastai``: ``vision_learner(dls, "resnet18", pretrained=False)`` and
  ``fine_tune(E - 1, freeze_epochs=1)``, i.e. E passes in all (one with the body frozen,
  as fastai does), on the same split (``IndexSplitter``).  fastai is not a headstart
  dependency: put it on ``PYTHONPATH`` (see bench/README.md); without it this part is
  reported as skipped.

Prints one JSON line: seconds, CPU seconds, best validation accuracy and peak memory of
each, and headstart's time ratio against each.  Usage::

    PYTHONPATH=src:/tmp/fastai-pkgs .venv/bin/python bench/finetune.py --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import digits_folder, headstart_json, measured, split_indices


def _headstart(data: Path, out: Path, args: argparse.Namespace) -> float:

    argv = [
        "fit",
        str(data),
        "--source",
        "timm:resnet18",
        "--weights",
        "none",
        "--strategy",
        "full",
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--cache-dir",
        str(out.parent / "cache"),
        "--out",
        str(out),
        "--json",
        "-q",
    ]
    return float(headstart_json(argv)["metrics"]["val_acc"])


def _plain(data: Path, args: argparse.Namespace) -> float:
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
    best = 0.0
    for _ in range(args.epochs):
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
    return best


def _fastai(data: Path, args: argparse.Namespace) -> float:
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
        learn.fine_tune(args.epochs - 1, freeze_epochs=1)
    accs = [float(row[2]) for row in learn.recorder.values]
    return max(accs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=30, help="images per digit (10 digits)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (fastai's fine_tune: 1 frozen + E-1)")

    import torch

    results: dict[str, Any] = {
        "bench": "finetune",
        "model": "timm:resnet18 (random init)",
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = digits_folder(root / "digits", per_class=args.per_class)
        results["images"] = sum(1 for _ in data.rglob("*.png"))
        # warm up the thread pool and kernels once, for whoever goes first
        import timm

        warm = timm.create_model("resnet18", pretrained=False, num_classes=10)
        warm(torch.randn(4, 3, args.image_size, args.image_size)).sum().backward()
        del warm
        hs: dict[str, Any] = {}
        with measured(hs):
            hs["val_acc"] = _headstart(data, root / "run", args)
        plain: dict[str, Any] = {}
        with measured(plain):
            plain["val_acc"] = _plain(data, args)
        fa: dict[str, Any] = {}
        try:
            import fastai  # type: ignore[import-not-found]  # noqa: F401
        except ImportError as exc:
            fa = {"skipped": f"fastai not importable ({exc})"}
        else:
            with measured(fa):
                fa["val_acc"] = _fastai(data, args)
    results.update(
        headstart=hs,
        plain=plain,
        fastai=fa,
        time_ratio_vs_plain=round(hs["seconds"] / plain["seconds"], 2),
        cpu_ratio_vs_plain=round(hs["cpu_seconds"] / plain["cpu_seconds"], 2),
        time_ratio_vs_fastai=round(hs["seconds"] / fa["seconds"], 2) if "seconds" in fa else None,
        cpu_ratio_vs_fastai=round(hs["cpu_seconds"] / fa["cpu_seconds"], 2)
        if "seconds" in fa
        else None,
    )
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
