#!/usr/bin/env python3
"""Embeddings of every utterance of a list (or a wav tree), batched.

One embedding per full utterance (capped at ``max_samples``, 700,000 like
the reference), from a training checkpoint or an exported model folder,
written in the embeddings file format (``Dict[str, Tensor]``, keys relative
to the wav root) atomically, with the fast-load cache beside it. Utterances
are sorted by length into padded batches (the model ignores the padding,
so the embeddings equal one-at-a-time extraction); work is saved in shards
(``<output_file>.shards``) so an interrupted run over 1.1 M files resumes
where it stopped.

Several GPUs or nodes: start it with ``torchrun``. Each process embeds its
share of the shards (balanced by audio duration), the first one writes the
file; a rerun with any number of processes reuses every finished shard.

To run::

    python recipes/extract_embeddings.py hparams/extract_embeddings.yaml \\
        --data_folder=WAVROOT --model_source=OUT/save --output_file=E.pt \\
        [--utterance_list=LIST] [--device=cuda:0]
    torchrun --nproc_per_node=4 recipes/extract_embeddings.py \\
        hparams/extract_embeddings.yaml ...   # one process per GPU
"""

import speechbrain_ext.preflight  # noqa: F401

import os
import shutil
import sys

from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_ext.dataio.embeddings_io import save_embeddings
from speechbrain_ext.dataio.lists import (
    UtteranceListError,
    read_utterance_list,
)
from speechbrain_ext.pretrained.architecture import model_yaml
from speechbrain_ext.pretrained.checkpoints import load_embedding_model
from speechbrain_ext.utils.stage_utils import (
    MODEL_INPUT_ERRORS,
    run_stage,
)
from speechbrain_ext.verification.extraction import (
    embed_in_shards,
    find_wavs,
    model_digest,
)
from speechbrain_ext.verification.scoring import check_files_exist

logger = get_logger(__name__)

INPUT_ERRORS = MODEL_INPUT_ERRORS + (UtteranceListError,)


def list_utterances(hparams):
    """The keys to embed: the utterance list's paths, or the whole tree.

    Arguments
    ---------
    hparams : dict
        ``data_folder`` and ``utterance_list``.

    Returns
    -------
    list of str
    """
    data_folder = hparams["data_folder"]
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(f"{data_folder}: data_folder not found")
    if hparams["utterance_list"]:
        keys = read_utterance_list(hparams["utterance_list"])
        check_files_exist(keys, data_folder, hparams["utterance_list"])
    else:
        keys = find_wavs(data_folder)
        if not keys:
            raise FileNotFoundError(f"{data_folder}: no .wav files")
    return keys


def extract(hparams, device, progress=True):
    """Embed every utterance and write the embeddings file.

    Arguments
    ---------
    hparams : dict
        The loaded hparams.
    device : str
        Where the model runs.
    progress : bool
        Show progress bars.

    Returns
    -------
    int
        Number of utterances embedded (every process returns it; only the
        main one writes the file).
    """
    keys = list_utterances(hparams)
    model, origin = load_embedding_model(hparams["model_source"])
    model.to(device)
    if if_main_process():
        logger.info("%d utterances, model from %s", len(keys), origin)
    shard_folder = hparams["output_file"] + ".shards"
    paths = [os.path.join(hparams["data_folder"], key) for key in keys]
    matrix = embed_in_shards(
        model,
        paths,
        keys,
        shard_folder,
        shard_seconds=hparams["shard_seconds"],
        fingerprint=(
            f"{model_digest(model, model_yaml(model))}:{hparams['max_samples']}"
        ),
        max_samples=hparams["max_samples"],
        max_batch_size=hparams["max_batch_size"],
        max_batch_samples=hparams["max_batch_samples"],
        device=device,
        num_workers=hparams["num_workers"],
        progress=progress,
    )
    if matrix is not None:
        save_embeddings((keys, matrix), hparams["output_file"])
        shutil.rmtree(shard_folder, ignore_errors=True)
        logger.info("wrote %s (%d x %d)", hparams["output_file"], *matrix.shape)
    return len(keys)


def main(argv):
    """Run the stage from the command line (see the module docstring)."""
    run_stage(argv, extract, INPUT_ERRORS, distributed=True)


if __name__ == "__main__":
    main(sys.argv[1:])
