"""Atomic outputs and safe loading."""

import os
import pickle

import pytest
import torch

from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    UnsafeCheckpointError,
    atomic_open,
    atomic_torch_save,
    safe_torch_load,
)


def test_failed_write_keeps_the_previous_output(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("last good")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "last good"
    assert os.listdir(tmp_path) == ["out.txt"]


class Payload:
    """Unpickling this runs code: the safe loader must refuse it."""

    def __reduce__(self):
        return (os.makedirs, ("SHOULD_NOT_EXIST_DIR",))


def test_pickle_needing_code_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        safe_torch_load(path)
    assert not (tmp_path / "SHOULD_NOT_EXIST_DIR").exists()


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CorruptFileError, match="model.pt"):
        safe_torch_load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        safe_torch_load(tmp_path / "nope.pt")


def test_truncated_pickle_is_corrupt_not_unsafe(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(
        {"w": torch.randn(10)}, path, _use_new_zipfile_serialization=False
    )
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(CorruptFileError, match="legacy.pt"):
        safe_torch_load(path)


def test_atomic_output_has_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "out.txt") as f:
            f.write("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
