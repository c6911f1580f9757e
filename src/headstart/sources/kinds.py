"""What kind of inputs (images or texts) a source spec takes, where that is known without
building it, so that ``rank`` can refuse a mismatch before any slow work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError
from headstart.sources.base import parse_source_spec
from headstart.sources.hf import _is_vision
from headstart.sources.inputs import check_candidate

__all__ = ["check_known_kinds", "check_one_kind", "known_kind"]

# the families whose every model takes images
_IMAGE_FAMILIES = ("builtin", "timm", "torchvision")


def known_kind(spec: str) -> str | None:
    """``"texts"`` or ``"images"``: what ``spec`` takes, where that is known without
    building it (an image family, or an ``hf:`` folder on disk); else None."""
    family, name = parse_source_spec(spec)
    if family in _IMAGE_FAMILIES:
        return "images"
    if family == "hf":
        folder = Path(name).expanduser()
        if (folder / "config.json").is_file():
            return "images" if _is_vision(folder) else "texts"
    return None


def check_one_kind(candidates: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`ConfigError` when ``(spec, as given)`` candidates mix text encoders
    and image sources: one call ranks one kind, on data of that kind."""
    kinds: dict[str, list[str]] = {}
    for spec, shown in candidates:
        kind = known_kind(spec)
        if kind is not None:
            kinds.setdefault(kind, []).append(shown)
    if len(kinds) > 1:
        raise ConfigError(
            f"--sources mixes text encoders ({', '.join(kinds['texts'])}) and image sources "
            f"({', '.join(kinds['images'])}); rank one kind at a time, on data of that kind"
        )


def check_known_kinds(candidates: Sequence[tuple[str, str]], data: LabeledData) -> None:
    """:func:`~headstart.sources.inputs.check_candidate` for each ``(spec, as given)``
    whose kind is known without building it."""
    for spec, shown in candidates:
        kind = known_kind(spec)
        if kind is not None:
            check_candidate(kind, data, shown)
