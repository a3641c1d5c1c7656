"""Command-line plumbing shared by the stage scripts.

Example
-------
>>> pick_device(None) in ("cpu", "cuda:0")
True
"""

import contextlib
import os
import re
import shutil
import sys

import ruamel.yaml
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.utils.distributed import (
    ddp_init_group,
    get_local_rank,
    if_main_process,
    is_distributed_initialized,
)

from speechbrain_ext.dataio.audio import AudioError
from speechbrain_ext.dataio.shards import NonFiniteError
from speechbrain_ext.lobes.wavlm import WavLMCheckpointError
from speechbrain_ext.pretrained.architecture import ArchitectureError
from speechbrain_ext.pretrained.checkpoints import CheckpointMismatchError
from speechbrain_ext.utils.finite import (
    NonFiniteCheckpointError,
    NonFiniteLossError,
)
from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    OutputWriteError,
    UnsafeCheckpointError,
)
from speechbrain_ext.utils.stage_logging import setup_stage_logging

#: Bad-input errors of every stage that loads a model and reads audio.
MODEL_INPUT_ERRORS = (
    ArchitectureError,
    AudioError,
    CheckpointMismatchError,
    CorruptFileError,
    FileNotFoundError,
    NonFiniteError,
    OutputWriteError,
    UnsafeCheckpointError,
    WavLMCheckpointError,
)

#: Errors that stop a training run (one line; the last good checkpoint is
#: kept).
TRAINING_ERRORS = MODEL_INPUT_ERRORS + (
    NonFiniteCheckpointError,
    NonFiniteLossError,
)

#: Keys of the hparams that name outputs (checked before any work).
OUTPUT_KEYS = ("output_folder", "output_file", "save_folder", "embeddings_file")


def _plain_number_or_bool(value):
    """Whether a YAML default is a plain bool/int/float (no tag)."""
    return isinstance(value, (bool, int, float)) and not hasattr(value, "tag")


def override_type_problem(key, value, default):
    """Why an override does not have the type of its default, if it does not.

    Only defaults that are plain numbers or booleans are checked; ``null``
    and tagged values (``!ref``, ``!name:``...) are accepted. Keys ending in
    ``_prob`` or ``_fraction`` must be in [0, 1].

    Arguments
    ---------
    key : str
        The hparams key.
    value : object
        The override, as YAML read it.
    default : object
        The value in the hparams file.

    Returns
    -------
    str or None

    Example
    -------
    >>> override_type_problem("lr", "abc", 0.005)
    "--lr=abc: expected a number (the default is 0.005), got the text 'abc'"
    >>> override_type_problem("lr", 1, 0.005) is None
    True
    >>> override_type_problem("epochs", 1.5, 15)
    '--epochs=1.5: expected an integer (the default is 15)'
    >>> override_type_problem("noise_prob", 1.5, 0.0)
    '--noise_prob=1.5: expected a fraction in [0, 1]'
    """
    if (
        value is None
        or hasattr(value, "tag")  # !ref, !name: ... are not checked
        or not _plain_number_or_bool(default)
    ):
        return None
    got = f", got the text {value!r}" if isinstance(value, str) else ""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return f"--{key}={value}: expected True or False{got}"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if isinstance(default, int) else "a number"
        return (
            f"--{key}={value}: expected {kind} (the default is {default}){got}"
        )
    if isinstance(default, int) and not isinstance(value, int):
        return (
            f"--{key}={value}: expected an integer (the default is {default})"
        )
    if key.endswith(("_prob", "_fraction")) and not 0 <= value <= 1:
        return f"--{key}={value}: expected a fraction in [0, 1]"
    return None


def parse_stage_arguments(argv):
    """``sb.parse_arguments`` plus one-line checks of the command line.

    Exits with one line (code 1) when the hparams file does not exist, a
    ``--key`` is given twice, or an override of a number or boolean is not
    one (``--lr_backend=abc``).

    Arguments
    ---------
    argv : list of str
        Command-line arguments after the script name.

    Returns
    -------
    hparams_file : str
    run_opts : speechbrain RunOptions
    overrides : str
        The overrides as SpeechBrain passes them (YAML text).
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    if not os.path.isfile(hparams_file):
        sys.exit(f"{hparams_file}: hparams file not found")
    reader = ruamel.yaml.YAML(typ="rt")
    try:
        values = reader.load(overrides) or {}
    except ruamel.yaml.constructor.DuplicateKeyError as error:
        match = re.search(r'duplicate key "([^"]+)"', str(error))
        key = match.group(1) if match else "a key"
        sys.exit(f"{hparams_file}: --{key} is given more than once")
    except ruamel.yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0]
        sys.exit(f"{hparams_file}: unreadable override ({first})")
    with open(hparams_file, encoding="utf-8") as f:
        try:
            defaults = ruamel.yaml.YAML(typ="rt").load(f)
        except ruamel.yaml.YAMLError as error:
            first = str(error).strip().splitlines()[0]
            sys.exit(f"{hparams_file}: not valid YAML ({first})")
    if isinstance(values, dict) and isinstance(defaults, dict):
        for key, value in values.items():
            problem = override_type_problem(key, value, defaults.get(key))
            if problem:
                sys.exit(f"{hparams_file}: {problem}")
    return hparams_file, run_opts, overrides


def preview_hparams(hparams_file, overrides):
    """Plain values of the hparams, before any object is built.

    Unknown override keys and missing ``!PLACEHOLDER`` inputs exit with one
    line naming the key, so nothing is written.

    Arguments
    ---------
    hparams_file : str
        The yaml file.
    overrides : dict or str
        Command-line overrides.

    Returns
    -------
    dict
        Top-level values with references resolved (tags left unbuilt).
    """
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            text = resolve_references(
                fin, overrides, overrides_must_match=True
            ).getvalue()
    except KeyError as error:
        sys.exit(f"{hparams_file}: {error.args[0]}")
    except ValueError as error:
        if "PLACEHOLDER" not in str(error):
            sys.exit(f"{hparams_file}: {error}")
        sys.exit(f"{hparams_file}: required input missing: {error}")
    return ruamel.yaml.YAML(typ="rt").load(text)


def output_path_problem(path):
    """Why ``path`` cannot be created and written, if it cannot.

    Arguments
    ---------
    path : str
        A file or folder to be written.

    Returns
    -------
    str or None

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> output_path_problem(os.path.join(folder, "a", "b")) is None
    True
    >>> open(os.path.join(folder, "f"), "w").close()
    >>> output_path_problem(os.path.join(folder, "f", "out")).endswith(
    ...     "f is a file, not a folder")
    True
    """
    path = os.path.abspath(os.fspath(path))
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent == path and os.path.isdir(path):
        target = path
    elif parent == path:
        target = os.path.dirname(path)
    else:
        target = parent
    if not os.path.isdir(target):
        return f"{target} is a file, not a folder"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"{target} is not writable"
    return None


def check_output_paths(hparams, keys=OUTPUT_KEYS):
    """Exit with one line if an output named in ``hparams`` is unwritable.

    Arguments
    ---------
    hparams : dict
        Plain values (e.g. from :func:`preview_hparams`).
    keys : sequence of str
        Keys naming outputs; absent or null ones are skipped.
    """
    for key in keys:
        value = hparams.get(key)
        if isinstance(value, str) and value:
            problem = output_path_problem(value)
            if problem:
                sys.exit(f"--{key}={value}: cannot write there: {problem}")


def load_stage_hparams(argv, distributed=False):
    """Parse ``SCRIPT HPARAMS.yaml [--key=value ...]`` and load the hparams.

    A missing hparams file or ``!PLACEHOLDER``, an unknown, repeated or
    mistyped override key, an output path that cannot be written, or a bad
    model file built by the hparams exits with one line naming the key or
    file (exit code 1) before anything is written.

    Arguments
    ---------
    argv : list of str
        Command-line arguments after the script name.
    distributed : bool
        Join the ``torchrun`` process group (SpeechBrain's
        ``ddp_init_group``, between parsing and loading as in SpeechBrain
        recipes); nothing happens outside ``torchrun``.

    Returns
    -------
    hparams_file : str
    run_opts : speechbrain RunOptions
    overrides : str
        The command-line overrides (for ``create_experiment_directory``).
    hparams : dict
    """
    hparams_file, run_opts, overrides = parse_stage_arguments(argv)
    if distributed:
        ddp_init_group(run_opts)
    check_output_paths(preview_hparams(hparams_file, overrides))
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(fin, overrides)
    except (ValueError, KeyError) as error:
        message = error.args[0] if error.args else str(error)
        sys.exit(f"{hparams_file}: {message}")
    except MODEL_INPUT_ERRORS as error:
        sys.exit(error_line(error))
    return hparams_file, run_opts, overrides, hparams


def pick_device(device):
    """The device to run on: the one asked for, else CUDA when present.

    Under ``torchrun``, a CUDA device means this process's own GPU,
    ``cuda:LOCAL_RANK`` (so ``--device=cuda:0`` given to every process
    still spreads them over the node's GPUs).

    Arguments
    ---------
    device : str or None
        ``--device`` from the command line.

    Returns
    -------
    str

    Example
    -------
    >>> pick_device("cpu")
    'cpu'
    """
    if not device:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    local_rank = get_local_rank()
    if local_rank is not None and device.startswith("cuda"):
        return f"cuda:{local_rank}"
    return device


@contextlib.contextmanager
def exit_on_input_errors(errors):
    """Turn any of ``errors`` into a one-line exit (code 1).

    Arguments
    ---------
    errors : tuple of type
        The exception classes that mean bad input.

    Example
    -------
    >>> try:
    ...     with exit_on_input_errors((FileNotFoundError,)):
    ...         raise FileNotFoundError("x.wav: not found")
    ... except SystemExit as error:
    ...     print(error)
    x.wav: not found
    """
    try:
        yield
    except errors as error:
        sys.exit(error_line(error))


def error_line(error):
    """The one-line message of an exception, without Python's decorations.

    Arguments
    ---------
    error : Exception

    Returns
    -------
    str

    Example
    -------
    >>> error_line(KeyError("x.wav: not found"))
    'x.wav: not found'
    >>> error_line(FileNotFoundError(2, "No such file", "a.pt"))
    'a.pt: No such file'
    >>> error_line(ValueError("label '2'"))
    "label '2'"
    """
    if isinstance(error, OSError) and error.strerror:
        if error.filename is not None:
            return f"{error.filename}: {error.strerror}"
        return error.strerror
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


def run_stage(argv, stage, errors, distributed=False):
    """Run ``stage(hparams, device, progress=...)`` from the command line.

    Loads the hparams of ``argv`` (see :func:`load_stage_hparams`), sets up
    logging and turns bad-input ``errors`` into a one-line exit.

    Arguments
    ---------
    argv : list of str
        Command-line arguments after the script name.
    stage : callable
        The stage function.
    errors : tuple of type
        The exception classes that mean bad input.
    distributed : bool
        The stage supports ``torchrun``: join its process group first, and
        leave it at the end.

    Returns
    -------
    object
        What ``stage`` returns.

    Example
    -------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "stage.yaml")
    ...     with open(path, "w") as f:
    ...         _ = f.write("size: 3\\n")
    ...     run_stage([path, "--size=4"], lambda h, d, progress: h["size"], ())
    4
    """
    _, run_opts, _, hparams = load_stage_hparams(argv, distributed)
    setup_stage_logging()
    with exit_on_input_errors(errors):
        result = stage(
            hparams,
            pick_device(run_opts.device),
            progress=not run_opts.noprogressbar,
        )
    if distributed and is_distributed_initialized():
        torch.distributed.destroy_process_group()
    return result


@contextlib.contextmanager
def removed_on_failure(folder):
    """Remove ``folder`` when the block fails, if the block created it.

    Start-up errors (bad inputs found after the output folder was made)
    then leave no half-made folder; a folder that existed before (a run
    being resumed) is never touched.

    Arguments
    ---------
    folder : str
        The output folder.

    Example
    -------
    >>> import tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "out")
    >>> try:
    ...     with removed_on_failure(folder):
    ...         os.makedirs(folder)
    ...         raise SystemExit("bad input")
    ... except SystemExit:
    ...     pass
    >>> os.path.exists(folder)
    False
    """
    existed = os.path.exists(folder)
    try:
        yield
    except BaseException:
        if not existed and if_main_process():
            shutil.rmtree(folder, ignore_errors=True)
        raise
