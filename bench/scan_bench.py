"""Pre-scan speed: decoding every image serially, with a thread pool, with a process pool.

Writes ``--n`` photo-like images (JPEG and PNG, ``--size`` pixels on the long side) to a
temporary folder, then times :func:`headstart.data.scan.scan_images` each way, side by side in
one process, ``--repeats`` rounds in rotating order, cache off.  Prints one JSON object:
the median seconds of each way, the ratios against serial, and how many cores each way
kept busy (CPU seconds per wall second; a thread pool above 1 shows Pillow's decoders
releasing the GIL).  On a machine other jobs load, the wall-clock ratios say little:
read ``load_average_1min`` first.

Nothing trains here, so there are no training settings to default or to tune: ``--n``,
``--size``, ``--workers`` and ``--repeats`` describe the work timed, and are the same for
every way.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/scan_bench.py --n 300 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from headstart.data.scan import scan_images


def _write_images(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        # smooth noise compresses like a photo, not like white noise
        small = rng.integers(0, 256, (size // 16, size * 3 // 64, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size * 3 // 4, size), Image.BICUBIC)
        img = img.filter(ImageFilter.GaussianBlur(1))
        path = folder / (f"{i:04d}.jpg" if i % 4 else f"{i:04d}.png")
        img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)
        paths.append(path)
    return paths


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the process pool's)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ways = {
        "serial": {"workers": 1},
        "thread": {"workers": args.workers, "executor": "thread"},
        "process": {"workers": args.workers, "executor": "process"},
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_images(Path(tmp), args.n, args.size)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        reference = None
        for r in range(args.repeats):
            names = list(ways)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                t0, c0 = time.perf_counter(), _cpu()
                checks = scan_images(paths, cache=False, **ways[name])  # type: ignore[arg-type]
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(_cpu() - c0)
                assert all(c.ok for c in checks)
                reference = reference or checks
                assert checks == reference
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        json.dumps(
            {
                "images": args.n,
                "megabytes": round(mb, 1),
                "size": f"{args.size * 3 // 4}x{args.size}",
                "workers": args.workers,
                "cpus": len(os.sched_getaffinity(0)),
                "load_average_1min": round(os.getloadavg()[0], 1),
                "median_s": {k: round(v, 3) for k, v in median.items()},
                # CPU seconds per wall second: above 1 means the work really ran in parallel
                "cores_busy": {k: round(statistics.median(cpu[k]) / median[k], 2) for k in median},
                "images_per_s": {k: round(args.n / v, 1) for k, v in median.items()},
                "speedup_vs_serial": {k: round(median["serial"] / v, 2) for k, v in median.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
