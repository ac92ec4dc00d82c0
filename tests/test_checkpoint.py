"""Checkpoint files: a pickle that would run code is refused, a failed write leaves the previous file loadable."""

import os
import pickle

import pytest
import torch

from utils import checkpoint
from utils.checkpoint import CheckpointError, safe_load, save_checkpoint
from utils.io import write_json


class _Payload:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Payload(str(marker))}, f)
    torch_evil = tmp_path / "evil_torch.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": _Payload(str(marker))}, torch_evil)
    for path in (evil, torch_evil):
        with pytest.raises(CheckpointError, match="run code") as info:
            safe_load(str(path))
        assert str(path) in str(info.value)
    assert not marker.exists()


def test_round_trip_and_safetensors(tmp_path):
    state = {"format": "topreid", "model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    save_checkpoint(str(tmp_path / "a.pth"), state)
    loaded = safe_load(str(tmp_path / "a.pth"))
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    assert torch.equal(safe_load(str(tmp_path / "b.safetensors"))["w"], torch.ones(2))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.zeros(3)}})
    real_save = torch.save

    def half_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # truncate what was written, then fail like a full disk would
            handle.truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half_write)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.ones(3)}})
    monkeypatch.undo()
    assert safe_load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp file left behind


def test_not_a_checkpoint_and_missing_file(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        safe_load(str(text))
    with pytest.raises(CheckpointError, match="nope.pth"):
        safe_load(str(tmp_path / "nope.pth"))


def test_json_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json(str(path), {"a": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("utils.io.json.dump", fail)
    with pytest.raises(OSError):
        write_json(str(path), {"a": 2})
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert os.listdir(tmp_path) == ["results.json"]
