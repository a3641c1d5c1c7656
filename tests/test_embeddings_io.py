"""Embeddings files: round trip, the cache beside the file, bad input."""

import os
import pickle

import numpy as np
import pytest
import torch

from speechbrain_ext.dataio import embeddings_io
from speechbrain_ext.dataio.embeddings_io import (
    EmbeddingsFileError,
    cache_paths,
    load_embeddings,
    save_embeddings,
)
from speechbrain_ext.utils.io_utils import UnsafeCheckpointError

NAN, INF = float("nan"), float("inf")
KEYS = ["id1/v1/00001.wav", "id1/v1/00002.wav", "id2/v3/00001.wav"]


def matrix(n=3, dim=4):
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim) / 10


def test_round_trip_dict_and_pair(tmp_path):
    x = matrix()
    mapping = {KEYS[0]: torch.tensor(x[0]), KEYS[1]: torch.tensor(x[1:2])}
    mapping[KEYS[2]] = torch.tensor(x[2], dtype=torch.float64)
    save_embeddings(mapping, tmp_path / "a.pt")
    save_embeddings((KEYS, torch.tensor(x)), tmp_path / "b.pt")
    for name in ("a.pt", "b.pt"):
        for use_cache in (True, False):
            keys, loaded = load_embeddings(tmp_path / name, use_cache)
            assert keys == KEYS
            assert loaded.dtype == np.float32
            np.testing.assert_array_equal(loaded, x)
    # The file itself is the Dict[str, Tensor] format, loadable safely.
    plain = torch.load(tmp_path / "b.pt", weights_only=True)
    assert list(plain) == KEYS and plain[KEYS[2]].shape == (4,)


def test_external_file_writes_cache_then_uses_it(tmp_path, monkeypatch):
    path = tmp_path / "e.pt"
    torch.save({k: torch.tensor(r) for k, r in zip(KEYS, matrix())}, path)
    assert not os.path.exists(cache_paths(path)["meta"])
    load_embeddings(path)
    assert all(os.path.exists(p) for p in cache_paths(path).values())

    def refuse(*args, **kwargs):
        raise AssertionError("the file was read although the cache is valid")

    monkeypatch.setattr(embeddings_io, "safe_torch_load", refuse)
    keys, x = load_embeddings(path)
    assert keys == KEYS
    np.testing.assert_array_equal(x, matrix())


def test_changed_file_invalidates_cache(tmp_path):
    path = tmp_path / "e.pt"
    save_embeddings((KEYS, matrix()), path)
    torch.save({"id9/v9/00001.wav": torch.ones(4)}, path)
    os.utime(path, ns=(1, 1))
    keys, x = load_embeddings(path)
    assert keys == ["id9/v9/00001.wav"] and x.tolist() == [[1.0] * 4]


def test_broken_cache_falls_back_to_the_file(tmp_path):
    path = tmp_path / "e.pt"
    save_embeddings((KEYS, matrix()), path)
    with open(cache_paths(path)["matrix"], "r+b") as f:
        f.truncate(10)
    keys, x = load_embeddings(path)
    assert keys == KEYS
    np.testing.assert_array_equal(x, matrix())


def test_keys_are_normalised(tmp_path):
    path = tmp_path / "e.pt"
    torch.save({"./id1\\v1/00001.wav": torch.ones(2)}, path)
    assert load_embeddings(path)[0] == ["id1/v1/00001.wav"]


BAD_CONTENTS = {
    "empty dict": ({}, "no embeddings"),
    "not a dict": ([torch.ones(3)], "expected a dict"),
    "mixed dims": (
        {"a/b/1.wav": torch.ones(3), "a/b/2.wav": torch.ones(4)},
        "mixed dimensions",
    ),
    "nan": (
        {"a/b/1.wav": torch.ones(3), "a/b/2.wav": torch.tensor([0, NAN, 1])},
        "NaN or infinite",
    ),
    "inf": (
        {"a/b/1.wav": torch.ones(3), "a/b/2.wav": torch.tensor([0, INF, 1])},
        "NaN or infinite",
    ),
    "duplicates": (
        {"a/b/1.wav": torch.ones(3), "./a//b/1.wav": torch.ones(3)},
        "duplicate key after normalising",
    ),
    "bad shape": ({"a/b/1.wav": torch.ones(2, 3)}, "expected [D] or [1, D]"),
    "integer": ({"a/b/1.wav": torch.ones(3, dtype=torch.long)}, "dtype"),
    "not a tensor": ({"a/b/1.wav": [1.0, 2.0]}, "expected a floating"),
    "key not a string": ({3: torch.ones(3)}, "keys must be strings"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
def test_bad_content_is_one_clear_line(tmp_path, case):
    content, message = BAD_CONTENTS[case]
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(EmbeddingsFileError) as error:
        load_embeddings(path)
    text = str(error.value)
    assert text.startswith(str(path)) and message in text
    assert "\n" not in text
    assert not os.path.exists(cache_paths(path)["meta"])


def test_empty_and_garbage_files(tmp_path):
    empty, garbage = tmp_path / "empty.pt", tmp_path / "garbage.pt"
    empty.write_bytes(b"")
    garbage.write_bytes(b"hello, not a torch file")
    with pytest.raises(EmbeddingsFileError, match="empty file"):
        load_embeddings(empty)
    with pytest.raises(EmbeddingsFileError, match="garbage.pt"):
        load_embeddings(garbage)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_embeddings(tmp_path / "missing.pt")


class Payload:
    """An object that needs arbitrary unpickling."""


def test_unsafe_file_is_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"a/b/1.wav": Payload()}, path, pickle_module=pickle)
    with pytest.raises(UnsafeCheckpointError, match="unsafe.pt"):
        load_embeddings(path)


def test_save_refuses_bad_input_and_writes_nothing(tmp_path):
    path = tmp_path / "out.pt"
    bad = matrix()
    bad[1, 2] = np.nan
    with pytest.raises(EmbeddingsFileError, match="NaN"):
        save_embeddings((KEYS, bad), path)
    with pytest.raises(EmbeddingsFileError, match="3 keys but 2"):
        save_embeddings((KEYS, matrix(2)), path)
    with pytest.raises(EmbeddingsFileError, match="duplicate"):
        save_embeddings((["a/1.wav", "a/./1.wav"], matrix(2)), path)
    assert os.listdir(tmp_path) == []
