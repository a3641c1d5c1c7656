#!/usr/bin/env python3
"""Convert a checkpoint of the reference code into this recipe's formats.

The reference (theolepage/wavlm_ssl_sv) saves the ``state_dict`` of its
``SpeakerNet`` (``__S__.model.*`` WavLM, ``__S__.backend.*`` MHFA,
``__L__.weight`` AAM head, possibly prefixed ``module.``); the WavLM
architecture comes from the pre-trained ``WavLM-Base+.pt``. Writes

- ``OUTPUT/`` an exported pretrained folder (loads with SpeechBrain's
  ``SpeakerRecognition.from_hparams(source=OUTPUT)``), and
- ``OUTPUT/save/CKPT+converted/`` a training checkpoint
  (``embedding_model.ckpt``, ``classifier.ckpt``) usable as
  ``--model_source`` of the extraction / evaluation stages or as
  ``--init_from`` of LMFT.

To run::

    python recipes/convert_original.py --checkpoint model000000015.model \\
        --wavlm WavLM-Base+.pt --output_folder DIR \\
        [--dev_trials TRIALS --data_folder WAVROOT]
"""

import speechbrain_ext.preflight  # noqa: F401

import argparse
import os
import shutil
import sys

from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.logger import get_logger

from speechbrain_ext.dataio.lists import TrialListError
from speechbrain_ext.lobes.classifier import CosineClassifier
from speechbrain_ext.lobes.wavlm import WavLMCheckpointError, load_wavlm
from speechbrain_ext.pretrained.architecture import ArchitectureRecord
from speechbrain_ext.pretrained.convert import (
    ReferenceCheckpointError,
    convert_reference,
)
from speechbrain_ext.pretrained.export import (
    calibrate_on_dev_trials,
    export_model,
)
from speechbrain_ext.utils.io_utils import safe_torch_load
from speechbrain_ext.utils.stage_logging import setup_stage_logging
from speechbrain_ext.utils.stage_utils import (
    MODEL_INPUT_ERRORS,
    exit_on_input_errors,
    pick_device,
)
from speechbrain_ext.verification.metrics import TrialLabelError

logger = get_logger(__name__)

INPUT_ERRORS = MODEL_INPUT_ERRORS + (
    ReferenceCheckpointError,
    TrialLabelError,
    TrialListError,
    WavLMCheckpointError,
)


def parse_args(argv):
    """Command-line options (see the module docstring).

    Arguments
    ---------
    argv : list of str
        Arguments after the script name.

    Returns
    -------
    argparse.Namespace
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="state dict saved by the reference code",
    )
    parser.add_argument(
        "--wavlm",
        required=True,
        help="the pre-trained WavLM (original .pt or HF "
        "folder) the reference was fine-tuned from",
    )
    parser.add_argument("--output_folder", required=True)
    parser.add_argument(
        "--dev_trials",
        default=None,
        help="trial list to calibrate the threshold",
    )
    parser.add_argument(
        "--data_folder", default=None, help="wav root of --dev_trials"
    )
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if args.dev_trials and not args.data_folder:
        parser.error("--dev_trials needs --data_folder")
    return args


def convert(args):
    """Convert, save the training checkpoint, export the folder.

    Arguments
    ---------
    args : argparse.Namespace
        From :func:`parse_args`.

    Returns
    -------
    dict
        Provenance written to ``export_info.json``.
    """
    state = safe_torch_load(args.checkpoint)
    wavlm = load_wavlm(args.wavlm)
    model, classifier_weight, ignored = convert_reference(
        state, wavlm, args.checkpoint
    )
    logger.info(
        "%s: %d tensors converted, %d pre-training-only keys ignored",
        args.checkpoint,
        len(state) - len(ignored),
        len(ignored),
    )
    recoverables = {
        "embedding_model": model,
        "architecture": ArchitectureRecord(model),
    }
    if classifier_weight is not None:
        classifier = CosineClassifier(
            classifier_weight.shape[1], classifier_weight.shape[0]
        )
        classifier.weight.data.copy_(classifier_weight)
        recoverables["classifier"] = classifier
    save = os.path.join(args.output_folder, "save")
    shutil.rmtree(os.path.join(save, "CKPT+converted"), ignore_errors=True)
    Checkpointer(save, recoverables).save_checkpoint(
        name="converted", meta={"converted_from": args.checkpoint}
    )
    info = {
        "source": os.path.abspath(args.checkpoint),
        "wavlm": os.path.abspath(args.wavlm),
        "ignored_keys": ignored,
    }
    threshold = None
    if args.dev_trials:
        threshold, dev_info = calibrate_on_dev_trials(
            model, args.dev_trials, args.data_folder, pick_device(args.device)
        )
        info.update(dev_info)
    export_model(model, args.output_folder, threshold, info)
    logger.info("wrote %s and %s/CKPT+converted", args.output_folder, save)
    return info


def main(argv):
    """Run the conversion from the command line."""
    args = parse_args(argv)
    setup_stage_logging()
    with exit_on_input_errors(INPUT_ERRORS):
        convert(args)


if __name__ == "__main__":
    main(sys.argv[1:])
