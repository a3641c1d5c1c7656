"""Atomic file output and safe loading of files that come from outside.

Every output of the recipe is written to a temporary file in the destination
folder and renamed over the destination only once it is complete, so a failed
or killed run never leaves a half-written file nor clobbers the last good one.
A temporary file carries its writer's process id in its name
(``.NAME.PID.RANDOM.tmp``); one whose writer is gone (killed, or the machine
rebooted) is removed at the next start by :func:`remove_stale_temporaries`.
"""

import contextlib
import errno
import os
import pickletools
import re
import tempfile
import zipfile

import torch

#: Name of a temporary file of :func:`atomic_path`: ``.NAME.PID.RANDOM.tmp``.
TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


class OutputWriteError(OSError):
    """Raised when an output cannot be written (disk full, permissions).

    ``OutputWriteError(errno, message)``; its text is the message alone.
    """

    def __str__(self):
        """The message, without the ``[Errno N]`` prefix."""
        return self.strerror or super().__str__()


def process_alive(pid):
    """Whether a process with this id exists (on this machine).

    Arguments
    ---------
    pid : int

    Returns
    -------
    bool

    Example
    -------
    >>> process_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder, recursive=False):
    """Remove temporary files of :func:`atomic_path` whose writer is gone.

    A file whose writing process still runs is left alone, so this is safe
    while other processes write to the same folder.

    Arguments
    ---------
    folder : str
        Where to look.
    recursive : bool
        Also look in sub-folders.

    Returns
    -------
    list of str
        The removed files.

    Example
    -------
    >>> folder = tempfile.mkdtemp()
    >>> dead = os.path.join(folder, ".labels.txt.999999999.abc.tmp")
    >>> mine = os.path.join(folder, f".labels.txt.{os.getpid()}.abc.tmp")
    >>> for path in (dead, mine):
    ...     open(path, "w").close()
    >>> [os.path.basename(p) for p in remove_stale_temporaries(folder)]
    ['.labels.txt.999999999.abc.tmp']
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    walk = os.walk(folder) if recursive else [next(os.walk(folder))]
    for root, _, files in walk:
        for name in files:
            match = TEMPORARY_NAME.match(name)
            if match and not process_alive(int(match.group(1))):
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    removed.append(path)
    return removed


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

    Raises
    ------
    OutputWriteError
        For any ``OSError`` while writing (disk full, permissions), with
        one line naming ``path``.

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
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=folder,
            prefix=f".{os.path.basename(path)}.{os.getpid()}.",
            suffix=".tmp",
        )
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_current_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(error, OSError) and not isinstance(
            error, OutputWriteError
        ):
            raise _write_error(path, error) from None
        raise


def _write_error(path, error):
    """An :class:`OutputWriteError` naming ``path`` (disk full...)."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space; the previous file, if any, is kept)"
    return OutputWriteError(error.errno, f"{path}: cannot write it: {reason}")


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
        raise load_error(path, error) from None


def _pickle_opcodes(path):
    """Opcode names of the pickle in ``path`` (a torch zip's ``data.pkl``).

    Raises ``ValueError`` (or another error) when it is not a pickle.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                raise ValueError("no data.pkl")
            data = archive.read(names[0])
    else:
        with open(path, "rb") as f:
            data = f.read(64 * 2**20)
    return {opcode.name for opcode, _, _ in pickletools.genops(data)}


#: Pickle opcodes that import or call Python code when unpickled.
CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE"}


def load_error(path, error):
    """The one-line error for a file ``torch.load`` could not read.

    A pickle that names Python code (a class or function to import and
    call) is :class:`UnsafeCheckpointError`; anything else (random bytes,
    a truncated or foreign file) is :class:`CorruptFileError`.

    Arguments
    ---------
    path : str
        The file.
    error : Exception
        What ``torch.load(weights_only=True)`` raised.

    Returns
    -------
    UnsafeCheckpointError or CorruptFileError

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "random.pt")
    >>> _ = open(path, "wb").write(bytes(range(7, 200)))
    >>> try:
    ...     torch.load(path, weights_only=True)
    ... except Exception as error:
    ...     print(load_error(path, error))  # doctest: +ELLIPSIS
    /...random.pt: not a torch file (unreadable as a checkpoint: ...)
    """
    text = str(error)
    lines = text.strip().splitlines()
    detail = lines[0] if lines else type(error).__name__
    blocked = re.search(
        r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.I
    )
    if blocked:
        return UnsafeCheckpointError(
            f"{path}: refused, loading it would run Python code "
            f"({blocked.group(1)}); only plain tensors and numbers are "
            "accepted (torch.load weights_only=True)"
        )
    if "weights only load failed" in text.lower():
        try:
            opcodes = _pickle_opcodes(path)
        except Exception:  # not a pickle at all
            opcodes = None
        if opcodes is not None and opcodes & CODE_OPCODES:
            return UnsafeCheckpointError(
                f"{path}: refused, it is a pickle that would need arbitrary "
                "code to unpickle; only plain tensors and numbers are "
                "accepted (torch.load weights_only=True)"
            )
        detail = next(
            (line.strip() for line in lines if "Unsupported" in line), detail
        )
    return CorruptFileError(
        f"{path}: not a torch file (unreadable as a checkpoint: {detail})"
    )


def round_floats(value, digits=8):
    """``value`` with every float rounded to ``digits`` significant digits.

    For JSON meant to be read: ``100 * 0.388`` prints as
    ``38.800000000000004``; 8 digits keep every figure derived from
    float32 scores (about 7 significant digits) intact.

    Arguments
    ---------
    value : object
        Floats, and dicts / lists / tuples of them (other values unchanged).
    digits : int
        Significant digits kept.

    Returns
    -------
    object

    Example
    -------
    >>> round_floats({"EER": 100 * 0.388, "n": 3, "t": [0.1 + 0.2, None]})
    {'EER': 38.8, 'n': 3, 't': [0.3, None]}
    """
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(item, digits) for item in value]
    return value
