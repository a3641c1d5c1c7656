"""Finding and loading trained embedding models, with clear errors.

A model comes either from training (a SpeechBrain ``Checkpointer`` folder
``OUT/save/CKPT+*/`` whose ``embedding_model.ckpt`` is the state dict of the
:class:`~speechbrain_ext.lobes.embedding_model.WavLMMHFA`) or from an exported
folder (``hyperparams.yaml`` + ``embedding_model.ckpt``, see
``recipes/export_pretrained.py``). Checkpoints are read with
``weights_only=True`` and loaded strictly: a missing, unexpected or
mis-shaped tensor is one error line naming the file and the first keys.

Example
-------
>>> import os, tempfile, torch
>>> folder = os.path.join(tempfile.mkdtemp(), "CKPT+x")
>>> os.makedirs(folder)
>>> torch.save(torch.nn.Linear(2, 3).state_dict(),
...            os.path.join(folder, "embedding_model.ckpt"))
>>> found = find_checkpoint(folder)
>>> load_state(torch.nn.Linear(2, 3), found, "embedding_model")
>>> load_state(torch.nn.Linear(2, 4), found, "embedding_model")
Traceback (most recent call last):
...
speechbrain_ext.pretrained.checkpoints.CheckpointMismatchError: \
...embedding_model.ckpt: \
does not fit the model built from the hparams: shape mismatch: weight (3, 2) \
in checkpoint vs (4, 2) in model, bias (3,) in checkpoint vs (4,) in model
"""

import glob
import os

from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA
from speechbrain_ext.lobes.embedding_model import WavLMMHFA
from speechbrain_ext.lobes.wavlm import WavLM
from speechbrain_ext.lobes.wavlm.state_dict import state_dict_problems
from speechbrain_ext.pretrained.model_factory import (
    check_encoder,
    mhfa_for,
    wavlm_config,
)
from speechbrain_ext.utils.io_utils import safe_torch_load

EXPORTED_FILES = ("hyperparams.yaml", "embedding_model.ckpt")


class CheckpointMismatchError(ValueError):
    """Raised when a checkpoint's tensors do not fit the model."""


class CheckpointNotFoundError(FileNotFoundError):
    """Raised when no usable checkpoint is found where one is expected."""


def check_state_dict(expected, state_dict, source):
    """Raise one error line naming missing, unexpected, mis-shaped tensors.

    Arguments
    ---------
    expected : dict
        The model's ``state_dict()``.
    state_dict : dict
        The loaded tensors.
    source : str
        The file (for the message).

    Raises
    ------
    CheckpointMismatchError

    Example
    -------
    >>> import torch
    >>> check_state_dict({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, "f")
    Traceback (most recent call last):
    ...
    speechbrain_ext.pretrained.checkpoints.CheckpointMismatchError: f: does \
not fit \
the model built from the hparams: missing keys: a; unexpected keys: b
    """
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(
            f"{source}: expected a state dict, found "
            f"{type(state_dict).__name__}"
        )
    problems = state_dict_problems(expected, state_dict)
    if problems:
        raise CheckpointMismatchError(
            f"{source}: does not fit the model built from the hparams: "
            f"{problems}"
        )


def find_checkpoint(path, name="embedding_model"):
    """The checkpoint folder holding ``<name>.ckpt`` under ``path``.

    Arguments
    ---------
    path : str
        A ``CKPT+*`` folder, a Checkpointer folder (``OUT/save``: its most
        recent complete checkpoint, as SpeechBrain's ``Checkpointer`` finds
        it) or a training output folder ``OUT``.
    name : str
        The recoverable's name.

    Returns
    -------
    str
        The ``CKPT+*`` folder (or ``path`` itself when it holds the file).

    Raises
    ------
    CheckpointNotFoundError
        If there is no such checkpoint.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, f"{name}.ckpt")):
        return path
    for folder in (path, os.path.join(path, "save")):
        if not glob.glob(os.path.join(folder, "CKPT+*")):
            continue
        # Only complete checkpoints (with their CKPT.yaml) are listed: a
        # save killed half-way is skipped.
        latest = Checkpointer(folder).find_checkpoint()
        if latest is None or not os.path.isfile(
            os.path.join(latest.path, f"{name}.ckpt")
        ):
            raise CheckpointNotFoundError(
                f"{folder}: no complete checkpoint with {name}.ckpt among "
                "its CKPT+* folders"
            )
        return str(latest.path)
    raise CheckpointNotFoundError(
        f"{path}: no {name}.ckpt here nor in a CKPT+* folder under it "
        "(or under save/)"
    )


def load_state(module, folder, name):
    """Load ``folder/<name>.ckpt`` strictly into ``module``.

    Arguments
    ---------
    module : torch.nn.Module
        The model built from the hparams.
    folder : str
        The checkpoint or exported folder.
    name : str
        The recoverable's name.

    Raises
    ------
    CheckpointMismatchError
        If the tensors do not fit the model.
    """
    path = os.path.join(folder, f"{name}.ckpt")
    state = safe_torch_load(path)
    check_state_dict(module.state_dict(), state, path)
    module.load_state_dict(state)


def is_exported_folder(path):
    """Whether ``path`` looks like an exported model folder.

    Arguments
    ---------
    path : str
        A folder.

    Returns
    -------
    bool

    Example
    -------
    >>> is_exported_folder("/nonexistent")
    False
    """
    return os.path.isfile(os.path.join(path, "hyperparams.yaml"))


def check_exported_folder(path):
    """Raise if an exported folder lacks one of its files.

    Arguments
    ---------
    path : str
        The folder.

    Raises
    ------
    FileNotFoundError
        ``PATH: exported model folder is missing FILE (...)``.

    Example
    -------
    >>> check_exported_folder("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent: not a folder (expected an exported model)
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: not a folder (expected an exported model)"
        )
    missing = [
        f for f in EXPORTED_FILES if not os.path.isfile(os.path.join(path, f))
    ]
    if missing:
        raise FileNotFoundError(
            f"{path}: exported model folder is missing {', '.join(missing)} "
            f"(expected {', '.join(EXPORTED_FILES)}, see "
            "recipes/export_pretrained.py)"
        )


def load_exported_model(path):
    """Build and load the embedding model of an exported folder (eval mode).

    Arguments
    ---------
    path : str
        The exported folder.

    Returns
    -------
    torch.nn.Module
        The ``embedding_model`` of its ``hyperparams.yaml``.
    """
    check_exported_folder(path)
    with open(os.path.join(path, "hyperparams.yaml"), encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f)
    model = hparams["embedding_model"]
    load_state(model, path, "embedding_model")
    return model.eval()


def load_embedding_model(source, model=None):
    """The embedding model from a training checkpoint or an exported folder.

    Arguments
    ---------
    source : str
        An exported folder (has ``hyperparams.yaml``), a ``CKPT+*`` folder,
        a Checkpointer folder or a training output folder.
    model : torch.nn.Module, optional
        The model built from the hparams; required for training checkpoints
        (they hold weights only).

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    origin : str
        The folder the weights came from.
    """
    source = os.fspath(source)
    if is_exported_folder(source):
        return load_exported_model(source), source
    if model is None:
        raise CheckpointNotFoundError(
            f"{source}: not an exported model folder, and no model "
            "architecture was given to load a training checkpoint into"
        )
    folder = find_checkpoint(source)
    load_state(model, folder, "embedding_model")
    return model.eval(), folder


def build_architecture(
    preset="base_plus",
    n_heads=64,
    compression_size=128,
    output_size=256,
    wavlm_overrides=None,
    encoder="wavlm",
    ecapa=None,
):
    """An untrained embedding model of the given sizes, to load weights into.

    Arguments
    ---------
    preset : str
        WavLM preset (``tiny``, ``base``, ``base_plus``, ``large``).
    n_heads, compression_size, output_size : int
        MHFA sizes (``output_size``: the embedding size of either encoder).
    wavlm_overrides : dict, optional
        WavLM config fields changed from the preset.
    encoder : str
        ``"wavlm"`` (WavLM + MHFA) or ``"ecapa"`` (Fbank + ECAPA-TDNN).
    ecapa : dict, optional
        ECAPA-TDNN sizes (see :class:`FbankECAPA`).

    Returns
    -------
    WavLMMHFA or FbankECAPA

    Example
    -------
    >>> build_architecture("tiny", 4, 8, 16).mhfa.n_layers
    3
    >>> ecapa = {"n_mels": 20, "channels": [8, 8, 8, 8, 24],
    ...          "attention_channels": 8, "se_channels": 8}
    >>> type(build_architecture(output_size=16, encoder="ecapa",
    ...                         ecapa=ecapa)).__name__
    'FbankECAPA'
    """
    check_encoder(encoder)
    if encoder == "ecapa":
        return FbankECAPA(**(ecapa or {}), embedding_size=output_size)
    config = wavlm_config(preset, **(wavlm_overrides or {}))
    mhfa = mhfa_for(config, n_heads, compression_size, output_size)
    return WavLMMHFA(WavLM(config), mhfa)
