"""Reading and writing embeddings files, with a fast cache beside the file.

An embeddings file is a ``Dict[str, Tensor]`` saved with :func:`torch.save`:
one entry per utterance, the key its path relative to the wav root (e.g.
``id00012/21Uxsk56VDQ/00001.wav``), the value its embedding of shape ``[D]``
or ``[1, D]``. Loading such a file with ``torch.load(weights_only=True)``
is slow at VoxCeleb2 scale (about two minutes for 1.1 M entries):
:mod:`~speechbrain_ext.dataio.tensor_dict_file` reads a plain tensor dict
about 7x faster, as safely (an allow-list of globals; any other file goes
through ``torch.load``), and the first load writes a cache beside it:
``FILE.keys.txt`` (one key per line), ``FILE.matrix.npy`` (float32
``[N, D]``) and ``FILE.cache.json`` (the size and modification time of the
source file it was built from, checked on every load). Later loads read the
cache in seconds; any change to the source file invalidates it.
:func:`save_embeddings` writes the cache directly.

Example
-------
>>> import os, tempfile, torch
>>> path = os.path.join(tempfile.mkdtemp(), "emb.pt")
>>> save_embeddings({"s1/v1/00001.wav": torch.ones(4),
...                  "s1/v1/00002.wav": torch.zeros(1, 4)}, path)
>>> keys, matrix = load_embeddings(path)
>>> keys, matrix.shape, matrix.dtype
(['s1/v1/00001.wav', 's1/v1/00002.wav'], (2, 4), dtype('float32'))
"""

import json
import os
import posixpath

import numpy as np
import torch
from speechbrain.utils.logger import get_logger

from speechbrain_ext.dataio.tensor_dict_file import read_matrix
from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    atomic_open,
    atomic_path,
    atomic_torch_save,
    safe_torch_load,
)

logger = get_logger(__name__)

CACHE_VERSION = 1


class EmbeddingsFileError(ValueError):
    """Raised when an embeddings file (or dict) is not valid.

    The message is one line naming the file and the problem.
    """


def cache_paths(path):
    """Return the paths of the cache files of an embeddings file.

    Arguments
    ---------
    path : str or os.PathLike
        The embeddings file.

    Returns
    -------
    dict
        ``keys``, ``matrix`` and ``meta`` paths.

    Example
    -------
    >>> sorted(cache_paths("e.pt").values())
    ['e.pt.cache.json', 'e.pt.keys.txt', 'e.pt.matrix.npy']
    """
    path = os.fspath(path)
    return {
        "keys": path + ".keys.txt",
        "matrix": path + ".matrix.npy",
        "meta": path + ".cache.json",
    }


def normalise_key(key):
    """Normalise an utterance path: ``/`` separators, no ``.`` or ``..``.

    Arguments
    ---------
    key : str
        An utterance path, usually relative to the wav root.

    Returns
    -------
    str

    Example
    -------
    >>> normalise_key("./id1\\\\vid//00001.wav")
    'id1/vid/00001.wav'
    """
    return posixpath.normpath(key.replace("\\", "/"))


def _check_keys(keys, source):
    """Normalise keys; refuse non-strings, empty keys, newlines, duplicates."""
    normalised = []
    for key in keys:
        if not isinstance(key, str):
            raise EmbeddingsFileError(
                f"{source}: keys must be strings, found "
                f"{type(key).__name__} {key!r}"
            )
        if not key.strip() or "\n" in key or "\r" in key:
            raise EmbeddingsFileError(
                f"{source}: invalid key {key!r} (empty or with a line break)"
            )
        normalised.append(normalise_key(key))
    if len(set(normalised)) != len(normalised):
        seen = {}
        for original, key in zip(keys, normalised):
            if key in seen:
                raise EmbeddingsFileError(
                    f"{source}: duplicate key after normalising paths: "
                    f"{seen[key]!r} and {original!r} are both {key!r}"
                )
            seen[key] = original
    return normalised


def _check_finite(keys, matrix, source):
    """Refuse rows with NaN or infinite values, naming the first one."""
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise EmbeddingsFileError(
            f"{source}: {len(bad)} embedding(s) with NaN or infinite values, "
            f"first {keys[bad[0]]!r}"
        )


def _mapping_to_matrix(mapping, source, consume=False):
    """Validate a ``Dict[str, Tensor]`` and stack it into a float32 matrix.

    With ``consume=True`` entries are removed from ``mapping`` as they are
    copied, so that the dict and the matrix are never both fully in memory.
    """
    if not isinstance(mapping, dict):
        raise EmbeddingsFileError(
            f"{source}: expected a dict of key -> embedding tensor, "
            f"found {type(mapping).__name__}"
        )
    if not mapping:
        raise EmbeddingsFileError(f"{source}: no embeddings (empty dict)")
    keys = list(mapping)
    normalised = _check_keys(keys, source)
    first = mapping[keys[0]]
    dim = _row(first, keys[0], None, source).shape[0]
    matrix = np.empty((len(keys), dim), dtype=np.float32)
    for index, key in enumerate(keys):
        value = mapping.pop(key) if consume else mapping[key]
        matrix[index] = _row(value, key, dim, source)
    _check_finite(normalised, matrix, source)
    return normalised, matrix


def _row(value, key, dim, source):
    """Return one embedding as a 1-D array, checking type, shape and dim."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise EmbeddingsFileError(
                f"{source}: embedding of {key!r} has dtype {value.dtype}, "
                "expected floating point"
            )
        value = value.detach().float().cpu().numpy()
    elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
        value = value.astype(np.float32, copy=False)
    else:
        raise EmbeddingsFileError(
            f"{source}: embedding of {key!r} is a {type(value).__name__}, "
            "expected a floating-point tensor"
        )
    if value.ndim == 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 1 or value.shape[0] == 0:
        raise EmbeddingsFileError(
            f"{source}: embedding of {key!r} has shape {tuple(value.shape)}, "
            "expected [D] or [1, D]"
        )
    if dim is not None and value.shape[0] != dim:
        raise EmbeddingsFileError(
            f"{source}: embeddings of mixed dimensions: {key!r} has "
            f"{value.shape[0]}, the first one has {dim}"
        )
    return value


def _check_keys_matrix(keys, matrix, source):
    """Validate a ``(keys, matrix)`` pair; return normalised keys, float32."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix)
    if matrix.dtype.kind != "f" or matrix.ndim != 2:
        raise EmbeddingsFileError(
            f"{source}: matrix must be a 2-D floating-point array, found "
            f"{matrix.dtype} of shape {matrix.shape}"
        )
    keys = list(keys)
    if not keys:
        raise EmbeddingsFileError(f"{source}: no embeddings (no keys)")
    if len(keys) != matrix.shape[0]:
        raise EmbeddingsFileError(
            f"{source}: {len(keys)} keys but {matrix.shape[0]} matrix rows"
        )
    if matrix.shape[1] == 0:
        raise EmbeddingsFileError(f"{source}: embeddings of dimension 0")
    normalised = _check_keys(keys, source)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    _check_finite(normalised, matrix, source)
    return normalised, matrix


def save_embeddings(embeddings, path, write_cache=True):
    """Save embeddings as a ``Dict[str, Tensor]`` file, atomically.

    Arguments
    ---------
    embeddings : dict or tuple
        Either a dict ``key -> Tensor [D] or [1, D]`` or a pair
        ``(keys, matrix)`` with ``matrix`` of shape ``[N, D]`` (tensor or
        array). Keys are utterance paths relative to the wav root.
    path : str or os.PathLike
        The output file.
    write_cache : bool
        Also write the cache files that make :func:`load_embeddings` fast.

    Raises
    ------
    EmbeddingsFileError
        On invalid input (nothing is written).

    Example
    -------
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.pt")
    >>> save_embeddings((["a/b/1.wav", "a/b/2.wav"], torch.eye(2)), path)
    >>> sorted(torch.load(path, weights_only=True))
    ['a/b/1.wav', 'a/b/2.wav']
    """
    path = os.fspath(path)
    if isinstance(embeddings, dict):
        keys, matrix = _mapping_to_matrix(embeddings, path)
    elif isinstance(embeddings, (tuple, list)) and len(embeddings) == 2:
        keys, matrix = _check_keys_matrix(*embeddings, path)
    else:
        raise EmbeddingsFileError(
            f"{path}: save_embeddings takes a dict or a (keys, matrix) pair, "
            f"not {type(embeddings).__name__}"
        )
    # Rows are views of one storage: torch.save writes it once, and loading
    # the file rebuilds one storage instead of one per utterance.
    rows = torch.from_numpy(matrix).unbind(0)
    atomic_torch_save(dict(zip(keys, rows)), path)
    if write_cache:
        _write_cache(path, keys, matrix)


def load_embeddings(path, use_cache=True, write_cache=True):
    """Load and validate an embeddings file; return keys and a matrix.

    Loading is safe: a plain tensor dict is read by
    :func:`~speechbrain_ext.dataio.tensor_dict_file.read_matrix` (an
    allow-list of globals, nothing executed), anything else by
    ``torch.load(weights_only=True)``. The cache beside the file is
    used when it matches the file's size and modification time; otherwise
    the file is read and the cache (re)written (best effort: a read-only
    folder only costs speed).

    Arguments
    ---------
    path : str or os.PathLike
        A ``Dict[str, Tensor]`` file, values ``[D]`` or ``[1, D]``.
    use_cache : bool
        Read the cache when it is valid.
    write_cache : bool
        Write the cache after reading the file itself.

    Returns
    -------
    keys : list of str
        Utterance keys in file order, paths normalised (``/``, no ``./``).
    matrix : numpy.ndarray
        float32 ``[N, D]``, row ``i`` the embedding of ``keys[i]``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    EmbeddingsFileError
        One line naming the file: empty, not a dict, a value that is not a
        floating-point tensor of shape ``[D]`` or ``[1, D]``, mixed
        dimensions, NaN/inf values, duplicate keys after normalising paths.
    speechbrain_ext.utils.io_utils.UnsafeCheckpointError
        If the file would need arbitrary unpickling.

    Example
    -------
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.pt")
    >>> torch.save({"a/b/1.wav": torch.ones(1, 3)}, path)
    >>> keys, matrix = load_embeddings(path)  # reads the file, writes cache
    >>> keys, matrix = load_embeddings(path)  # reads the cache
    >>> keys, matrix.tolist()
    (['a/b/1.wav'], [[1.0, 1.0, 1.0]])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: embeddings file not found")
    if os.path.getsize(path) == 0:
        raise EmbeddingsFileError(f"{path}: empty file")
    if use_cache:
        cached = _read_cache(path)
        if cached is not None:
            return cached
    stat = os.stat(path)
    keys, matrix = _read_file(path)
    if write_cache:
        try:
            _write_cache(path, keys, matrix, stat)
        except OSError as error:
            logger.warning("%s: cannot write the cache (%s)", path, error)
    return keys, matrix


def _read_file(path):
    """Keys and matrix of the file itself: the fast reader of
    :mod:`~speechbrain_ext.dataio.tensor_dict_file` when the file is a
    plain tensor dict, else ``torch.load(weights_only=True)``."""
    loaded = read_matrix(path)
    if loaded is not None:
        return _check_keys_matrix(*loaded, path)
    try:
        mapping = safe_torch_load(path)
    except CorruptFileError as error:
        raise EmbeddingsFileError(str(error)) from None
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        # Some garbage bytes trip the unpickler before it can say so.
        raise EmbeddingsFileError(
            f"{path}: cannot be read as a torch file "
            f"({type(error).__name__}: {error})"
        ) from None
    return _mapping_to_matrix(mapping, path, consume=True)


def _source_signature(stat):
    return {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def _write_cache(path, keys, matrix, stat=None):
    """Write keys, matrix, then the metadata that validates them."""
    stat = os.stat(path) if stat is None else stat
    paths = cache_paths(path)
    with atomic_open(paths["keys"]) as f:
        f.write("\n".join(keys) + "\n")
    with atomic_path(paths["matrix"]) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, matrix, allow_pickle=False)
    meta = {
        "version": CACHE_VERSION,
        **_source_signature(stat),
        "n": len(keys),
        "dim": int(matrix.shape[1]),
        "keys_size": os.path.getsize(paths["keys"]),
        "matrix_size": os.path.getsize(paths["matrix"]),
    }
    with atomic_open(paths["meta"]) as f:
        json.dump(meta, f)


def _read_cache(path):
    """Return ``(keys, matrix)`` from a valid cache, else ``None``."""
    paths = cache_paths(path)
    try:
        with open(paths["meta"], encoding="utf-8") as f:
            meta = json.load(f)
        expected = {
            "version": CACHE_VERSION,
            **_source_signature(os.stat(path)),
        }
        if any(meta.get(k) != v for k, v in expected.items()):
            logger.info("%s: cache is stale, reading the file", path)
            return None
        if os.path.getsize(paths["keys"]) != meta["keys_size"] or (
            os.path.getsize(paths["matrix"]) != meta["matrix_size"]
        ):
            logger.info("%s: cache is incomplete, reading the file", path)
            return None
        with open(paths["keys"], encoding="utf-8") as f:
            keys = f.read().split("\n")[:-1]
        matrix = np.load(paths["matrix"], allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.info("%s: no usable cache (%s)", path, error)
        return None
    if (
        matrix.dtype != np.float32
        or matrix.shape != (meta["n"], meta["dim"])
        or len(keys) != meta["n"]
    ):
        logger.info("%s: cache does not match its metadata", path)
        return None
    return keys, matrix
