"""Finding and loading trained embedding models, with clear errors.

A model comes either from training (a SpeechBrain ``Checkpointer`` folder
``OUT/save/CKPT+*/`` whose ``embedding_model.ckpt`` is the state dict of the
model and ``architecture.ckpt`` its ``!new:`` HyperPyYAML, see
:mod:`speechbrain_ext.pretrained.architecture`) or from an exported folder
(``hyperparams.yaml`` + ``embedding_model.ckpt``, see
``recipes/export_pretrained.py``); either way the architecture is read from
the folder, never re-declared. Checkpoints are read with
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

from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_ext.lobes.wavlm.state_dict import state_dict_problems
from speechbrain_ext.pretrained.architecture import (
    ARCHITECTURE_FILE,
    model_from_yaml,
    read_architecture,
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


def has_checkpoints(path):
    """Whether ``path`` is a training output: a ``CKPT+*`` folder, or a
    folder with ``CKPT+*`` folders in it or in its ``save/``.

    Arguments
    ---------
    path : str
        A folder.

    Returns
    -------
    bool

    Example
    -------
    >>> has_checkpoints("/nonexistent")
    False
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, ARCHITECTURE_FILE)):
        return True
    return any(
        glob.glob(os.path.join(folder, "CKPT+*"))
        for folder in (path, os.path.join(path, "save"))
    )


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
    hparams_file = os.path.join(path, "hyperparams.yaml")
    with open(hparams_file, encoding="utf-8") as f:
        model = model_from_yaml(f.read(), hparams_file)
    load_state(model, path, "embedding_model")
    return model.eval()


def load_embedding_model(source):
    """The trained embedding model of a training run or an exported folder.

    The architecture is read, never re-declared: a training checkpoint
    carries it (``architecture.ckpt``, see
    :mod:`speechbrain_ext.pretrained.architecture`), an exported folder in
    its ``hyperparams.yaml``.

    Arguments
    ---------
    source : str
        A training output folder ``OUT``, its ``OUT/save``, a ``CKPT+*``
        folder (the latest complete checkpoint is used), or an exported
        folder (``hyperparams.yaml`` + ``embedding_model.ckpt``).

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    origin : str
        The folder the weights came from.

    Raises
    ------
    CheckpointNotFoundError, ArchitectureError, CheckpointMismatchError
        One line naming the folder or file.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA
    >>> from speechbrain_ext.pretrained.architecture import ArchitectureRecord
    >>> model = FbankECAPA(20, [8, 8, 8, 8, 24], 8, 8, 16)
    >>> out = tempfile.mkdtemp()
    >>> _ = Checkpointer(os.path.join(out, "save"), {
    ...     "embedding_model": model,
    ...     "architecture": ArchitectureRecord(model)}).save_checkpoint()
    >>> loaded, origin = load_embedding_model(out)
    >>> loaded.arguments["embedding_size"], os.path.basename(origin)[:5]
    (16, 'CKPT+')
    """
    source = os.fspath(source)
    if has_checkpoints(source):
        folder = find_checkpoint(source)
        model = read_architecture(folder)
        load_state(model, folder, "embedding_model")
        return model.eval(), folder
    if os.path.isfile(os.path.join(source, "hyperparams.yaml")):
        return load_exported_model(source), source
    if not os.path.exists(source):
        raise CheckpointNotFoundError(f"{source}: model_source not found")
    raise CheckpointNotFoundError(
        f"{source}: neither a training output (OUT, OUT/save or a CKPT+* "
        "folder) nor an exported model folder (hyperparams.yaml + "
        "embedding_model.ckpt)"
    )
