"""Linear probe: headstart's feature cache against the per-epoch loop and a plain loop.

One process, one data folder (digits drawn as PNGs), one model; in order:

- ``floor``: one forward pass of the backbone over every image (train + validation),
  decoding and preprocessing included: the least any linear probe can cost;
- ``headstart``: ``headstart fit DIR --source S --weights none --strategy linear
  [SETTINGS]`` with an empty feature cache (the features are computed in the run);
- ``headstart_warm``: the same command again (the features come from the cache);
- ``headstart_no_cache``: the same command with ``--no-feature-cache``;
- ``headstart_no_cache_light`` (with ``--with-light``): the same command with
  ``--no-feature-cache --augment light``, what the default was before ``--augment auto``
  (the head trains on freshly augmented images every epoch);
- ``plain``: a plain PyTorch loop with the backbone frozen (``no_grad`` forward every
  epoch, a Linear head, AdamW at ``--lr``, ``--epochs`` epochs of ``--batch-size``, the
  best epoch kept), the same split.  It runs once, after the first line's headstart
  runs, and both lines report it (``plain_settings``).

The headstart runs are made twice, one JSON line each (``settings``):

1. ``"defaults"``: no training flag, what a user gets: with the feature cache the head
   is solved on the cached features (L-BFGS, L2 by cross-validation: no epochs, batch or
   rate), without it (``headstart_no_cache``) the head trains for the budget sized from
   the data at the rate the range test picks; ``trained`` says what each came to.  Here
   ``speedup_vs_no_cache`` compares those two, i.e. what the cache gives a user;
2. ``"tuned: --lr 0.001 --epochs 20 --batch-size 32 --select best --no-solve-head"``:
   the setting this bench was written for, every run training the head by the same
   AdamW epochs (lr 1e-3 and keeping the best epoch were fit's defaults then), so the
   cached and uncached loops and the plain loop do the same work.

Prints one JSON line per settings: every competitor's seconds, validation accuracy and
peak memory, and the ratios.  Usage::

    PYTHONPATH=src .venv/bin/python bench/linear_probe.py [--epochs 20] [--settings defaults]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_settings_flag,
    digits_folder,
    fit_cached,
    measured,
    settings_label,
    split_indices,
    which_settings,
)


def _fit(
    data: Path,
    out: Path,
    cache: Path,
    args: argparse.Namespace,
    settings: dict[str, Any],
    *extra: str,
) -> dict[str, Any]:
    return fit_cached(data, out, cache, args, "linear", settings, *extra)


def _tuned(args: argparse.Namespace) -> dict[str, Any]:
    """The bench's own settings: AdamW epochs on the head, the best epoch kept."""
    return {
        "lr": args.lr,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "select": "best",
        "solve_head": False,
    }


def _plain(data: Path, args: argparse.Namespace) -> float:
    """What people write: ImageFolder, the model's transforms, a frozen backbone."""
    import timm
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision import transforms as T

    torch.manual_seed(0)
    backbone = timm.create_model(args.source.split(":", 1)[1], pretrained=False, num_classes=0)
    cfg = timm.data.resolve_data_config({}, model=backbone)
    size = cfg["input_size"][-1]
    tf = T.Compose(
        [
            T.Resize(int(size / cfg["crop_pct"])),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    ds = datasets.ImageFolder(str(data), transform=tf)
    train_idx, val_idx = split_indices(__import__("numpy").asarray(ds.targets))
    train = DataLoader(Subset(ds, train_idx.tolist()), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(Subset(ds, val_idx.tolist()), batch_size=128)
    backbone.eval().requires_grad_(False)
    head = nn.Linear(int(backbone.num_features), len(ds.classes))  # type: ignore[arg-type]
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
    acc = 0.0
    for _ in range(args.epochs):
        head.train()
        for x, y in train:
            with torch.no_grad():
                f = backbone(x)
            loss = nn.functional.cross_entropy(head(f), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((head(backbone(x)).argmax(1) == y).sum())
                n += len(y)
        acc = max(acc, correct / n)  # best epoch, as headstart keeps
    return acc


def _floor(data: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """One timed pass: decode, preprocess, forward; the model is built and warmed first."""
    import torch
    from torch.utils.data import DataLoader

    from headstart.data.images import load_data
    from headstart.data.transforms import ImageDataset, make_transform
    from headstart.sources import build_source

    source = build_source(args.source, weights="none")
    labelled = load_data(str(data), check_images=False)
    pre = source.preprocessing
    ds = ImageDataset(labelled, make_transform(pre, train=False), pre.channels)
    source.backbone.eval()
    with torch.inference_mode():
        source.backbone(torch.stack([ds[0][0], ds[1][0]]))  # warm-up, not timed
        n = 0
        with measured(result):
            for x, _ in DataLoader(ds, batch_size=128):
                source.backbone(x)
                n += len(x)
    result["images"] = n


def _headstart_runs(
    data: Path, root: Path, args: argparse.Namespace, settings: dict[str, Any], tag: str
) -> dict[str, dict[str, Any]]:
    """The headstart competitors with these training settings (none: the defaults)."""
    cached: dict[str, Any] = {}
    with measured(cached):
        cached.update(_fit(data, root / f"{tag}-a", root / f"{tag}-cache", args, settings))
    warm: dict[str, Any] = {}
    with measured(warm):
        warm.update(_fit(data, root / f"{tag}-b", root / f"{tag}-cache", args, settings))
    nocache: dict[str, Any] = {}
    with measured(nocache):
        nocache.update(
            _fit(
                data,
                root / f"{tag}-c",
                root / f"{tag}-cache2",
                args,
                settings,
                "--no-feature-cache",
            )
        )
    light: dict[str, Any] = {}
    if args.with_light:
        with measured(light):
            light.update(
                _fit(
                    data,
                    root / f"{tag}-d",
                    root / f"{tag}-cache3",
                    argparse.Namespace(**{**vars(args), "augment": "light"}),
                    settings,
                    "--no-feature-cache",
                )
            )
    return {"cached": cached, "warm": warm, "nocache": nocache, "light": light}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="tuned, and the plain loop's")
    parser.add_argument("--per-class", type=int, default=30, help="images per digit (10 digits)")
    parser.add_argument("--source", default="timm:resnet18")
    parser.add_argument("--batch-size", type=int, default=32, help="tuned, and the plain loop's")
    parser.add_argument("--lr", type=float, default=1e-3, help="tuned, and the plain loop's")
    parser.add_argument("--augment", default="auto", help="headstart's --augment")
    parser.add_argument(
        "--with-light",
        action="store_true",
        help="also --no-feature-cache --augment light (what augmenting costs the probe)",
    )
    parser.add_argument("--skip-plain", action="store_true")
    add_settings_flag(parser)
    args = parser.parse_args()
    runs = which_settings(args.settings)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = digits_folder(root / "digits", per_class=args.per_class)
        images = sum(1 for _ in data.rglob("*.png"))
        floor: dict[str, Any] = {}
        _floor(data, args, floor)
        plain: dict[str, Any] = {}
        for i, run in enumerate(runs):
            settings = {} if run == "defaults" else _tuned(args)
            got = _headstart_runs(data, root, args, settings, run)
            if i == 0 and not args.skip_plain:
                with measured(plain):
                    plain["val_acc"] = _plain(data, args)
            cached, warm, nocache, light = got["cached"], got["warm"], got["nocache"], got["light"]
            results: dict[str, Any] = {
                "bench": "linear_probe",
                "settings": settings_label(settings),
                "source": args.source,
                "epochs": settings.get("epochs", "auto"),
                "batch_size": settings.get("batch_size", "auto"),
                "augment": args.augment,
                "torch_threads": torch.get_num_threads(),
                "images": images,
                "floor": floor,
                "headstart": cached,
                "headstart_warm": warm,
                "headstart_no_cache": nocache,
                "headstart_no_cache_light": light,
                "plain": plain,
                "plain_settings": (
                    f"AdamW lr {args.lr:g}, {args.epochs} epochs, batch {args.batch_size}, "
                    "best epoch"
                ),
                "speedup_vs_no_cache": round(nocache["seconds"] / cached["seconds"], 2),
                "speedup_vs_plain": round(plain["seconds"] / cached["seconds"], 2)
                if plain
                else None,
                "acc_diff_points_vs_no_cache": round(
                    100 * (cached["val_acc"] - nocache["val_acc"]), 2
                ),
                "acc_diff_points_light_vs_none": round(
                    100 * (light["val_acc"] - nocache["val_acc"]), 2
                )
                if light
                else None,
                "acc_diff_points_vs_plain": round(100 * (cached["val_acc"] - plain["val_acc"]), 2)
                if plain
                else None,
                "time_over_floor": round(cached["seconds"] / floor["seconds"], 2),
                "cpu_time_over_floor": round(cached["cpu_seconds"] / floor["cpu_seconds"], 2),
                "warm_time_over_floor": round(warm["seconds"] / floor["seconds"], 2),
                "cpu_speedup_vs_no_cache": round(nocache["cpu_seconds"] / cached["cpu_seconds"], 2),
            }
            print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
