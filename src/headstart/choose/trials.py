"""Independent trials on Optuna: each trial one point of a fixed grid (for ``compare``, one
strategy on one fold), run by worker processes on this machine and on others that share
the study's storage.

Why Optuna: a study in a database is a queue that several processes and machines share
without a coordinator (a journal file on one machine, PostgreSQL or MySQL for many,
with heartbeats that mark a dead worker's trial failed).  Each grid point is put in the study's
queue (``enqueue_trial``) by the first worker that finds it missing; workers pop trials
(``study.optimize``) until the queue is empty.  Two machines that enqueue the same point
at once cost nothing: of two trials of one point, the later one sees the earlier one and
steps aside (pruned) without training.  A trial records what it computed as its user
attributes; the caller gets them back by point, in the grid's own order, whoever ran each
trial and in whatever order they finished.  A study's finished trials are kept: the same
command run again (after a crash, a failed trial) trains only what is missing.

Nothing here depends on the order the trials run in: each trial is a function of its grid
point alone (the caller seeds it from the point), and the results come back by point.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headstart import errors as errors_module
from headstart.errors import ConfigError, HeadstartError

__all__ = ["Grid", "Study", "run_trials"]

log = logging.getLogger(__name__)

# A trial's heartbeat: a worker that stops beating for GRACE_S (killed, its machine gone)
# has its trial marked failed, and the next worker to start a trial runs that point again.
HEARTBEAT_S = 30
GRACE_S = 120
POLL_S = 2.0
JOURNAL = "journal:"

# What one trial computes: its grid point -> JSON-able attributes, ``value`` among them.
RunTrial = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Grid:
    """The points the trials cover, each a dict of parameters, in the caller's order."""

    points: list[dict[str, Any]]

    def key(self, point: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted(point.items()))

    def choices(self) -> dict[str, list[Any]]:
        """Each parameter's values, in the order they first appear."""
        names = list(self.points[0]) if self.points else []
        return {n: list(dict.fromkeys(p[n] for p in self.points)) for n in names}


@dataclass(frozen=True)
class Study:
    """Where the trials live: ``storage`` (a database URL), the study's ``name`` in it, and
    ``recipe``: what the trials compute (options, data fingerprint), the same on every
    machine that joins, checked when it does."""

    name: str
    storage: str
    grid: Grid
    recipe: dict[str, Any]
    # the storage is this command's alone (the default, in its --out): a trial it finds
    # running was left so by a run that stopped
    owned: bool = False


def _storage(url: str) -> Any:
    """``journal:PATH``: Optuna's journal file (several processes on one machine append to
    it under a file lock); any other URL: a database (SQLAlchemy's URL), with heartbeats."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith(JOURNAL):
        return JournalStorage(JournalFileBackend(url[len(JOURNAL) :]))
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" (Optuna 2.9)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (IntegrityError, ProgrammingError):
            # machines that start together on a new database race to make its tables:
            # the losers find them made a moment later
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def _sampler() -> Any:
    import optuna

    # never asked while the queue holds a trial; a worker that finds it empty stops
    return optuna.samplers.RandomSampler(seed=0)


def _open(study: Study) -> Any:
    """The study, made by the first process that asks; refused when it was made for other
    trials than these."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "--trials-in-parallel and --storage run trials on Optuna: pip install "
            "'headstart[trials]' (Optuna; psycopg for postgresql+psycopg:// storages)"
        ) from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opened = optuna.create_study(
        study_name=study.name,
        storage=_storage(study.storage),
        sampler=_sampler(),
        direction="maximize",
        load_if_exists=True,
    )
    if study.owned:
        _fail_left_running(opened)
    recorded = opened.user_attrs.get("recipe")
    if recorded is None:
        opened.set_user_attr("recipe", study.recipe)
    elif recorded != study.recipe:
        raise ConfigError(
            f"--study {study.name} in --storage {_shown(study.storage)} was made for other "
            "options or data; use the same command as the machines that share it, or "
            "another --study"
        )
    return opened


def _fail_left_running(opened: Any) -> None:
    """Mark failed the trials a stopped run left running (the queue runs them again)."""
    from optuna.trial import TrialState

    storage = opened._storage
    study_id = storage.get_study_id_from_name(opened.study_name)
    for t in opened.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _shown(url: str) -> str:
    """``url`` without its password."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    user = head.rsplit(":", 1)[0]
    return f"{user}:***@{tail}"


def run_trials(study: Study, setup: Callable[[], RunTrial], *, workers: int) -> list[Any]:
    """Run the study's trials: in this process (``workers == 1``) or in ``workers``
    processes, each of which calls ``setup()`` once (load the data) and runs trials until
    the grid is done; then wait for those other machines still run; the grid's points'
    results (user attributes), in :meth:`Grid.points` order."""
    if workers > 1 and study.storage.startswith("sqlite"):
        raise ConfigError(
            f"--storage {study.storage} with --trials-in-parallel {workers}: processes that "
            "share a SQLite file can take the same trial (Optuna's SQLite storage is for one "
            "worker); leave --storage out (a journal file in --out) or use PostgreSQL"
        )
    _open(study)
    if workers == 1:
        _work(study, setup, threads=None, level=None)
    else:
        _start_workers(study, setup, workers)
    return _results(study)


def _start_workers(study: Study, setup: Callable[[], RunTrial], workers: int) -> None:
    """``workers`` workers, each running trials with its share of the cores: this process
    and ``workers - 1`` spawned ones (spawned: torch is not fork-safe; this process has
    torch and the data already, a new one pays seconds for them); one that fails stops
    the others."""
    from multiprocessing.connection import wait

    import torch

    context = multiprocessing.get_context("spawn")
    # each trial's own thread count: as many threads as one worker alone would take
    # when the caller fixed it (OMP_NUM_THREADS), else the cores shared out
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // workers))
    level = logging.getLogger("headstart").getEffectiveLevel()
    procs = [
        context.Process(
            target=_work, args=(study, setup), kwargs=dict(threads=threads, level=level)
        )
        for _ in range(workers - 1)
    ]
    log.info("%d workers run the trials of study %s", workers, study.name)
    for p in procs:
        p.start()
    own = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _work(study, setup, threads=None, level=None)  # this process is a worker too
    except BaseException:
        for p in procs:
            p.terminate()
            p.join()
        raise
    finally:
        torch.set_num_threads(own)
    try:
        running = list(procs)
        while running:
            wait([p.sentinel for p in running])
            for p in [p for p in running if p.exitcode is not None]:
                running.remove(p)
                if p.exitcode != 0:
                    raise _failure(study) or HeadstartError(
                        f"a trial worker stopped (exit code {p.exitcode})"
                    )
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


def _work(
    study: Study, setup: Callable[[], RunTrial], *, threads: int | None, level: int | None
) -> None:
    """One worker: put the missing points in the queue, take trials until it is empty;
    again until no point is missing (another worker's trial may have died meanwhile)."""
    import optuna

    if level is not None:  # a spawned worker: log as the command does
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger("headstart")
        root.handlers[:] = [handler]
        root.setLevel(level)
        root.propagate = False
    # a trial's failure is the command's to report, once and in one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    run = setup()
    opened = optuna.load_study(
        study_name=study.name, storage=_storage(study.storage), sampler=_sampler()
    )
    choices = study.grid.choices()

    def objective(trial: Any) -> float:
        trials = opened.get_trials(deepcopy=False)
        this = next(t for t in trials if t.number == trial.number)
        if "fixed_params" not in this.system_attrs:  # the queue was empty: nothing to do
            trial.study.stop()
            raise optuna.TrialPruned("no trial left")
        point = {name: trial.suggest_categorical(name, v) for name, v in choices.items()}
        if _taken(trials, study.grid, point, trial.number):
            raise optuna.TrialPruned("run by another worker")
        try:
            attrs = run(point)
        except HeadstartError as exc:
            trial.set_user_attr("error", [type(exc).__name__, str(exc)])
            raise
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        return float(attrs["value"])

    def stop_when_empty(s: Any, _: Any) -> None:
        if not s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            s.stop()

    try:
        while _enqueue_missing(opened, study.grid):
            opened.optimize(objective, n_trials=len(study.grid.points), callbacks=[stop_when_empty])
    except HeadstartError:
        if level is None:  # in the command's own process: it reports the error
            raise
        # a spawned worker: the trial holds the error, which the parent says in one line
        # (no traceback from multiprocessing for a bad input)
        sys.exit(1)


def _enqueue_missing(opened: Any, grid: Grid) -> bool:
    """Queue every point that no trial has finished, runs or waits to run; whether any
    point waits now."""
    from optuna.trial import TrialState

    held = {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}
    trials = opened.get_trials(deepcopy=False)
    have = {
        grid.key(t.params or t.system_attrs.get("fixed_params", {}))
        for t in trials
        if t.state in held
    }
    for point in grid.points:
        if grid.key(point) not in have:
            opened.enqueue_trial(point, skip_if_exists=False)
    return bool(opened.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _taken(trials: list[Any], grid: Grid, point: dict[str, Any], number: int) -> bool:
    """Whether an earlier trial of ``point`` has finished it or runs it now (of two trials
    of one point, the later steps aside)."""
    from optuna.trial import TrialState

    key = grid.key(point)
    return any(
        t.number < number
        and t.state in (TrialState.COMPLETE, TrialState.RUNNING)
        and grid.key(t.params or t.system_attrs.get("fixed_params", {})) == key
        for t in trials
    )


def _results(study: Study) -> list[Any]:
    """Each point's attributes from its first complete trial, once every point has one
    (waiting for other machines' trials); a point whose trials all failed is the first
    failure's error."""
    import optuna
    from optuna.trial import TrialState

    opened = optuna.load_study(study_name=study.name, storage=_storage(study.storage))
    points = study.grid.points
    while True:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(opened)
        done: dict[tuple[Any, ...], dict[str, Any]] = {}
        pending = set()  # running, or waiting in the queue
        for t in sorted(opened.get_trials(deepcopy=False), key=lambda t: t.number):
            if t.state == TrialState.COMPLETE:
                done.setdefault(study.grid.key(t.params), dict(t.user_attrs))
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                pending.add(study.grid.key(t.params or t.system_attrs.get("fixed_params", {})))
        missing = [p for p in points if study.grid.key(p) not in done]
        if not missing:
            return [done[study.grid.key(p)] for p in points]
        if not any(study.grid.key(p) in pending for p in missing):
            failure = _failure(study)
            raise failure or HeadstartError(
                f"study {study.name}: {len(missing)} trials never ran; run the command again"
            )
        log.info("waiting for %d trials other workers run", len(missing))
        time.sleep(POLL_S)


def _failure(study: Study) -> HeadstartError | None:
    """The error of the study's first failed trial, as the kind it was raised as."""
    import optuna
    from optuna.trial import TrialState

    opened = optuna.load_study(study_name=study.name, storage=_storage(study.storage))
    for t in opened.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if "error" in t.user_attrs:
            name, message = t.user_attrs["error"]
            cls = getattr(errors_module, name, HeadstartError)
            return cls(f"trial {t.number} ({t.params}): {message}")
        reason = t.system_attrs.get("fail_reason", "failed")
        return HeadstartError(f"trial {t.number} ({t.params}): {reason}")
    return None
