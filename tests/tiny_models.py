"""Tiny random embedding models and training checkpoints for the tests."""

import os

from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_ext.lobes.embedding_model import WavLMMHFA
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
from speechbrain_ext.pretrained.architecture import ArchitectureRecord
from speechbrain_ext.pretrained.model_factory import mhfa_for


def tiny_wavlm_mhfa(n_heads=4, compression_size=8, output_size=16, **wavlm):
    """A random tiny WavLM + MHFA (``wavlm``: config fields changed).

    Example
    -------
    >>> tiny_wavlm_mhfa().mhfa.n_layers
    3
    """
    config = WavLMConfig.tiny(**wavlm)
    mhfa = mhfa_for(config, n_heads, compression_size, output_size)
    return WavLMMHFA(WavLM(config), mhfa)


def save_training_checkpoint(save_folder, model, **recoverables):
    """Write ``model`` as a training run's checkpoint (with its architecture).

    Returns the ``CKPT+*`` folder.
    """
    checkpoint = Checkpointer(
        os.fspath(save_folder),
        {
            "embedding_model": model,
            "architecture": ArchitectureRecord(model),
            **recoverables,
        },
    ).save_checkpoint()
    return str(checkpoint.path)
