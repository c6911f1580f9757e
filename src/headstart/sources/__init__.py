"""Sources: pretrained models minus their old output layer, one adapter per family.

``build_source("timm:resnet18", weights="none")`` returns a :class:`Source`; the
families are registered here, in one place.
"""

from __future__ import annotations

from headstart.data.transforms import Preprocessing
from headstart.sources.base import (
    ADAPTERS,
    Backbone,
    BuildOptions,
    Source,
    SourceAdapter,
    WeightsOrigin,
    build_source,
    parse_source_spec,
)
from headstart.sources.builtin import BuiltinAdapter
from headstart.sources.file import FileAdapter
from headstart.sources.hf import HfAdapter
from headstart.sources.timm_ import TimmAdapter
from headstart.sources.torchvision_ import TorchvisionAdapter

__all__ = [
    "ADAPTERS",
    "Backbone",
    "BuildOptions",
    "Preprocessing",
    "Source",
    "SourceAdapter",
    "WeightsOrigin",
    "build_source",
    "parse_source_spec",
]

ADAPTERS.register("builtin", BuiltinAdapter())
ADAPTERS.register("file", FileAdapter())
ADAPTERS.register("hf", HfAdapter())
ADAPTERS.register("timm", TimmAdapter())
ADAPTERS.register("torchvision", TorchvisionAdapter())
