"""Command-line plumbing shared by the evaluation stage scripts.

Example
-------
>>> pick_device(None) in ("cpu", "cuda:0")
True
"""

import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml


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
    return hparams_file, run_opts, hparams


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
