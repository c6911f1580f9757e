"""Where headstart looks for a source's downloaded default weights (``cache add --for``,
``cache path``).
"""

from __future__ import annotations

import os

from headstart.errors import ConfigError
from headstart.sources.base import ADAPTERS, parse_source_spec
from headstart.weights.download import (
    URL_SCHEMES,
)
from headstart.weights.resolve import (
    Remote,
    cache_dir,
    parse_weights,
    url_filename,
)


def location_for(spec: str, cache: str | os.PathLike[str] | None = None) -> Remote:
    """Where the resolver looks for ``spec``'s weights: a source's default weights
    (``torchvision:resnet18``, ``timm:resnet18``) or a URL (``https://...#sha256=HEX``).
    """
    if spec.startswith(URL_SCHEMES):
        request = parse_weights(spec)
        assert request.url is not None
        return Remote(request.url, cache_dir(cache) / url_filename(request.url), request.sha256)

    family, name = parse_source_spec(spec)
    locate = getattr(ADAPTERS.get(family), "default_location", None)
    if locate is None:
        with_defaults = [
            f for f in ADAPTERS.names() if hasattr(ADAPTERS.get(f), "default_location")
        ]
        raise ConfigError(
            f"--for {spec}: {family} sources have no downloaded default weights; give "
            f"{' or '.join(f'{f}:NAME' for f in with_defaults)}, or a URL"
        )
    remote: Remote = locate(name, cache=None if cache is None else str(cache))
    return remote
