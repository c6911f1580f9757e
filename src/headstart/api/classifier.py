"""``HeadstartClassifier``: :func:`headstart.fit` in scikit-learn's estimator style.

It follows scikit-learn's rules (``sklearn/base.py``): ``__init__`` takes explicit keyword
parameters (the :class:`FitOptions` fields, with the same defaults) and only stores them;
everything is checked in ``fit``; ``get_params``/``set_params`` come from
:class:`~sklearn.base.BaseEstimator`, so ``sklearn.base.clone`` and its search tools work;
learned state ends in ``_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from headstart.api.fit import fit
from headstart.api.predict import evaluate, predict
from headstart.config.options import FitOptions
from headstart.errors import ConfigError
from headstart.plan.make import Plan
from headstart.sources.target import LoadedRun, load_run

__all__ = ["HeadstartClassifier"]

_DEFAULTS = FitOptions()
# FitOptions fields that are not an estimator's parameters: the data is fit's argument,
# and resuming a stopped run is the command line's business.
# (nodes, node rank, main address: a group of machines is the command line's)
_NOT_PARAMS = frozenset({"data", "resume", "nodes", "node_rank", "main_address"})


class HeadstartClassifier(BaseEstimator):
    """``HeadstartClassifier(source=..., strategy=...).fit(data)``, then ``predict``.

    ``fit`` returns ``self`` and sets ``classes_``, ``model_``, ``plan_``, ``history_``,
    ``metrics_`` and ``run_dir_``.  The parameters are :class:`FitOptions`' fields.
    """

    def __init__(
        self,
        *,
        source: str = _DEFAULTS.source,
        weights: str = _DEFAULTS.weights,
        strategy: str = _DEFAULTS.strategy,
        budget: str = _DEFAULTS.budget,
        trials_in_parallel: int = _DEFAULTS.trials_in_parallel,
        epochs: int | None = _DEFAULTS.epochs,
        lr: float | None = _DEFAULTS.lr,
        backbone_lr_mult: float = _DEFAULTS.backbone_lr_mult,
        weight_decay: float = _DEFAULTS.weight_decay,
        batch_size: int | None = _DEFAULTS.batch_size,
        val: str | None = _DEFAULTS.val,
        val_fraction: float | None = _DEFAULTS.val_fraction,
        seed: int = _DEFAULTS.seed,
        patience: int | None = _DEFAULTS.patience,
        select: str = _DEFAULTS.select,
        augment: str = _DEFAULTS.augment,
        image_size: int | None = _DEFAULTS.image_size,
        arch: str | None = _DEFAULTS.arch,
        dropout: float = _DEFAULTS.dropout,
        label_smoothing: float = _DEFAULTS.label_smoothing,
        warmup_epochs: float = _DEFAULTS.warmup_epochs,
        workers: int | None = _DEFAULTS.workers,
        feature_cache: bool = _DEFAULTS.feature_cache,
        feature_cache_views: int = _DEFAULTS.feature_cache_views,
        solve_head: bool = _DEFAULTS.solve_head,
        device: str = _DEFAULTS.device,
        cache_dir: str | None = _DEFAULTS.cache_dir,
        precision: str = _DEFAULTS.precision,
        channels_last: bool = _DEFAULTS.channels_last,
        compile: bool = _DEFAULTS.compile,
        strict: bool = _DEFAULTS.strict,
        out: str | None = _DEFAULTS.out,
        overwrite: bool = _DEFAULTS.overwrite,
        skip_bad: bool = _DEFAULTS.skip_bad,
        layer_decay: float = _DEFAULTS.layer_decay,
        head_epochs: int = _DEFAULTS.head_epochs,
        lora_r: int = _DEFAULTS.lora_r,
        lora_alpha: int = _DEFAULTS.lora_alpha,
        lora_dropout: float = _DEFAULTS.lora_dropout,
        lora_targets: str | None = _DEFAULTS.lora_targets,
        text_col: str | None = _DEFAULTS.text_col,
        label_col: str | None = _DEFAULTS.label_col,
        max_length: int | None = _DEFAULTS.max_length,
        progress: bool = _DEFAULTS.progress,
        checkpoint_every: int = _DEFAULTS.checkpoint_every,
        deterministic: bool = _DEFAULTS.deterministic,
        processes: int = _DEFAULTS.processes,
        mlflow_uri: str | None = _DEFAULTS.mlflow_uri,
        tensorboard: str | None = _DEFAULTS.tensorboard,
    ) -> None:
        # scikit-learn's rule: store every parameter as given, check nothing here
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    def options(self, data: str | Path) -> FitOptions:
        """The :class:`FitOptions` that ``fit(data)`` runs with."""
        return FitOptions(data=str(data), **self.get_params())

    def fit(self, data: str | Path) -> HeadstartClassifier:
        result = fit(self.options(data))
        self.run_dir_ = result.run_dir
        self.classes_ = result.classes
        self.model_ = result.model
        self.plan_ = result.plan
        self.history_ = result.history
        self.metrics_ = result.metrics
        self._run = load_run(result.run_dir)
        return self

    @classmethod
    def load(cls, run_dir: str | Path) -> HeadstartClassifier:
        """A fitted classifier from a run dir."""
        loaded = load_run(run_dir)
        self = cls()
        self.run_dir_ = loaded.path
        self.classes_ = loaded.classes
        self.model_ = loaded.model
        self.plan_ = Plan.from_dict(loaded.meta["plan"])
        self._run = loaded
        return self

    def _loaded(self) -> LoadedRun:
        if not hasattr(self, "_run"):
            raise ConfigError("this HeadstartClassifier is not fitted yet; call fit(data) first")
        return self._run

    def _rows(self, inputs: Sequence[str | Path], top_k: int = 1) -> list[dict[str, Any]]:
        run = self._loaded()
        files, texts = run.inputs.predict_args(inputs)  # a text model labels the strings
        return predict(run, files, texts=texts, top_k=top_k)

    def predict(self, inputs: Sequence[str | Path]) -> list[str]:
        """Labels of image files, or of texts for a text model."""
        return [r["label"] for r in self._rows(inputs)]

    def predict_proba(self, inputs: Sequence[str | Path]) -> np.ndarray:
        rows = self._rows(inputs, top_k=len(self.classes_))
        probs = np.zeros((len(rows), len(self.classes_)))
        index = {c: i for i, c in enumerate(self.classes_)}
        for r, row in enumerate(rows):
            for t in row["top"]:
                probs[r, index[t["label"]]] = t["probability"]
        return probs

    def score(self, data: str) -> float:
        """Accuracy on labelled data (same forms as ``fit``)."""
        # its own RUN/eval, replaced at each call (scikit-learn scores again and again)
        return evaluate(self._loaded(), data, overwrite=True).accuracy
