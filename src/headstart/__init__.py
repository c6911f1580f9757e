"""headstart: fine-tune a pretrained model on a small labelled data set.

The public API::

    from headstart import FitOptions, HeadstartClassifier, evaluate, fit, predict

Its names are loaded on first use (PEP 562), so that ``import headstart.cli`` and
``headstart --help`` do not pay for torch; type checkers see the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from headstart._version import __version__

if TYPE_CHECKING:
    from headstart.api.classifier import HeadstartClassifier
    from headstart.api.fit import fit, pretrain
    from headstart.api.predict import EvalResult, evaluate, predict
    from headstart.api.result import FitResult
    from headstart.config.options import (
        AdaptOptions,
        CompareOptions,
        EmbedOptions,
        FitOptions,
        PretrainOptions,
        RankOptions,
        RecommendOptions,
    )


# public name -> the module that defines it
_EXPORTS = {
    "EvalResult": "headstart.api.predict",
    "FitResult": "headstart.api.result",
    "HeadstartClassifier": "headstart.api.classifier",
    "evaluate": "headstart.api.predict",
    "fit": "headstart.api.fit",
    "predict": "headstart.api.predict",
    "pretrain": "headstart.api.fit",
    "AdaptOptions": "headstart.config.options",
    "CompareOptions": "headstart.config.options",
    "EmbedOptions": "headstart.config.options",
    "FitOptions": "headstart.config.options",
    "PretrainOptions": "headstart.config.options",
    "RankOptions": "headstart.config.options",
    "RecommendOptions": "headstart.config.options",
}

__all__ = [
    "AdaptOptions",
    "CompareOptions",
    "EmbedOptions",
    "EvalResult",
    "FitOptions",
    "FitResult",
    "HeadstartClassifier",
    "PretrainOptions",
    "RankOptions",
    "RecommendOptions",
    "__version__",
    "evaluate",
    "fit",
    "predict",
    "pretrain",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headstart' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
