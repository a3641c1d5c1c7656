"""Atomic file output and safe loading of files that come from outside.

Every output of the recipe is written to a temporary file in the destination
folder and renamed over the destination only once it is complete, so a failed
or killed run never leaves a half-written file nor clobbers the last good one.
"""

import contextlib
import os
import tempfile

import torch


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    Arguments
    ---------
    path : str or os.PathLike
        The final destination.

    Yields
    ------
    str
        A path in the same folder to write to. It is renamed to ``path`` on
        success and removed on error.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(folder, "out.txt")) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("hello")
    >>> open(os.path.join(folder, "out.txt")).read()
    'hello'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Open a file for writing that appears at ``path`` only when complete.

    Arguments
    ---------
    path : str or os.PathLike
        The final destination.
    mode : str
        ``"w"`` (text) or ``"wb"`` (binary).
    **kwargs
        Passed to :func:`open` (e.g. ``encoding``).

    Yields
    ------
    file object

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> with atomic_open(path) as f:
    ...     _ = f.write("0 a/b/c.wav\\n")
    >>> open(path).read()
    '0 a/b/c.wav\\n'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_torch_save(obj, path):
    """Save ``obj`` with :func:`torch.save` atomically.

    Arguments
    ---------
    obj : object
        Anything :func:`torch.save` accepts.
    path : str or os.PathLike
        The final destination.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.pt")
    >>> atomic_torch_save({"a": torch.ones(2)}, path)
    >>> safe_torch_load(path)["a"]
    tensor([1., 1.])
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class UnsafeCheckpointError(RuntimeError):
    """Raised when a file can only be loaded by executing arbitrary code."""


class CorruptFileError(RuntimeError):
    """Raised when a file is truncated, corrupt or in an unexpected format."""


def safe_torch_load(path, map_location="cpu"):
    """Load a file with ``torch.load(weights_only=True)`` and clear errors.

    A file that needs arbitrary unpickling is refused (never executed) with
    one line naming the file.

    Arguments
    ---------
    path : str or os.PathLike
        The file to load.
    map_location : str or torch.device
        Where to put the tensors.

    Returns
    -------
    object
        The loaded object.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    UnsafeCheckpointError
        If the file needs arbitrary unpickling (``weights_only=True`` fails).
    CorruptFileError
        If the file is truncated or not a torch file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        lines = str(error).strip().splitlines()
        detail = lines[0] if lines else type(error).__name__
        if "weights only load failed" in str(error).lower():
            raise UnsafeCheckpointError(
                f"{path}: refused, it cannot be loaded with weights_only=True "
                f"and would need arbitrary code to unpickle ({detail})"
            ) from None
        raise CorruptFileError(
            f"{path}: cannot be read as a torch file "
            f"({type(error).__name__}: {detail})"
        ) from None
