#!/usr/bin/env python3
"""Speaker verification evaluation of a trained WavLM + MHFA model.

Embeds every file of a trial list (``LABEL ENROL TEST``, VoxCeleb1-O/E/H
format) as 15 evenly spaced 4 s crops plus the full utterance (capped), the
reference protocol, and scores every trial by each method of
``hparams/evaluate.yaml`` (reference averaged cosine, plain full-utterance
cosine, and AS-norm of each when a cohort is given). Writes score files, a
``metrics.json`` (EER in percent, normalised minDCF at P_target 0.05 and
0.01, per method; the top-level keys are those of the first method) and a
DET curve. Embeddings are cached per file, keyed on the model's weights and
architecture (a checkpoint and its exported folder share them), so
re-scoring is fast.

Several GPUs or nodes: start it with ``torchrun``; the files to embed are
shared out in resumable shards (as in ``extract_embeddings.py``) and the
first process scores and writes the outputs.

To run::

    python recipes/evaluate.py hparams/evaluate.yaml --data_folder=WAVROOT \\
        --trials=veri_test2.txt --model_source=OUT/save --output_folder=EVAL
    torchrun --nproc_per_node=4 recipes/evaluate.py hparams/evaluate.yaml ...
"""

import speechbrain_ext.preflight  # noqa: F401

import json
import os
import sys
import time

import numpy as np
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from speechbrain_ext.dataio.embeddings_io import (
    EmbeddingsFileError,
    load_embeddings,
)
from speechbrain_ext.dataio.lists import TrialListError
from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA
from speechbrain_ext.pretrained.architecture import model_yaml
from speechbrain_ext.pretrained.checkpoints import load_embedding_model
from speechbrain_ext.pretrained.export import embedding_size
from speechbrain_ext.utils.io_utils import atomic_open, round_floats
from speechbrain_ext.utils.stage_utils import (
    MODEL_INPUT_ERRORS,
    run_stage,
)
from speechbrain_ext.verification.extraction import (
    evaluation_embeddings,
    model_digest,
)
from speechbrain_ext.verification.metrics import (
    TrialLabelError,
    collapse_warning,
    plot_det,
    split_scores,
    verification_metrics,
)
from speechbrain_ext.verification.scoring import (
    METHODS,
    check_files_exist,
    method_label,
    read_trials,
    score_methods,
    write_scores,
)

logger = get_logger(__name__)

INPUT_ERRORS = MODEL_INPUT_ERRORS + (
    EmbeddingsFileError,
    TrialLabelError,
    TrialListError,
)

UNITS = {
    "EER": "percent",
    "minDCF": "normalised detection cost, C_miss = C_fa = 1",
}


def load_cohort(path, size, seed):
    """Cohort embeddings for AS-norm (a random subset of ``size`` rows).

    Arguments
    ---------
    path : str or None
        An embeddings file; None disables AS-norm.
    size : int or None
        Rows kept (all when None or larger than the file).
    seed : int
        Seed of the subset.

    Returns
    -------
    numpy.ndarray or None
    """
    if not path:
        return None
    _, matrix = load_embeddings(path)
    if size and size < matrix.shape[0]:
        rows = np.random.default_rng(seed).choice(
            matrix.shape[0], size, replace=False
        )
        matrix = matrix[np.sort(rows)]
    return matrix


def model_name(origin):
    """The name a result is known by: the training stage of a checkpoint.

    Arguments
    ---------
    origin : str
        The folder the weights were loaded from.

    Returns
    -------
    str
        The training output folder's name for ``OUT/save/CKPT+*`` (the
        stage, in a pipeline run), else the folder's own name.

    Example
    -------
    >>> model_name("/exp/run/round1/save/CKPT+2026-12-02+10-00-00+00")
    'round1'
    >>> model_name("/exp/run/export")
    'export'
    """
    parts = os.path.abspath(origin).split(os.sep)
    if "save" in parts[1:]:
        return parts[len(parts) - 1 - parts[::-1].index("save") - 1]
    return parts[-1]


def det_title(model, origin, trials):
    """The DET figure's title: model, stage, trial list.

    Arguments
    ---------
    model : torch.nn.Module
        The evaluated model.
    origin : str
        Where its weights come from (see :func:`model_name`).
    trials : speechbrain_ext.verification.scoring.Trials
        The trial list.

    Returns
    -------
    str
        Two lines.
    """
    kind = "ECAPA-TDNN" if isinstance(model, FbankECAPA) else "WavLM + MHFA"
    n_target = int(np.sum(trials.labels))
    return (
        f"{model_name(origin)}: {kind}, {embedding_size(model)}-d "
        f"embeddings\n{os.path.basename(trials.path)}: "
        f"{len(trials.labels)} trials ({n_target} target)"
    )


def evaluate(hparams, device, progress=True):
    """Embed, score every method, write scores, metrics and the DET curve.

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
    dict or None
        The content of ``metrics.json`` (None on the processes other than
        the main one under ``torchrun``).
    """
    methods = list(hparams["methods"])
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        sys.exit(f"methods={methods}: choose among {', '.join(METHODS)}")
    trials = read_trials(hparams["trials"])
    split_scores(np.zeros(len(trials.labels)), trials.labels, trials.path)
    files = trials.files
    check_files_exist(files, hparams["data_folder"], trials.path)
    cohort = load_cohort(
        hparams["cohort_embeddings"], hparams["cohort_size"], hparams["seed"]
    )
    model, origin = load_embedding_model(hparams["model_source"])
    if cohort is not None and cohort.shape[1] != embedding_size(model):
        sys.exit(
            f"{hparams['cohort_embeddings']}: cohort embeddings of dimension "
            f"{cohort.shape[1]}, the model's are {embedding_size(model)} "
            "(the cohort must be embedded with the same model)"
        )
    model.to(device)
    output = hparams["output_folder"]
    run_on_main(os.makedirs, args=[output], kwargs={"exist_ok": True})

    start = time.perf_counter()
    crops, full = evaluation_embeddings(
        model,
        files,
        hparams["data_folder"],
        hparams["embeddings_cache"],
        model_digest(model, model_yaml(model)),
        n_crops=hparams["n_crops"],
        crop_samples=hparams["crop_samples"],
        max_samples=hparams["max_samples"],
        crop_files_per_batch=hparams["crop_files_per_batch"],
        shard_seconds=hparams["shard_seconds"],
        max_batch_size=hparams["max_batch_size"],
        max_batch_samples=hparams["max_batch_samples"],
        device=device,
        num_workers=hparams["num_workers"],
        progress=progress,
    )
    embed_seconds = time.perf_counter() - start
    if not if_main_process():
        return None

    start = time.perf_counter()
    scores = score_methods(
        trials,
        files,
        full,
        crops,
        methods=methods,
        cohort=cohort,
        top_k=hparams["asnorm_top_k"],
    )
    results = {
        name: verification_metrics(values, trials.labels, trials.path)
        for name, values in scores.items()
    }
    score_seconds = time.perf_counter() - start

    for name, values in scores.items():
        write_scores(os.path.join(output, f"scores_{name}.txt"), values, trials)
    main_method = methods[0]
    write_scores(
        os.path.join(output, "scores.txt"), scores[main_method], trials
    )
    for name, values in scores.items():
        if "asnorm" not in name:  # AS-norm scores are not cosines
            warning = collapse_warning(values, f"{trials.path} ({name})")
            if warning:
                logger.warning(warning)
    plot_det(
        {
            method_label(
                name, hparams["n_crops"], hparams["asnorm_top_k"]
            ): split_scores(values, trials.labels, trials.path)
            for name, values in scores.items()
        },
        os.path.join(output, "det.png"),
        title=det_title(model, origin, trials),
    )
    main = results[main_method]
    summary = {
        "trials": os.path.abspath(trials.path),
        "model": os.path.abspath(origin),
        "main_method": main_method,
        "EER": main["EER"],
        "minDCF_0.05": main["minDCF_0.05"],
        "minDCF_0.01": main["minDCF_0.01"],
        "units": UNITS,
        "n_trials": int(len(trials.labels)),
        "n_files": len(files),
        "methods": results,
        "embedding_seconds": embed_seconds,
        "scoring_seconds": score_seconds,
    }
    with atomic_open(os.path.join(output, "metrics.json")) as f:
        json.dump(round_floats(summary), f, indent=2)
    return summary


def print_table(summary):
    """Print one row per scoring method.

    Arguments
    ---------
    summary : dict
        The result of :func:`evaluate`.
    """
    print(f"{summary['trials']} ({summary['n_trials']} trials)")
    print(f"{'method':<20} {'EER %':>8} {'minDCF0.05':>11} {'minDCF0.01':>11}")
    for name, row in summary["methods"].items():
        print(
            f"{name:<20} {row['EER']:>8.3f} {row['minDCF_0.05']:>11.4f} "
            f"{row['minDCF_0.01']:>11.4f}"
        )


def main(argv):
    """Run the stage from the command line (see the module docstring)."""
    summary = run_stage(argv, evaluate, INPUT_ERRORS, distributed=True)
    if summary is not None:
        print_table(summary)


if __name__ == "__main__":
    main(sys.argv[1:])
