"""Optional experiment tracking: MLflow and TensorBoard, for ``fit`` and ``compare``.

``--mlflow-uri URI`` logs the options as parameters, every epoch's metrics as they are
measured, the final metrics, and the run dir's files (weights, ``headstart.json``,
``metrics.csv``, plots, reports) as artefacts, to an MLflow tracking store: a local
folder (``file:./mlruns``) or a server (``http://host:5000``).  ``--tensorboard [DIR]``
writes the same parameters and metrics, and the plots as images, to TensorBoard event
files under ``DIR/<run name>``.

Both packages are optional (``pip install 'headstart[tracking]'``); asking for a backend
that is not installed is a one-line :class:`~headstart.errors.ConfigError` before any
training starts.  MLflow is used through its ``MlflowClient`` (an explicit run id and
URI), not its module-level "active run", so nothing global is left behind.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from headstart.errors import ConfigError

log = logging.getLogger(__name__)


INSTALL_HINT = "pip install 'headstart[tracking]'"


EXPERIMENT = "headstart"  # the MLflow experiment every run is logged under


# MLflow keeps parameter values up to this length; longer ones (a long data spec) are cut.
_PARAM_CHARS = 6000


_EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr_head", "seconds")


def _key(name: str) -> str:
    """A metric or parameter name MLflow accepts: ``partial:2/fold1`` -> ``partial-2/fold1``."""
    return re.sub(r"[^\w\-. /]", "-", name)


class Tracker:
    """Logs to each backend asked for: MLflow, TensorBoard, both, or (none asked) nothing.

    Use as a context manager; the MLflow run ends FINISHED, or FAILED when an exception
    leaves the block.  :meth:`start` opens the run once its name is known.
    """

    def __init__(self, *, mlflow_uri: str | None, tensorboard: str | None) -> None:
        self.mlflow_uri = mlflow_uri
        self.tensorboard = tensorboard
        self._client: Any = None
        self._run_id: str | None = None
        self._writer: Any = None
        self.tensorboard_dir: Path | None = None
        if mlflow_uri:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError:
                raise ConfigError(f"--mlflow-uri needs MLflow: {INSTALL_HINT}") from None
            if mlflow_uri.startswith("file:") or "://" not in mlflow_uri:
                # MLflow 3 refuses a local file store unless this is set ("maintenance
                # mode"); a user who names one with --mlflow-uri has chosen it.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self._client = MlflowClient(tracking_uri=mlflow_uri)
        if tensorboard:
            try:
                # torch's writer raises ImportError itself when tensorboard is missing
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(f"--tensorboard needs TensorBoard: {INSTALL_HINT}") from None
            self._summary_writer = SummaryWriter

    @property
    def active(self) -> bool:
        return self._run_id is not None or self._writer is not None

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id once started (None without ``--mlflow-uri``)."""
        return self._run_id

    def start(self, run_name: str, params: Mapping[str, Any]) -> None:
        """Open the run (MLflow run, TensorBoard log folder) and log ``params``."""
        if self._client is not None:
            try:
                experiment = self._client.get_experiment_by_name(EXPERIMENT)
                experiment_id = (
                    experiment.experiment_id
                    if experiment is not None
                    else self._client.create_experiment(EXPERIMENT)
                )
                run = self._client.create_run(experiment_id, run_name=run_name)
            except Exception as exc:  # MLflow raises many kinds for a bad store or server
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(
                    f"--mlflow-uri {self.mlflow_uri}: cannot start a run ({first}); give a "
                    "reachable tracking server or a local store such as file:./mlruns"
                ) from exc
            self._run_id = run.info.run_id
            log.info("MLflow run %s in %s", self._run_id, self.mlflow_uri)
        if self.tensorboard:
            self.tensorboard_dir = Path(self.tensorboard) / run_name
            self._writer = self._summary_writer(log_dir=str(self.tensorboard_dir))
            log.info("TensorBoard events in %s", self.tensorboard_dir)
        self.log_params(params)

    def log_params(self, params: Mapping[str, Any]) -> None:
        clean = {_key(k): str(v)[:_PARAM_CHARS] for k, v in params.items() if v is not None}
        if self._run_id is not None:
            from mlflow.entities import Param

            self._client.log_batch(
                self._run_id, params=[Param(k, v) for k, v in sorted(clean.items())]
            )
        if self._writer is not None:
            table = "\n".join(
                ["| parameter | value |", "| --- | --- |"]
                + [f"| {k} | {v} |" for k, v in sorted(clean.items())]
            )
            self._writer.add_text("params", table, 0)

    def log_metrics(self, metrics: Mapping[str, float | None], *, step: int = 0) -> None:
        """Log the finite numbers in ``metrics`` at ``step`` (None and NaN are skipped)."""
        values = {
            _key(k): float(v)
            for k, v in metrics.items()
            if v is not None and not isinstance(v, bool) and math.isfinite(float(v))
        }
        if not values:
            return
        if self._run_id is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._client.log_batch(
                self._run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()]
            )
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)
            self._writer.flush()  # live: TensorBoard shows each epoch as it ends

    def epoch_logger(self, prefix: str = "") -> Callable[[Any], None]:
        """A ``train(on_epoch=...)`` callback logging each epoch's metrics at its number."""

        def on_epoch(row: Any) -> None:
            self.log_metrics(
                {f"{prefix}{name}": getattr(row, name) for name in _EPOCH_FIELDS},
                step=int(row.epoch),
            )

        return on_epoch

    def log_artifacts(self, folder: Path) -> None:
        """The files in ``folder`` to MLflow; its PNG plots to TensorBoard as images."""
        if self._run_id is not None:
            self._client.log_artifacts(self._run_id, str(folder))
        if self._writer is not None:
            import numpy as np
            from PIL import Image

            for png in sorted(folder.glob("*.png")):
                with Image.open(png) as img:
                    pixels = np.asarray(img.convert("RGB"))
                self._writer.add_image(png.stem, pixels, 0, dataformats="HWC")
            self._writer.flush()

    def close(self, *, failed: bool = False) -> None:
        if self._run_id is not None:
            self._client.set_terminated(self._run_id, status="FAILED" if failed else "FINISHED")
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)


def open_tracker(options: Any) -> Tracker:
    """A tracker for ``options.mlflow_uri`` / ``options.tensorboard`` (either may be unset).

    Raises :class:`ConfigError` at once when a backend asked for is not installed.
    """
    return Tracker(
        mlflow_uri=getattr(options, "mlflow_uri", None) or None,
        tensorboard=getattr(options, "tensorboard", None) or None,
    )
