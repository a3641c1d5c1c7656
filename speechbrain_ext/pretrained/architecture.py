"""The architecture of an embedding model as a HyperPyYAML ``!new:`` recipe.

One representation serves every stage after training: a training run
records it in each checkpoint (``CKPT+*/architecture.ckpt``, through the
:class:`ArchitectureRecord` recoverable of its hparams), the exported
folder's ``hyperparams.yaml`` contains it, and extraction, evaluation and
export rebuild the model from it instead of re-declaring its sizes.

Example
-------
>>> from speechbrain_ext.lobes.embedding_model import WavLMMHFA
>>> from speechbrain_ext.lobes.mhfa import MHFA
>>> from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
>>> model = WavLMMHFA(WavLM(WavLMConfig.tiny()), MHFA(3, 64, 4, 8, 16))
>>> print(model_yaml(model).splitlines()[0])
wavlm_config: !new:speechbrain_ext.lobes.wavlm.WavLMConfig
>>> rebuilt = model_from_yaml(model_yaml(model), "example")
>>> rebuilt.mhfa.n_layers, type(rebuilt).__name__
(3, 'WavLMMHFA')
"""

import dataclasses
import json
import os

from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA

ARCHITECTURE_FILE = "architecture.ckpt"


class ArchitectureError(ValueError):
    """Raised when an architecture record cannot be read or built."""


def mhfa_arguments(mhfa):
    """The constructor arguments of an MHFA module, read off its layers.

    Arguments
    ---------
    mhfa : speechbrain_ext.lobes.mhfa.MHFA
        The back-end.

    Returns
    -------
    dict

    Example
    -------
    >>> from speechbrain_ext.lobes.mhfa import MHFA
    >>> mhfa_arguments(MHFA(3, 64, 4, 8, 16))["n_heads"]
    4
    """
    return {
        "n_layers": int(mhfa.n_layers),
        "input_size": mhfa.cmp_linear_k.in_features,
        "n_heads": mhfa.att_head.out_features,
        "compression_size": mhfa.cmp_linear_k.out_features,
        "output_size": mhfa.pooling_fc.out_features,
    }


def wavlm_arguments(config):
    """A WavLM config as plain values (pre-training-only ``extra`` dropped).

    Arguments
    ---------
    config : speechbrain_ext.lobes.wavlm.WavLMConfig
        The config.

    Returns
    -------
    dict

    Example
    -------
    >>> from speechbrain_ext.lobes.wavlm import WavLMConfig
    >>> wavlm_arguments(WavLMConfig.tiny())["conv_layers"][0]
    [32, 10, 5]
    """
    values = {}
    for field in dataclasses.fields(config):
        if field.name == "extra":
            continue
        values[field.name] = getattr(config, field.name)
    values["conv_layers"] = [list(layer) for layer in config.conv_layers]
    return values


def _block(tag, arguments):
    """A YAML mapping under a ``!new:`` tag, values dumped safely."""
    # JSON values are valid YAML and keep nested lists on one line.
    return f"{tag}\n" + "".join(
        f"    {key}: {json.dumps(value)}\n" for key, value in arguments.items()
    )


def model_yaml(model):
    """HyperPyYAML that rebuilds ``model``, untrained.

    Arguments
    ---------
    model : WavLMMHFA or FbankECAPA
        The model.

    Returns
    -------
    str
        Defines ``embedding_model`` (and, for WavLM + MHFA, its parts
        ``wavlm_config``, ``wavlm``, ``mhfa``).

    Example
    -------
    >>> print(model_yaml(FbankECAPA(20, [8, 8, 8, 8, 24], 8, 8, 16)))
    embedding_model: !new:speechbrain_ext.lobes.ecapa_embedding.FbankECAPA
        n_mels: 20
        channels: [8, 8, 8, 8, 24]
        attention_channels: 8
        se_channels: 8
        embedding_size: 16
    <BLANKLINE>
    """
    if isinstance(model, FbankECAPA):
        return "embedding_model: " + _block(
            "!new:speechbrain_ext.lobes.ecapa_embedding.FbankECAPA",
            model.arguments,
        )
    return (
        "wavlm_config: "
        + _block(
            "!new:speechbrain_ext.lobes.wavlm.WavLMConfig",
            wavlm_arguments(model.wavlm.config),
        )
        + "wavlm: !new:speechbrain_ext.lobes.wavlm.WavLM\n"
        "    config: !ref <wavlm_config>\n"
        "mhfa: "
        + _block(
            "!new:speechbrain_ext.lobes.mhfa.MHFA", mhfa_arguments(model.mhfa)
        )
        + "embedding_model: "
        "!new:speechbrain_ext.lobes.embedding_model.WavLMMHFA\n"
        "    wavlm: !ref <wavlm>\n"
        "    mhfa: !ref <mhfa>\n"
    )


def model_from_yaml(text, source):
    """Build the (untrained) ``embedding_model`` that ``text`` declares.

    Arguments
    ---------
    text : str
        HyperPyYAML defining ``embedding_model`` (:func:`model_yaml`, or an
        exported ``hyperparams.yaml``).
    source : str
        The file it comes from (for the message).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ArchitectureError
        One line naming ``source`` when the YAML cannot be built or does
        not define ``embedding_model``.

    Example
    -------
    >>> model_from_yaml("n_mels: 20\\n", "f.yaml")
    Traceback (most recent call last):
    ...
    speechbrain_ext.pretrained.architecture.ArchitectureError: f.yaml: \
defines no embedding_model
    """
    try:
        hparams = load_hyperpyyaml(text)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ArchitectureError(
            f"{source}: cannot build the model it declares: {error}"
        ) from None
    if not isinstance(hparams, dict) or "embedding_model" not in hparams:
        raise ArchitectureError(f"{source}: defines no embedding_model")
    return hparams["embedding_model"]


def read_architecture(folder):
    """Build the untrained model recorded in a training checkpoint folder.

    Arguments
    ---------
    folder : str
        A ``CKPT+*`` folder holding :data:`ARCHITECTURE_FILE`.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ArchitectureError
        One line naming the file when it is missing or unusable.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> ArchitectureRecord(FbankECAPA(20, [8, 8, 8, 8, 24], 8, 8, 16)).save(
    ...     os.path.join(folder, ARCHITECTURE_FILE))
    >>> read_architecture(folder).arguments["embedding_size"]
    16
    """
    path = os.path.join(os.fspath(folder), ARCHITECTURE_FILE)
    if not os.path.isfile(path):
        raise ArchitectureError(
            f"{path}: not found; a training checkpoint records its "
            "model's architecture there (runs made before it did cannot be "
            "loaded by the later stages: train again, or convert with "
            "recipes/convert_original.py)"
        )
    with open(path, encoding="utf-8") as f:
        return model_from_yaml(f.read(), path)


@register_checkpoint_hooks
class ArchitectureRecord:
    """Checkpoint recoverable writing the model's :func:`model_yaml`.

    Put it among the ``recoverables`` of a training ``Checkpointer``: every
    checkpoint then carries ``architecture.ckpt`` (HyperPyYAML text) beside
    ``embedding_model.ckpt``, from which the later stages rebuild the model.

    Arguments
    ---------
    model : WavLMMHFA or FbankECAPA
        The model being trained.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), ARCHITECTURE_FILE)
    >>> ArchitectureRecord(FbankECAPA(20, [8, 8, 8, 8, 24], 8, 8, 16)).save(
    ...     path)
    >>> open(path).readline().split()[1]
    '!new:speechbrain_ext.lobes.ecapa_embedding.FbankECAPA'
    """

    def __init__(self, model):
        self.model = model

    @mark_as_saver
    def save(self, path):
        """Write the architecture.

        Arguments
        ---------
        path : str
            The checkpoint's file.
        """
        with open(path, "w", encoding="utf-8") as f:
            f.write(model_yaml(self.model))

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Nothing to restore: the model is built from the hparams, and
        loading its weights refuses another architecture.

        Arguments
        ---------
        path : str
            The checkpoint's file.
        end_of_epoch : bool
            Unused.
        """
