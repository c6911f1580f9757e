"""What :func:`headstart.fit` returns: the run dir and what was trained in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.plan.make import Plan
from headstart.sources.target import TargetModel
from headstart.train.loop import History


@dataclass
class FitResult:
    run_dir: Path
    model: TargetModel
    classes: list[str]
    plan: Plan
    history: History
    source: dict[str, Any]
    metrics: dict[str, Any]
    timings: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "source": self.source["spec"],
            "strategy": self.plan.strategy,
            "classes": self.classes,
            "metrics": self.metrics,
            "timings": self.timings,
        }
