"""What every benchmark shares: the data, a clock, a peak-memory meter, and the
training settings each run is labelled with.

Every bench that trains runs headstart's defaults first (no --lr, --epochs,
--batch-size, --select: what a user gets, ``"settings": "defaults"``), then the settings
it was written with (``"settings": "tuned: --lr ... --epochs ..."``).  A setting that
is the very thing a bench measures stays fixed in both, and its docstring says why.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def digits_folder(root: Path, *, per_class: int = 30, size: int = 32) -> Path:
    """One sub-folder per digit 0-9 of RGB PNGs drawn from scikit-learn's 8x8 digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for d in range(10):
        folder = root / f"d{d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(bunch.target == d)[:per_class]):
            gray = (bunch.images[idx] * (255.0 / 16.0)).astype(np.uint8)
            img = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR)
            rgb = Image.merge("RGB", (img, img.point(lambda v: 255 - v), img))
            rgb.save(folder / f"{d}_{i:03d}.png")
    return root


def _status(field: str) -> int:
    """A /proc/self/status field in kB (Linux)."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else -1


@contextmanager
def measured(result: dict[str, Any]) -> Iterator[None]:
    """Wall time, CPU time (all threads) and peak resident memory of the block.

    On a shared machine CPU time is the steadier of the two clocks.

    Peak memory is the kernel's high-water mark of this process's resident set (VmHWM),
    reset before the block through /proc/self/clear_refs; ``peak_rss_mb`` is that peak,
    ``peak_rss_added_mb`` the peak minus the resident set at the start of the block.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        resettable = True
    except OSError:
        resettable = False
    start_rss = _status("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        result["seconds"] = round(time.perf_counter() - t0, 3)
        result["cpu_seconds"] = round(time.process_time() - c0, 3)
        peak = _status("VmHWM")
        result["peak_rss_mb"] = round(peak / 1024, 1)
        result["peak_rss_added_mb"] = round((peak - start_rss) / 1024, 1)
        if not resettable:
            result["peak_rss_note"] = "VmHWM could not be reset: process-wide peak"
        print(f"# {json.dumps(result)}", file=sys.stderr, flush=True)


def split_indices(targets: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """headstart's own stratified 80/20 split, so every competitor has the same halves."""
    from headstart.data.labelled import stratified_split

    classes = [str(c) for c in range(int(targets.max()) + 1)]
    train_idx, val_idx = stratified_split(targets, val_fraction=0.2, seed=seed, classes=classes)
    return np.asarray(train_idx), np.asarray(val_idx)


def headstart_json(argv: list[str]) -> dict[str, Any]:
    """Run ``headstart ARGV --json`` in this process and return its JSON object."""
    from headstart.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"headstart failed ({code}): {' '.join(argv)}")
    return dict(json.loads(buf.getvalue()))


DEFAULTS = "defaults"
SETTINGS_CHOICES = ("defaults", "tuned")


def flags(settings: Mapping[str, Any]) -> list[str]:
    """headstart's flags for fit option values, in order:
    ``{"lr": 0.01, "solve_head": False}`` -> ``["--lr", "0.01", "--no-solve-head"]``."""
    out: list[str] = []
    for name, value in settings.items():
        flag = name.replace("_", "-")
        if value is True:
            out.append(f"--{flag}")
        elif value is False:
            out.append(f"--no-{flag}")
        else:
            out += [f"--{flag}", f"{value:g}" if isinstance(value, float) else str(value)]
    return out


def settings_label(settings: Mapping[str, Any], kind: str = "tuned") -> str:
    """``"defaults"`` for no settings, else ``"KIND: --flag value ..."``."""
    return f"{kind}: {' '.join(flags(settings))}" if settings else DEFAULTS


def add_settings_flag(parser: Any) -> None:
    """``--settings defaults,tuned``: which runs to make (both by default, defaults first)."""
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS_CHOICES),
        help="comma-separated: defaults (no training flags: what a user gets), tuned (the "
        "bench's own settings); both by default, defaults first",
    )


def which_settings(text: str) -> list[str]:
    """The runs ``--settings`` asks for, in the order defaults, tuned."""
    asked = {s.strip() for s in text.split(",") if s.strip()}
    unknown = asked - set(SETTINGS_CHOICES)
    if unknown or not asked:
        raise SystemExit(f"--settings: {text!r}; choose from {','.join(SETTINGS_CHOICES)}")
    return [s for s in SETTINGS_CHOICES if s in asked]


def trained_with(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a fit's training came to, from its ``headstart.json``: the budget (batch size,
    epochs, optimizer steps, the epoch kept), the rate the range test picked, or the
    solved head's L2 strength: what "defaults" resolved to on this data."""
    out: dict[str, Any] = {}
    budget = meta.get("budget")
    if budget:
        out.update({k: budget[k] for k in ("batch_size", "epochs", "steps", "select")})
    if meta.get("lr_find"):
        out["lr"] = float(f"{meta['lr_find']['lr']:.3g}")
    if meta.get("head_solver"):
        out["head"] = "solved"
        out["c"] = meta["head_solver"]["c"]
    return out


def fit_cached(
    data: Path,
    out: Path,
    cache: Path,
    args: Any,
    strategy: str,
    settings: Mapping[str, Any],
    *extra: str,
) -> dict[str, Any]:
    """``headstart fit`` of ``args.source`` (random weights) with the bench's augmentation
    and image size, the training ``settings`` (none: headstart's defaults) and its feature
    cache in ``cache``: the validation accuracy, ``headstart.json``'s ``feature_cache``
    record and what the training came to (:func:`trained_with`)."""
    size = getattr(args, "image_size", None)
    argv = [
        "fit", str(data), "--source", args.source, "--weights", "none",
        "--strategy", strategy, *flags(settings), "--augment", args.augment,
        "--cache-dir", str(cache), "--out", str(out), "--json", "-q",
        *([] if size is None else ["--image-size", str(size)]),
        *extra,
    ]  # fmt: skip
    summary = headstart_json(argv)
    meta = json.loads((out / "headstart.json").read_text())
    return {
        "val_acc": summary["metrics"]["val_acc"],
        "feature_cache": meta["feature_cache"],
        "trained": trained_with(meta),
    }
