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

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.voxceleb import TrialListError  # noqa: E402
from speechbrain_ext.audio import AudioError  # noqa: E402
from speechbrain_ext.checkpoints import (  # noqa: E402
    CheckpointMismatchError,
    load_embedding_model,
)
from speechbrain_ext.export import (  # noqa: E402
    calibrate_threshold,
    export_model,
)
from speechbrain_ext.io_utils import (  # noqa: E402
    CorruptFileError,
    UnsafeCheckpointError,
)
from speechbrain_ext.metrics import TrialLabelError  # noqa: E402
from speechbrain_ext.scoring import read_trials  # noqa: E402
from speechbrain_ext.stage_utils import (  # noqa: E402
    load_stage_hparams,
    pick_device,
)

logger = logging.getLogger(__name__)

INPUT_ERRORS = (
    AudioError,
    CheckpointMismatchError,
    CorruptFileError,
    FileNotFoundError,
    TrialLabelError,
    TrialListError,
    UnsafeCheckpointError,
)


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
    model, origin = load_embedding_model(
        hparams["model_source"], hparams["embedding_model"]
    )
    info = {"source": os.path.abspath(origin)}
    threshold = None
    if hparams["dev_trials"]:
        trials = read_trials(hparams["dev_trials"])
        threshold, dev_eer = calibrate_threshold(
            model.to(device),
            trials,
            hparams["data_folder"],
            max_samples=hparams["max_samples"],
            max_batch_size=hparams["max_batch_size"],
            max_batch_samples=hparams["max_batch_samples"],
            device=device,
            num_workers=hparams["num_workers"],
            progress=progress,
        )
        info["threshold_origin"] = (
            f"EER point of the full-utterance cosine on "
            f"{os.path.abspath(trials.path)} ({len(trials.labels)} trials, "
            f"EER {dev_eer:.2f}%)"
        )
        info["dev_trials"] = os.path.abspath(trials.path)
        info["dev_EER_percent"] = dev_eer
        model.cpu()
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
    _, run_opts, hparams = load_stage_hparams(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        export(
            hparams,
            pick_device(run_opts.device),
            progress=not run_opts.noprogressbar,
        )
    except INPUT_ERRORS as error:
        sys.exit(str(error).strip("'\""))


if __name__ == "__main__":
    main(sys.argv[1:])
