"""Reading weights files safely (safetensors, or pickles with ``weights_only=True``),
unwrapping their containers, and loading them into a model with a report of the keys.

Before anything reads a file, its bytes are checked for what they claim to be
(:func:`format_problem`): a download without a hash is judged by that alone.  A cached
download that turns out not to load is set aside (:func:`set_aside`), so that the next
run fetches it again; what the cache knows of a file is in its sidecar (:func:`read_stamp`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import pickletools
import re
import shlex
import struct
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
from torch import nn

from headstart._io import exclusive
from headstart.errors import WeightsError

log = logging.getLogger(__name__)


URL_SCHEMES = ("http://", "https://")


SIDECAR_SUFFIX = ".sha256.json"  # NAME.sha256.json: size, mtime and sha256 of NAME


SET_ASIDE = ".bad-"  # NAME.bad-TIMESTAMP: a cached file that was not good, kept to look at


def sidecar_path(path: Path) -> Path:
    """``NAME.sha256.json``: what is known about the cached file ``NAME``."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class Stamp:
    """A cached file's sidecar: its size, mtime and sha256 when last checked."""

    size: int
    mtime_ns: int
    sha256: str
    source: str  # the URL it was downloaded from, or how it came into the cache

    def matches(self, st: os.stat_result) -> bool:
        return self.size == st.st_size and self.mtime_ns == st.st_mtime_ns


def read_stamp(path: Path) -> Stamp | None:
    """The sidecar of ``path``, or None if it has none (or an unreadable one)."""
    try:
        d = json.loads(sidecar_path(path).read_text())
        return Stamp(int(d["size"]), int(d["mtime_ns"]), str(d["sha256"]), str(d["source"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def set_aside(path: Path) -> Path:
    """Move a cached file that is not good out of the resolver's way, to
    ``NAME.bad-TIMESTAMP`` beside it (kept to look at; ``cache clear`` deletes it), and drop
    its sidecar; return where it went.  The caller holds the file's lock."""
    when = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}{SET_ASIDE}{when}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}{SET_ASIDE}{when}-{n}"), n + 1
    os.replace(path, aside)
    sidecar_path(path).unlink(missing_ok=True)
    return aside


# --------------------------------------------------------------------------- formats


_MAX_HEADER = 100_000_000  # the largest safetensors header safetensors itself reads


_WEB_PAGE = re.compile(
    rb"\s*<(?:!doctype\s+html\b|html\b|head\b|body\b|title\b|meta\b|!--|\?xml\b)", re.I
)


_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the number torch.save's old format begins with


_OLD_FORMAT_PICKLES = 5  # the magic number, protocol, system info, the object, storage keys


@dataclass(frozen=True)
class FormatProblem:
    """What is wrong with a weights file, judged from its bytes alone."""

    text: str  # completes "PATH ...": "is truncated (...)"
    cut: bool = False  # its structure stops early: the rest may yet come
    page: str = ""  # an HTML page (a login or error page sent instead): how it begins

    def __str__(self) -> str:
        return self.text


def format_problem(
    path: Path, *, name: str | None = None, quick: bool = False
) -> FormatProblem | None:
    """Why ``path`` is not a whole weights file of the kind its name says; None if it is.

    ``.safetensors``: its header parses and the data it describes ends where the file
    does.  Any other name is read by ``torch.load``: a zip archive (``torch.save``'s format)
    with its directory at the end and a ``data.pkl`` in it, or a pickle (the old format)
    whose pickled parts are whole.  An HTML page is never weights.  ``name`` (default the
    file's own) gives the kind: a download in progress is ``NAME.partial``.  ``quick``
    reads only a safetensors header, a zip's directory or a pickle's first bytes.
    """
    name = name or path.name
    size = path.stat().st_size
    if size == 0:
        return FormatProblem("is empty", cut=True)
    with open(path, "rb") as fh:
        head = fh.read(512)
        if _WEB_PAGE.match(head.removeprefix(b"\xef\xbb\xbf")):
            begins = _begins(head)
            return FormatProblem(f"is a web page, not weights ({begins})", page=begins)
        if name.endswith(".safetensors"):
            return _safetensors_problem(fh, head, size)
        return _torch_problem(path, fh, head, size, quick=quick)


def _begins(head: bytes) -> str:
    """``it begins: '...'``: the first bytes, as text where they are text."""
    text = head[:200].decode("utf-8", "replace")
    if all(c.isprintable() or c.isspace() for c in text) and "\ufffd" not in text[:-4]:
        shown = " ".join(text.split())
        return "it begins: '" + (shown[:70] + "..." if len(shown) > 70 else shown) + "'"
    return f"it begins: {head[:16]!r}"


def _safetensors_problem(fh: IO[bytes], head: bytes, size: int) -> FormatProblem | None:
    if size < 8:
        return FormatProblem(f"is truncated ({size} bytes)", cut=True)
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > _MAX_HEADER or head[8:9] not in (b"{", b""):
        return FormatProblem(f"is not a safetensors file ({_begins(head)})")
    if 8 + header_len > size:
        return FormatProblem(
            f"is truncated ({size} bytes; its header alone is {8 + header_len})", cut=True
        )
    fh.seek(8)
    try:
        header = json.loads(fh.read(header_len))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return FormatProblem("is not a safetensors file (unreadable header)")
    expected = 8 + header_len + end
    if size < expected:
        return FormatProblem(
            f"is truncated ({size} bytes where its header says {expected})", cut=True
        )
    if size > expected:
        return FormatProblem(f"is {size} bytes where its header says {expected} (altered)")
    return None


def _torch_problem(
    path: Path, fh: IO[bytes], head: bytes, size: int, *, quick: bool
) -> FormatProblem | None:
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return FormatProblem(
                f"is truncated ({size} bytes, and the end of its zip archive is missing)",
                cut=True,
            )
        if quick:
            return None
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            return FormatProblem(f"is a damaged zip archive ({exc})")
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return FormatProblem("is a zip archive but not a torch checkpoint (no data.pkl)")
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return None if quick else _pickle_problem(fh, size)
    if _safetensors_problem(fh, head, size) is None:
        return FormatProblem("is a safetensors file: its name should end in .safetensors")
    return FormatProblem(
        "is not a weights file: neither safetensors, a zip archive (torch.save) nor a "
        f"pickle ({_begins(head)})"
    )


def _pickle_problem(fh: IO[bytes], size: int) -> FormatProblem | None:
    """Walk the pickled parts (opcodes only: nothing is built or called): one pickle, or
    the five of ``torch.save``'s old format; its tensor data after them is not checked."""
    fh.seek(0)
    try:
        old_format = False
        for _, arg, _ in pickletools.genops(fh):
            old_format = old_format or arg == _TORCH_MAGIC
        for _ in range(_OLD_FORMAT_PICKLES - 1 if old_format else 0):
            for _ in pickletools.genops(fh):
                pass
    except (ValueError, struct.error, OverflowError) as exc:
        if fh.tell() >= size:
            return FormatProblem(f"is truncated ({size} bytes, in its pickled part)", cut=True)
        return FormatProblem(f"is not a readable pickle ({exc})")
    return None


# --------------------------------------------------------------------------- loading


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata in a safetensors header (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def pickled_code(exc: BaseException) -> str | None:
    """What ``torch.load(weights_only=True)`` refused to unpickle because it could run code
    (``io.open``, a class, a call), or None when it failed for another reason (damage)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return found.group(1)
    for what in ("Can only create new object", "Can only build", "unrecognized function"):
        if what in text:
            return text[text.index(what) :].splitlines()[0][:120]
    return None


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict without running pickled code.

    Raises :class:`WeightsError` naming the file if it is truncated, not a weights file,
    or a pickle that would execute code.  A cached download that cannot be read is set
    aside, so that the next run downloads it again.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    st = path.stat()
    problem = format_problem(path)
    if problem is not None:
        raise _unreadable(path, st, f"{path} {problem}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise _unreadable(path, st, f"{path}: damaged safetensors file ({exc})") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = pickled_code(exc)
        if code is None:
            raise _unreadable(path, st, f"{path}: not a readable weights file") from exc
        raise WeightsError(
            f"{path}: refused to load: it holds pickled objects ({code}) whose unpickling "
            "can run any code on this machine. Only if the file comes from a source you "
            "trust, convert it once, which runs that code: headstart cache convert "
            f"{shlex.quote(str(path))} --trust"
        ) from exc
    except Exception as exc:  # torch's reader on a damaged file: EOF, struct, runtime errors
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise _unreadable(
            path, st, f"{path}: not a readable weights file, or truncated ({first})"
        ) from exc
    return unwrap_state_dict(obj, where=str(path))


def _unreadable(path: Path, st: os.stat_result, message: str) -> WeightsError:
    """The error for a file that cannot be read.  A download in the cache (its sidecar
    names the URL) is set aside, unless another process replaced it meanwhile."""
    stamp = read_stamp(path)
    if stamp is None or not stamp.source.startswith(URL_SCHEMES):
        return WeightsError(f"{message}; download it again, or use another file")
    with exclusive(path, label=f"{path.name} in the weights cache", wait=True, optional=True):
        now = path.stat() if path.is_file() else None
        if now is None or (now.st_ino, now.st_mtime_ns) != (st.st_ino, st.st_mtime_ns):
            return WeightsError(f"{message}; it has been replaced since: run again")
        try:
            aside = set_aside(path)
        except OSError as exc:
            return WeightsError(f"{message}; delete it ({exc.strerror or exc}), then run again")
    log.info("%s set aside as %s", path, aside)
    return WeightsError(
        f"{message}; set aside as {aside.name}: the next run downloads it again from {stamp.source}"
    )


def unwrap_state_dict(obj: object, *, where: str = "weights") -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and strip ``module.`` prefixes."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "model_state_dict", "module"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where}: expected a state dict, found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{where}: holds no tensors")
    # DataParallel / DistributedDataParallel save every key under "module.".
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


@dataclass
class KeyReport:
    """What happened to each key when a state dict was loaded into a backbone."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # the old output layer
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # "name: file (a, b) vs model (c, d)"
    head_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.dropped:
            parts.append(f"old output layer dropped ({', '.join(self.dropped)})")
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 10 else ""
                )
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def load_into(
    body: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    head_prefixes: Sequence[str] = (),
    strict: bool = False,
    where: str = "weights",
) -> KeyReport:
    """Load ``state_dict`` into ``body`` (a model whose old output layer is gone).

    Keys under ``head_prefixes`` belong to the old output layer: they are dropped (kept in
    ``head_state``).  Errors, naming the keys: a file that matches nothing, a shape
    mismatch, and a learned tensor of ``body`` the file lacks (it would stay random in a
    model reported as pretrained).  Keys of the file that ``body`` lacks are logged as a
    warning.  With ``strict`` any missing or unexpected key is an error.
    """

    def is_head(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in head_prefixes if p)

    own = body.state_dict()
    report = KeyReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if is_head(key) and key not in own:
            report.dropped.append(key)
            report.head_state[key] = value
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append(
                f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
        else:
            to_load[key] = value
    report.loaded = sorted(to_load)
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    if not to_load:
        raise WeightsError(
            f"{where}: none of its {len(state_dict)} tensors fit this architecture "
            f"(first keys: {', '.join(list(state_dict)[:5])}); is it for another model?"
        )
    if report.mismatched:
        raise WeightsError(f"{where}: does not fit this architecture: {report.summary()}")
    if strict and (report.missing or report.unexpected):
        raise WeightsError(f"{where}: keys do not match (strict): {report.summary()}")
    # Parameters and BatchNorm statistics are learned; other buffers (position indices,
    # masks) are computed by the model itself, so a file may leave them out.
    params = {n for n, _ in body.named_parameters(remove_duplicate=False)}
    learned = [
        k for k in report.missing if k in params or k.endswith(("running_mean", "running_var"))
    ]
    if learned:
        shown = ", ".join(learned[:10]) + (
            f", ... ({len(learned)} in all)" if len(learned) > 10 else ""
        )
        raise WeightsError(
            f"{where}: missing from the file: {shown}; those layers would stay random in a "
            "model called pretrained; use weights made for this architecture, or --weights "
            "none to train from random weights"
        )
    if report.missing or report.unexpected:
        log.warning("%s: %s", where, report.summary())
    loadable = OrderedDict(to_load)
    # Module versions (``_metadata``) are lost by unwrapping and by safetensors, and some
    # modules refuse to load without one (torchvision's MNASNet): use the model's own.
    loadable._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    body.load_state_dict(loadable, strict=False)
    return report
