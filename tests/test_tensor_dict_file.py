"""Fast reading of tensor-dict files: same values as torch.load, and safe."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from speechbrain_ext.dataio import embeddings_io
from speechbrain_ext.dataio.embeddings_io import load_embeddings
from speechbrain_ext.dataio.tensor_dict_file import read_matrix
from speechbrain_ext.utils.io_utils import UnsafeCheckpointError

KEYS = [f"id{i // 3}/v{i}/0000{i % 3}.wav" for i in range(7)]


def rows(dtype=torch.float32, dim=5):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(len(KEYS), dim, generator=generator).to(dtype)


def torch_load_matrix(path):
    """What torch.load(weights_only=True) reads, as keys and a matrix."""
    mapping = torch.load(path, weights_only=True)
    values = [v.detach().reshape(-1).float().numpy() for v in mapping.values()]
    return list(mapping), np.stack(values)


FAST_FILES = {
    # The reference's layout: one storage per utterance.
    "one storage per row": lambda x: {k: r.clone() for k, r in zip(KEYS, x)},
    # save_embeddings' layout: views of one storage, at storage offsets.
    "one shared storage": lambda x: dict(zip(KEYS, x.unbind(0))),
    "[1, D] and [D] rows": lambda x: {
        k: r.clone().reshape(1, -1) if i % 2 else r.clone()
        for i, (k, r) in enumerate(zip(KEYS, x))
    },
    "half precision": lambda x: {
        k: r.clone() for k, r in zip(KEYS, x.to(torch.float16))
    },
    "double precision": lambda x: {
        k: r.clone() for k, r in zip(KEYS, x.to(torch.float64))
    },
    "requires grad": lambda x: {
        k: r.clone().requires_grad_() for k, r in zip(KEYS, x)
    },
}


@pytest.mark.parametrize("case", sorted(FAST_FILES))
def test_fast_path_reads_what_torch_load_reads(tmp_path, case):
    path = tmp_path / "e.pt"
    torch.save(FAST_FILES[case](rows()), path)
    keys, matrix = read_matrix(path)
    expected_keys, expected = torch_load_matrix(path)
    assert keys == expected_keys == KEYS
    assert matrix.dtype == np.float32
    # Exact: both read the same stored values and widen them to float32.
    np.testing.assert_array_equal(matrix, expected)


def test_first_load_of_a_reference_file_skips_torch_load(tmp_path, monkeypatch):
    path = tmp_path / "e.pt"
    x = rows()
    torch.save({k: r.clone() for k, r in zip(KEYS, x)}, path)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load used for a plain tensor dict")

    monkeypatch.setattr(embeddings_io, "safe_torch_load", refuse)
    keys, matrix = load_embeddings(path, use_cache=False, write_cache=False)
    assert keys == KEYS
    np.testing.assert_array_equal(matrix, x.numpy())


OTHER_FILES = {
    "non-contiguous rows": lambda x: dict(zip(KEYS, x.T.contiguous().T)),
    "mixed dtypes": lambda x: {
        k: r.clone().to(torch.float64 if i else torch.float32)
        for i, (k, r) in enumerate(zip(KEYS, x))
    },
    "parameters": lambda x: {
        k: torch.nn.Parameter(r.clone()) for k, r in zip(KEYS, x)
    },
}


@pytest.mark.parametrize("case", sorted(OTHER_FILES))
def test_other_files_go_through_torch_load(tmp_path, case):
    path = tmp_path / "e.pt"
    x = rows()
    torch.save(OTHER_FILES[case](x), path)
    assert read_matrix(path) is None
    keys, matrix = load_embeddings(path, use_cache=False, write_cache=False)
    assert keys == KEYS
    np.testing.assert_array_equal(matrix, x.numpy())


@pytest.mark.parametrize(
    "content",
    [{"a/b/1.wav": torch.ones(2, 3)}, {3: torch.ones(3)}, [torch.ones(3)]],
    ids=["2-D value", "int key", "list"],
)
def test_invalid_content_is_left_to_the_validating_path(tmp_path, content):
    path = tmp_path / "e.pt"
    torch.save(content, path)
    assert read_matrix(path) is None


def test_legacy_and_garbage_files_are_left_to_torch_load(tmp_path):
    legacy, garbage = tmp_path / "legacy.pt", tmp_path / "garbage.pt"
    torch.save(
        {"a/b/1.wav": torch.ones(3)},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    assert read_matrix(legacy) is None
    assert read_matrix(garbage) is None
    assert load_embeddings(legacy, write_cache=False)[1].tolist() == [[1] * 3]


def deflated_copy(source_path, path, padding):
    """Copy a torch zip file with deflated records, after a stored record
    of ``padding`` bytes (which shifts the offsets of the others)."""
    with (
        zipfile.ZipFile(source_path) as source,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        folder = source.infolist()[0].filename.split("/")[0]
        target.writestr(f"{folder}/pad", b"\0" * padding, zipfile.ZIP_STORED)
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))


def test_compressed_archive_is_read_correctly(tmp_path):
    """A deflated record whose offset happens to be aligned is caught by
    the spot check and read by torch.load."""
    plain, deflated = tmp_path / "plain.pt", tmp_path / "deflated.pt"
    x = rows()[:1]
    torch.save({KEYS[0]: x[0].clone()}, plain)
    for padding in range(4):
        deflated_copy(plain, deflated, padding)
        reader = torch._C.PyTorchFileReader(str(deflated))
        if reader.get_record_offset("data/0") % 4 == 0:
            break
    assert read_matrix(deflated) is None
    keys, matrix = load_embeddings(deflated, write_cache=False)
    np.testing.assert_array_equal(matrix, x.numpy())


class Payload:
    """Creates a folder when unpickled (what a malicious file could do)."""

    def __init__(self, folder):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def test_unsafe_file_is_never_executed(tmp_path):
    path, marker = tmp_path / "unsafe.pt", tmp_path / "was_executed"
    payload = {"a/b/1.wav": torch.ones(3), "a/b/2.wav": Payload(str(marker))}
    torch.save(payload, path, pickle_module=pickle)
    assert read_matrix(path) is None
    with pytest.raises(UnsafeCheckpointError, match="unsafe.pt"):
        load_embeddings(path)
    assert not marker.exists()
