"""Writing an embedding model as a SpeechBrain pretrained folder.

The folder holds ``hyperparams.yaml`` (the architecture written out with
``!new:speechbrain_ext...``, identity feature modules, a ``Pretrainer`` and
the verification ``threshold``), ``embedding_model.ckpt`` (the state dict),
``custom.py`` (for ``foreign_class``), ``export_info.json`` (where the
weights and the threshold come from) and a ``README.md`` with usage. Every
file is written atomically; the folder loads offline with
``SpeakerRecognition.from_hparams(source=DIR, savedir=...)``.

"""

import json
import os

from speechbrain.utils.logger import get_logger

from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA
from speechbrain_ext.pretrained.architecture import mhfa_arguments, model_yaml
from speechbrain_ext.utils.io_utils import (
    atomic_open,
    atomic_torch_save,
    round_floats,
)
from speechbrain_ext.verification.extraction import embed_full_utterances
from speechbrain_ext.verification.metrics import (
    collapse_warning,
    eer,
    score_spread,
    split_scores,
)
from speechbrain_ext.verification.scoring import (
    check_files_exist,
    file_vectors,
    read_trials,
    score_trials,
)

logger = get_logger(__name__)

DEFAULT_THRESHOLD = 0.25
# The distribution that installs speechbrain_ext (pyproject.toml).
PROJECT = "wavlm-ssl-sv"


_HEADER = """\
# ############################################################################
# Speaker embedding model (self-supervised speaker verification recipe)
# Loads with speechbrain.inference.speaker.SpeakerRecognition.from_hparams or
# speechbrain_ext.pretrained.inference.WavLMSpeakerVerification.from_hparams.
# Needs the speechbrain_ext package of the recipe installed (any directory).
# ############################################################################

# Without that package, loading stops here with one line saying how to
# install it (instead of "There is no such class as speechbrain_ext...").
__check_package: !apply:builtins.exec
    - |
        try:
            import speechbrain_ext
        except ImportError:
            raise ImportError({missing_package!r}) from None

sample_rate: 16000
# Cosine threshold of verify_batch / verify_files in
# WavLMSpeakerVerification: {threshold_origin}
threshold: {threshold}

"""

_FOOTER = """
compute_features: !new:speechbrain_ext.pretrained.inference.PassThrough
mean_var_norm: !new:speechbrain_ext.pretrained.inference.PassThrough

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
"""

_CUSTOM = '''\
"""Interface class for speechbrain.inference.interfaces.foreign_class."""

from speechbrain_ext.pretrained.inference import WavLMSpeakerVerification

__all__ = ["WavLMSpeakerVerification"]
'''

_README = """\
# Speaker embeddings (self-supervised speaker verification recipe)

Exported by `recipes/export_pretrained.py` of the self-supervised speaker
verification recipe. Embedding size {embedding_size}; 16 kHz mono input
(`load_audio` resamples and down-mixes files).

Verification threshold (cosine): **{threshold:.4f}** — {threshold_origin}

## Usage (offline; needs `speechbrain` and this recipe's `speechbrain_ext`)

```python
from speechbrain.inference.speaker import SpeakerRecognition

model = SpeakerRecognition.from_hparams(source="{folder}", savedir="tmp")
embeddings = model.encode_batch(wavs, wav_lens)  # [B, 1, {embedding_size}]
score, _ = model.verify_files("a.wav", "b.wav")
same_speaker = score > model.hparams.threshold
```

SpeechBrain's own `verify_batch` / `verify_files` decide with its default
threshold (0.25) unless given `threshold=`; this class uses the stored one:

```python
from speechbrain_ext.pretrained.inference import WavLMSpeakerVerification

model = WavLMSpeakerVerification.from_hparams(source="{folder}", savedir="tmp")
score, same_speaker = model.verify_files("a.wav", "b.wav")
```

or, through SpeechBrain alone:
`foreign_class(source="{folder}", pymodule_file="custom.py",
classname="WavLMSpeakerVerification")`.

Padding in a batch does not change the embeddings when `wav_lens` (relative
lengths) is given. Files: `hyperparams.yaml`, `embedding_model.ckpt`,
`custom.py`, `export_info.json`.
"""


def export_model(model, folder, threshold=None, info=None):
    """Write ``model`` as a SpeechBrain pretrained folder.

    Arguments
    ---------
    model : speechbrain_ext.lobes.embedding_model.WavLMMHFA
        The trained model.
    folder : str
        Output folder (created; files replaced atomically).
    threshold : float, optional
        Cosine decision threshold; SpeechBrain's 0.25 when not calibrated.
    info : dict, optional
        Provenance written to ``export_info.json`` (source checkpoint, how
        the threshold was chosen...); ``threshold_origin`` (str) also goes
        to the YAML comment and the README.

    Returns
    -------
    str
        The folder.
    """
    info = dict(info or {})
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
        info.setdefault(
            "threshold_origin",
            "not calibrated (no development trial list): SpeechBrain's "
            "default 0.25",
        )
    info.setdefault("threshold_origin", "given")
    info["threshold"] = float(threshold)
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, os.path.join(folder, "embedding_model.ckpt"))
    with atomic_open(os.path.join(folder, "custom.py")) as f:
        f.write(_CUSTOM)
    with atomic_open(os.path.join(folder, "export_info.json")) as f:
        json.dump(info, f, indent=2)
    with atomic_open(os.path.join(folder, "README.md")) as f:
        f.write(
            _README.format(
                folder=os.path.abspath(folder),
                threshold=float(threshold),
                threshold_origin=info["threshold_origin"],
                embedding_size=embedding_size(model),
            )
        )
    # Last, so that a folder with hyperparams.yaml is complete.
    with atomic_open(os.path.join(folder, "hyperparams.yaml")) as f:
        f.write(
            _HEADER.format(
                threshold=repr(float(threshold)),
                threshold_origin=info["threshold_origin"],
                missing_package=missing_package_message(),
            )
        )
        f.write(model_yaml(model))
        f.write(_FOOTER)
    return folder


def missing_package_message():
    """The error an exported folder gives where ``speechbrain_ext`` is not
    installed: which package, and how to install it from here.

    Returns
    -------
    str
        One line naming the package, this project's name and its folder.

    Example
    -------
    >>> print(missing_package_message())  # doctest: +ELLIPSIS
    this model needs the Python package speechbrain_ext (project \
wavlm-ssl-sv), which is not installed: pip install -e ...
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(root)
    if os.path.isfile(os.path.join(root, "pyproject.toml")):
        how = f"pip install -e {root}"
    else:
        how = f"pip install {PROJECT}, or pip install -e <its repository>"
    return (
        "this model needs the Python package speechbrain_ext (project "
        f"{PROJECT}), which is not installed: {how}"
    )


def embedding_size(model):
    """Output size of a ``WavLMMHFA`` or ``FbankECAPA``.

    Arguments
    ---------
    model : WavLMMHFA or FbankECAPA
        The model.

    Returns
    -------
    int

    Example
    -------
    >>> from speechbrain_ext.lobes.embedding_model import WavLMMHFA
    >>> from speechbrain_ext.lobes.mhfa import MHFA
    >>> from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
    >>> embedding_size(WavLMMHFA(WavLM(WavLMConfig.tiny()),
    ...                          MHFA(3, 64, 4, 8, 16)))
    16
    """
    if isinstance(model, FbankECAPA):
        return model.arguments["embedding_size"]
    return mhfa_arguments(model.mhfa)["output_size"]


def calibrate_threshold(model, trials, data_folder, **kwargs):
    """The cosine threshold at the EER point of a development trial list.

    Scores are what ``verify_batch`` computes: the cosine of full-utterance
    embeddings; ``score > threshold`` accepts, as SpeechBrain decides.
    Nearly collapsed scores (see
    :func:`speechbrain_ext.verification.metrics.collapse_warning`) are
    reported with a WARNING giving their range.

    Arguments
    ---------
    model : torch.nn.Module
        The embedding model.
    trials : speechbrain_ext.verification.scoring.Trials
        The development trial list.
    data_folder : str
        Its wav root.
    **kwargs
        Passed to
        :func:`speechbrain_ext.verification.extraction.embed_full_utterances`.

    Returns
    -------
    threshold : float
    eer_percent : float
        The EER on the list at that threshold.
    spread : dict
        The range of the scores
        (:func:`speechbrain_ext.verification.metrics.score_spread`).
    """
    check_files_exist(trials.files, data_folder, trials.path)
    files = trials.files
    full = embed_full_utterances(
        model, [os.path.join(data_folder, f) for f in files], **kwargs
    )
    enrol, test = trials.indices(files)
    scores = score_trials(file_vectors("cosine", full), enrol, test)
    positive, negative = split_scores(scores, trials.labels, trials.path)
    value, threshold = eer(positive, negative)
    warning = collapse_warning(scores, trials.path)
    if warning:
        logger.warning("%s; calibrated threshold %.6f", warning, threshold)
    return threshold, 100 * value, score_spread(scores)


def calibrate_on_dev_trials(
    model, trials_file, data_folder, device="cpu", **kwargs
):
    """:func:`calibrate_threshold` on a trial list file, with provenance.

    The model runs on ``device`` and is moved back to the CPU afterwards.

    Arguments
    ---------
    model : torch.nn.Module
        The embedding model.
    trials_file : str
        The development trial list (``LABEL ENROL TEST``).
    data_folder : str
        Its wav root.
    device : str
        Where the embeddings are computed.
    **kwargs
        Passed to
        :func:`speechbrain_ext.verification.extraction.embed_full_utterances`.

    Returns
    -------
    threshold : float
    info : dict
        ``threshold_origin``, ``dev_trials``, ``dev_EER_percent`` and
        ``dev_score_range`` (lowest and highest score), for the ``info`` of
        :func:`export_model`.

    Example
    -------
    >>> import os, tempfile, soundfile, numpy as np
    >>> from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> for name in ("a/v/1.wav", "a/v/2.wav", "b/v/1.wav"):
    ...     os.makedirs(os.path.dirname(os.path.join(folder, name)),
    ...                 exist_ok=True)
    ...     soundfile.write(os.path.join(folder, name),
    ...                     0.1 * rng.standard_normal(8000), 16000)
    >>> with open(os.path.join(folder, "trials.txt"), "w") as f:
    ...     _ = f.write("1 a/v/1.wav a/v/2.wav\\n0 a/v/1.wav b/v/1.wav\\n")
    >>> model = FbankECAPA(20, [8, 8, 8, 8, 24], 8, 8, 16).eval()
    >>> threshold, info = calibrate_on_dev_trials(
    ...     model, os.path.join(folder, "trials.txt"), folder, progress=False)
    >>> info["threshold_origin"].startswith("EER point"), sorted(info)
    ... # doctest: +NORMALIZE_WHITESPACE
    (True, ['dev_EER_percent', 'dev_score_range', 'dev_trials',
            'threshold_origin'])
    """
    trials = read_trials(trials_file)
    threshold, dev_eer, spread = calibrate_threshold(
        model.to(device), trials, data_folder, device=device, **kwargs
    )
    model.cpu()
    path = os.path.abspath(trials.path)
    info = {
        "threshold_origin": (
            f"EER point of the full-utterance cosine on {path} "
            f"({len(trials.labels)} trials, EER {dev_eer:.2f}%)"
        ),
        "dev_trials": path,
        # Rounded for reading (100 * 0.388 = 38.800000000000004); the
        # threshold itself is stored exactly.
        "dev_EER_percent": round_floats(dev_eer),
        "dev_score_range": round_floats([spread["min"], spread["max"]]),
    }
    return threshold, info
