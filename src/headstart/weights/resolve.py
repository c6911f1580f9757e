"""Weights: the one place that resolves ``--weights`` to a file, from the cache or a download.

``--weights`` is ``default`` (the zoo's weights for the source), ``none`` (random
initialisation), a local path, or a URL (``http(s)://...``, optionally ending in
``#sha256=HEX``).  Zoo defaults and URLs share one cache folder and one downloader:

- a download is written to ``NAME.partial`` beside its final name, resumed with an HTTP
  Range request after an interruption, retried with back-off, checked (its hash; without
  one, its format: never a web page or a cut file), fsynced and only then renamed to
  ``NAME``: nothing incomplete or unverified is ever under a final name, whenever the
  process dies;
- a cached file is checked before use (size, sha256 and format, kept in
  ``NAME.sha256.json`` so that the check is cheap next time); a damaged one, or a
  download that does not load, is set aside (``NAME.bad-TIMESTAMP``) and fetched again,
  never loaded; a file put there by hand with nothing to check it against is used as it is;
- offline (no network, or ``HEADSTART_OFFLINE=1``) a missing file is an error that says
  which URL to fetch and where to put it.

Loading never executes pickled code: safetensors first, ``torch.load(weights_only=True)``
otherwise; only ``headstart cache convert FILE --trust`` unpickles, when told to.  Loading
reports missing, unexpected and shape-mismatched keys by name; only the old output layer
is dropped silently.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from headstart.errors import WeightsError
from headstart.weights.download import URL_SCHEMES, download

log = logging.getLogger(__name__)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class WeightsRequest:
    """A parsed ``--weights`` value."""

    kind: Literal["default", "none", "path", "url"]
    path: Path | None = None
    url: str | None = None  # without its "#sha256=" part
    sha256: str | None = None  # given after "#sha256=": the whole hash or a prefix

    def describe_file(self, path: Path) -> str:
        """How a weights origin names the file this request resolved to."""
        return f"weights from {self.url}" if self.kind == "url" else f"weights file {path}"

    @property
    def spec(self) -> str:
        if self.url is not None:
            return self.url + (f"#sha256={self.sha256}" if self.sha256 else "")
        return str(self.path) if self.path is not None else self.kind


def parse_weights(spec: str | os.PathLike[str] | None) -> WeightsRequest:
    """Parse ``--weights``: ``default``, ``none``, a URL, or the path of an existing file.

    Nothing is fetched here; a URL is checked for form only.
    """
    if spec is None or str(spec) == "default":
        return WeightsRequest("default")
    text = str(spec)
    if text in ("none", "random"):
        return WeightsRequest("none")
    if text.startswith(URL_SCHEMES):
        return _parse_url(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise WeightsError(
            f"--weights {text}: no such file; give 'default', 'none', a URL or the path of a "
            f"weights file ({', '.join(WEIGHT_SUFFIXES)})"
        )
    if path.is_dir():
        raise WeightsError(
            f"--weights {text} is a folder; pass a weights file, or use --source file:{text} "
            "for a headstart run dir"
        )
    return WeightsRequest("path", path)


def _parse_url(text: str) -> WeightsRequest:
    url, _, fragment = text.partition("#")
    digest = None
    if fragment:
        key, _, value = fragment.partition("=")
        digest = value.strip().lower()
        if key != "sha256" or not re.fullmatch(r"[0-9a-f]{8,64}", digest):
            raise WeightsError(
                f"--weights {text}: after '#' give sha256=HEX (the file's sha256, or at least "
                "its first 8 hex digits)"
            )
    if not url_filename(url):
        raise WeightsError(f"--weights {text}: the URL does not end in a file name")
    return WeightsRequest("url", url=url, sha256=digest)


def url_filename(url: str) -> str:
    """The file name a URL's path ends in (``""`` if it ends in ``/``)."""
    return posixpath.basename(urllib.parse.urlparse(url).path)


def hash_prefix_in_name(name: str) -> str | None:
    """The sha256 prefix a torch hub file name carries: ``f37072fd`` in
    ``resnet18-f37072fd.pth`` (torchvision names all its files this way)."""
    match = re.search(r"-([0-9a-f]{8,64})\.[^.]+$", name)
    return match.group(1) if match else None


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The one cache folder: ``explicit``, else ``$HEADSTART_CACHE``, else torch hub's.

    Defaulting to ``$TORCH_HOME/hub/checkpoints`` means files people already downloaded
    with torchvision (or dropped there by hand) are found and reused.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("HEADSTART_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class Remote:
    """A file the cache keeps a copy of: where it comes from and where the copy lives."""

    url: str
    dest: Path
    sha256: str | None = None  # the whole hash or a prefix; None when not published


def weights_file(request: WeightsRequest, *, cache: str | os.PathLike[str] | None = None) -> Path:
    """The local file behind a ``path`` or ``url`` request.

    A URL is found in the cache folder under its file name (checked), or fetched there.
    Raises :class:`WeightsError` when it can be neither.
    """
    if request.kind == "path" and request.path is not None:
        return request.path
    if request.kind == "url" and request.url is not None:
        dest = cache_dir(cache) / url_filename(request.url)
        return download(request.url, dest, sha256=request.sha256, for_spec=request.spec)
    raise ValueError(f"weights {request.spec!r} name no file")
