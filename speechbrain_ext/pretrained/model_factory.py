"""Build the embedding model of a round from hparams values.

``build_embedding_model`` builds the reference's encoder, WavLM + MHFA: it
loads the pre-trained WavLM when a checkpoint is given and otherwise builds
a randomly initialised one from a named preset (with a loud warning), then
sizes the MHFA back-end from the WavLM. With ``encoder="ecapa"`` it builds
stage 1's network instead
(``speechbrain_ext.lobes.ecapa_embedding.FbankECAPA``), started from the
DINO checkpoint: the iterative pseudo-labelling encoder for runs without a
pre-trained WavLM.

Only training builds a model from sizes: each of its checkpoints records
the model it built as a ``!new:`` composition
(:mod:`speechbrain_ext.pretrained.architecture`), which the later stages
load instead of repeating these values.
"""

from speechbrain.utils.logger import get_logger

from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA, load_dino_backbone
from speechbrain_ext.lobes.embedding_model import WavLMMHFA
from speechbrain_ext.lobes.mhfa import MHFA
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig, load_wavlm

logger = get_logger(__name__)

PRESETS = ("tiny", "base", "base_plus", "large")
ENCODERS = ("wavlm", "ecapa")


def wavlm_config(preset="base_plus", **overrides):
    """A :class:`WavLMConfig` preset by name.

    Arguments
    ---------
    preset : str
        One of ``tiny``, ``base``, ``base_plus``, ``large``.
    **overrides
        Fields to change.

    Returns
    -------
    WavLMConfig

    Example
    -------
    >>> wavlm_config("tiny", encoder_layers=3).encoder_layers
    3
    """
    if preset not in PRESETS:
        raise ValueError(f"wavlm_preset={preset!r}: expected one of {PRESETS}")
    return getattr(WavLMConfig, preset)(**overrides)


def mhfa_for(config, n_heads=64, compression_size=128, output_size=256):
    """An MHFA sized to read every hidden state of a WavLM.

    Arguments
    ---------
    config : WavLMConfig
        The WavLM's config.
    n_heads, compression_size, output_size : int
        MHFA sizes (64, 128, 256 in the reference).

    Returns
    -------
    MHFA

    Example
    -------
    >>> mhfa_for(wavlm_config("tiny"), 4, 8, 16).n_layers
    3
    """
    return MHFA(
        n_layers=config.encoder_layers + 1,
        input_size=config.encoder_embed_dim,
        n_heads=n_heads,
        compression_size=compression_size,
        output_size=output_size,
    )


def build_wavlm(pretrained_path=None, preset="base_plus", **overrides):
    """Pre-trained WavLM from ``pretrained_path``, or a random one.

    Arguments
    ---------
    pretrained_path : str or None
        ``WavLM-Base+.pt`` (original layout) or a Hugging Face folder. None
        builds a randomly initialised model from ``preset`` and warns loudly.
    preset : str
        Preset for the random model (ignored when a checkpoint is given:
        its own config is used).
    **overrides
        Config fields of the random model (e.g. ``encoder_layerdrop=0.0``;
        ignored when a checkpoint is given).

    Returns
    -------
    WavLM

    Example
    -------
    >>> build_wavlm(None, "tiny").config.encoder_layers
    2
    """
    if pretrained_path:
        # The file's own config; the checkpoints record it for the later
        # stages (speechbrain_ext.pretrained.architecture).
        return load_wavlm(pretrained_path)
    logger.warning(
        "pretrained_wavlm is null: WavLM (%s) is RANDOMLY INITIALISED. This "
        "is only meant for tests and demos; give --pretrained_wavlm=PATH for "
        "real training.",
        preset,
    )
    return WavLM(wavlm_config(preset, **overrides))


def check_encoder(encoder):
    """Raise for an unknown encoder name.

    Arguments
    ---------
    encoder : str
        ``"wavlm"`` or ``"ecapa"``.

    Example
    -------
    >>> check_encoder("ecapa")
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder!r}: expected one of {ENCODERS}")


def build_embedding_model(
    pretrained_path=None,
    preset="base_plus",
    n_heads=64,
    compression_size=128,
    output_size=256,
    wavlm_overrides=None,
    encoder="wavlm",
    ecapa=None,
    dino_checkpoint=None,
    dino_network="teacher",
):
    """The encoder of a round: WavLM + MHFA, or stage 1's ECAPA-TDNN.

    Arguments
    ---------
    pretrained_path : str or None
        See :func:`build_wavlm` (``encoder="wavlm"`` only).
    preset : str
        See :func:`build_wavlm`.
    n_heads, compression_size : int
        MHFA sizes (64, 128 in the reference).
    output_size : int
        Embedding size (256 in the reference; for ``"ecapa"`` the DINO
        backbone's embedding size).
    wavlm_overrides : dict, optional
        Config fields of a random WavLM.
    encoder : str
        ``"wavlm"`` (the reference) or ``"ecapa"`` (stage 1's network).
    ecapa : dict, optional
        ``n_mels``, ``channels``, ``attention_channels``, ``se_channels`` of
        the ECAPA-TDNN (those of stage 1).
    dino_checkpoint : str, optional
        Stage 1's DINO ``save`` folder the ECAPA-TDNN starts from; None
        leaves it random (a warning: only for tests).
    dino_network : str
        ``"student"`` or ``"teacher"``: the network stage 1 embedded with.

    Returns
    -------
    WavLMMHFA or FbankECAPA

    Example
    -------
    >>> model = build_embedding_model(None, "tiny", 4, 8, 16)
    >>> model.mhfa.n_layers
    3
    """
    check_encoder(encoder)
    if encoder == "ecapa":
        if pretrained_path:
            raise ValueError(
                f"encoder=ecapa fine-tunes stage 1's network and does not use "
                f"pretrained_wavlm={pretrained_path}; use encoder=wavlm"
            )
        model = FbankECAPA(**(ecapa or {}), embedding_size=output_size)
        if dino_checkpoint:
            used = load_dino_backbone(model, dino_checkpoint, dino_network)
            logger.info("ECAPA-TDNN encoder starts from %s", used)
        else:
            logger.warning(
                "encoder=ecapa without dino_checkpoint: the ECAPA-TDNN is "
                "RANDOMLY INITIALISED (only meant for tests)"
            )
        return model
    wavlm = build_wavlm(pretrained_path, preset, **(wavlm_overrides or {}))
    mhfa = mhfa_for(wavlm.config, n_heads, compression_size, output_size)
    return WavLMMHFA(wavlm, mhfa)
