"""Which items a run trained on, so that ``rank`` can tell a candidate that has seen the
data it is ranked on.

A run records a *sketch* of its data in ``headstart.json`` (``data.seen``): the
``SKETCH`` smallest item digests (SHA-256 of an image's bytes, an array's bytes or a
text), a uniform sample of its items that is the whole set on small data.  ``rank`` digests
the data it ranks on and counts how many sketched items it holds: any is an overlap.  A
run written before the sketch is checked by its data fingerprints and its data spec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from headstart.data.labelled import LabeledData
from headstart.data.texts import TextData
from headstart.features.cache import item_digests

__all__ = ["SKETCH", "Overlap", "digests", "overlap", "sketch"]


SKETCH = 512  # digests kept: the whole set up to 512 items, a uniform sample above


def digests(data: LabeledData) -> set[str]:
    """Each item's content digest (hex, 16 characters)."""
    if isinstance(data, TextData):
        return {hashlib.sha256(t.encode("utf-8")).hexdigest()[:16] for t in data.texts()}
    return {bytes(d).hex()[:16] for d in item_digests(data)}


def sketch(*parts: LabeledData | None) -> dict[str, Any]:
    """What a run records of the items it saw (its training and validation parts)."""
    seen: set[str] = set()
    for part in parts:
        if part is not None:
            seen |= digests(part)
    return {"n_items": len(seen), "digests": sorted(seen)[:SKETCH]}


@dataclass(frozen=True)
class Overlap:
    """How a run's data meets the data ranked: ``why`` says it for people."""

    why: str


def overlap(meta: dict[str, Any], data: LabeledData, spec: str) -> Overlap | None:
    """Whether the run whose ``headstart.json`` is ``meta`` trained on items of ``data``
    (read from ``spec``); None when nothing says so."""
    recorded = meta.get("data") or {}
    seen = recorded.get("seen")
    if seen and seen.get("digests"):
        sampled = seen["digests"]
        hits = len(set(sampled) & digests(data))
        if hits:
            n = seen["n_items"]
            share = (
                f"{hits} of its {n} training items"
                if len(sampled) >= n
                else f"{hits} of {len(sampled)} sampled from its {n} training items"
            )
            return Overlap(f"{share} are in the data ranked")
        return None
    prints = {(recorded.get(k) or {}).get("fingerprint") for k in ("train", "val")} - {None}
    if data.fingerprint() in prints:
        return Overlap("it was trained on this very data (same fingerprint)")
    if recorded.get("spec") and recorded.get("spec") == spec:
        return Overlap(f"it was trained on {spec}, the data ranked")
    return None
