#!/usr/bin/env python3
"""Export a trained WavLM + MHFA model as a SpeechBrain pretrained folder.

The folder (``hyperparams.yaml``, ``embedding_model.ckpt``, ``custom.py``,
``export_info.json``, ``README.md``) loads offline with
``speechbrain.inference.speaker.SpeakerRecognition.from_hparams``; the
verification threshold stored in it is the cosine threshold at the EER
point of a development trial list when one is given.

To run::

    python recipes/export_pretrained.py hparams/export_pretrained.yaml \\
        --model_source=OUT/save --output_folder=MODEL \\
        [--dev_trials=TRIALS --data_folder=WAVROOT]
"""

import speechbrain_ext.preflight  # noqa: F401

import os
import sys

from speechbrain.utils.logger import get_logger

from speechbrain_ext.dataio.lists import TrialListError
from speechbrain_ext.pretrained.checkpoints import load_embedding_model
from speechbrain_ext.pretrained.export import (
    calibrate_on_dev_trials,
    export_model,
)
from speechbrain_ext.utils.stage_utils import (
    MODEL_INPUT_ERRORS,
    run_stage,
)
from speechbrain_ext.verification.metrics import TrialLabelError

logger = get_logger(__name__)

INPUT_ERRORS = MODEL_INPUT_ERRORS + (TrialLabelError, TrialListError)


def export(hparams, device, progress=True):
    """Load the model, calibrate the threshold, write the folder.

    Arguments
    ---------
    hparams : dict
        The loaded hparams.
    device : str
        Where the development embeddings are computed.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        The provenance written to ``export_info.json``.
    """
    if hparams["dev_trials"] and not hparams["data_folder"]:
        sys.exit("dev_trials is given but data_folder (its wav root) is not")
    model, origin = load_embedding_model(hparams["model_source"])
    info = {"source": os.path.abspath(origin)}
    threshold = None
    if hparams["dev_trials"]:
        threshold, dev_info = calibrate_on_dev_trials(
            model,
            hparams["dev_trials"],
            hparams["data_folder"],
            device,
            max_samples=hparams["max_samples"],
            max_batch_size=hparams["max_batch_size"],
            max_batch_samples=hparams["max_batch_samples"],
            num_workers=hparams["num_workers"],
            progress=progress,
        )
        info.update(dev_info)
    else:
        logger.warning(
            "no dev_trials: the stored threshold is SpeechBrain's default "
            "0.25, NOT calibrated for this model"
        )
    export_model(model, hparams["output_folder"], threshold, info)
    logger.info(
        "exported %s (threshold %s)", hparams["output_folder"], threshold
    )
    return info


def main(argv):
    """Run the stage from the command line (see the module docstring)."""
    run_stage(argv, export, INPUT_ERRORS)


if __name__ == "__main__":
    main(sys.argv[1:])
