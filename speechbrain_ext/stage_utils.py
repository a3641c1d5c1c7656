"""Command-line plumbing shared by the stage scripts.

Example
-------
>>> pick_device(None) in ("cpu", "cuda:0")
True
"""

import contextlib
import logging
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.audio import AudioError
from speechbrain_ext.checkpoints import CheckpointMismatchError
from speechbrain_ext.io_utils import CorruptFileError, UnsafeCheckpointError

#: Bad-input errors of every stage that loads a model and reads audio.
MODEL_INPUT_ERRORS = (
    AudioError,
    CheckpointMismatchError,
    CorruptFileError,
    FileNotFoundError,
    UnsafeCheckpointError,
)


def load_stage_hparams(argv):
    """Parse ``SCRIPT HPARAMS.yaml [--key=value ...]`` and load the hparams.

    A missing ``!PLACEHOLDER`` or an unknown override key exits with one
    line naming the key (exit code 1) before anything is written.

    Arguments
    ---------
    argv : list of str
        Command-line arguments after the script name.

    Returns
    -------
    hparams_file : str
    run_opts : speechbrain RunOptions
    overrides : str
        The command-line overrides (for ``create_experiment_directory``).
    hparams : dict
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(fin, overrides)
    except FileNotFoundError:
        sys.exit(f"{hparams_file}: hparams file not found")
    except (ValueError, KeyError) as error:
        message = error.args[0] if error.args else str(error)
        sys.exit(f"{hparams_file}: {message}")
    return hparams_file, run_opts, overrides, hparams


def pick_device(device):
    """The device to run on: the one asked for, else CUDA when present.

    Arguments
    ---------
    device : str or None
        ``--device`` from the command line.

    Returns
    -------
    str
    """
    if device:
        return device
    return "cuda:0" if torch.cuda.is_available() else "cpu"


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
    ...         raise FileNotFoundError("'x.wav: not found'")
    ... except SystemExit as error:
    ...     print(error)
    x.wav: not found
    """
    try:
        yield
    except errors as error:
        sys.exit(str(error).strip("'\""))


def run_stage(argv, stage, errors):
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
    _, run_opts, _, hparams = load_stage_hparams(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_input_errors(errors):
        return stage(
            hparams,
            pick_device(run_opts.device),
            progress=not run_opts.noprogressbar,
        )
