"""Untrusted pickles (#17 item 3): nothing in a weights file runs unless the user says
``--trust``, and every message names the risk before the command.

The malicious checkpoint is real: unpickling it calls ``open(MARKER, "w")``, so the
marker file exists exactly when its code ran.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from headstart.sources.builtin import BUILTIN_MODELS
from tests.conftest import headstart, run_cli


class _WritesAMarker:
    """Unpickling this creates ``marker``: the payload of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def small_cnn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in BUILTIN_MODELS["small-cnn"].make().state_dict().items()}


def evil_checkpoint(folder: Path) -> tuple[Path, Path]:
    """``folder/evil.pth``, a real state dict with a payload, and the payload's marker."""
    marker = folder / "payload-ran"
    path = folder / "evil.pth"
    torch.save({**small_cnn_state(), "payload": _WritesAMarker(marker)}, path)
    return path, marker


def the_error(stderr: str) -> str:
    """The one-line error among the log lines on stderr."""
    lines = [line for line in stderr.splitlines() if line.startswith("headstart: error: ")]
    assert lines, stderr
    return lines[-1]


def test_convert_without_trust_runs_nothing_and_says_why(tmp_path: Path) -> None:
    evil, marker = evil_checkpoint(tmp_path)
    result = headstart("cache", "convert", evil)  # the real command, in its own process
    assert result.code == 1, result.stderr
    assert not marker.exists(), "the pickle's code ran without --trust"
    assert not (tmp_path / "evil.safetensors").exists()
    message = the_error(result.stderr)
    assert "can run any code" in message and "nothing was run" in message
    assert f"headstart cache convert {evil} --trust" in message
    assert message.index("can run any code") < message.index("headstart cache convert")
    assert "source you trust" in message


def test_convert_with_trust_runs_the_pickle_and_writes_safetensors(tmp_path: Path) -> None:
    evil, marker = evil_checkpoint(tmp_path)
    result = run_cli("cache", "convert", evil, "--trust", "--json")
    assert result.code == 0, result.stderr
    assert marker.exists(), "--trust unpickles the file (and so runs its code)"
    assert "--trust" in result.stderr and "runs the code" in result.stderr
    assert result.json() == {"path": str(tmp_path / "evil.safetensors"), "unpickled": True}
    state = small_cnn_state()
    converted = load_file(str(tmp_path / "evil.safetensors"))
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)


def test_only_code_running_pickles_need_trust(tmp_path: Path) -> None:
    state = small_cnn_state()
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)  # torch's zip format
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    for path in (plain, legacy):
        result = run_cli("cache", "convert", path, "--json")
        assert result.code == 0, result.stderr
        assert result.json()["unpickled"] is False
        assert "runs the code" not in result.stderr
        converted = load_file(str(path.with_suffix(".safetensors")))
        assert all(torch.equal(converted[k], state[k]) for k in state)

    evil, marker = evil_checkpoint(tmp_path)
    refused = run_cli("cache", "convert", evil)
    assert refused.code == 1 and "--trust" in refused.stderr
    assert not marker.exists()


def test_the_refusal_of_fit_names_the_risk_before_the_command(
    digits_folder: Path, tmp_path: Path
) -> None:
    evil, marker = evil_checkpoint(tmp_path)
    args = ["fit", digits_folder, "--source", "builtin:small-cnn", "--weights", evil]
    result = run_cli(*args, "--out", tmp_path / "run")
    assert result.code == 1
    assert not marker.exists()
    message = the_error(result.stderr)
    assert "refused to load" in message and "can run any code" in message
    assert message.index("can run any code") < message.index("headstart cache convert")
    command = re.search(r"headstart cache convert \S+ --trust", message)
    assert command is not None, message
    assert not (tmp_path / "run" / "headstart.json").exists()

    # The command it names, typed as given, converts it (and runs the payload: trusted).
    converted = run_cli(*command.group(0).split()[1:])
    assert converted.code == 0, converted.stderr
    assert marker.exists() and (tmp_path / "evil.safetensors").is_file()
