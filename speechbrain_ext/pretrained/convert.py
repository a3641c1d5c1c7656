"""Conversion of checkpoints saved by the reference research code.

The reference saves the ``state_dict`` of its ``SpeakerNet``: WavLM under
``__S__.model.`` (the original WavLM names, which are ours), the MHFA
back-end under ``__S__.backend.`` (``weights_k``, ``weights_v``,
``cmp_linear_k``, ``cmp_linear_v``, ``att_head``, ``pooling_fc``: ours too)
and the AAM-softmax class weights as ``__L__.weight``; every key may carry
a ``module.`` prefix (DDP). The WavLM architecture is not in that file: it
comes from the pre-trained ``WavLM-Base+.pt`` the reference started from.
Every key is accounted for: mapped, or ignored because only pre-training
uses it (``mask_emb``...), and anything else is an error.

Example
-------
>>> import torch
>>> state = {"module.__S__.model.mask_emb": torch.zeros(4),
...          "module.__S__.backend.weights_k": torch.ones(3),
...          "module.__L__.weight": torch.zeros(5, 16)}
>>> wavlm, backend, classifier, ignored = split_reference_state(state, "f")
>>> wavlm, list(backend), classifier.shape, ignored
({}, ['weights_k'], torch.Size([5, 16]), ['module.__S__.model.mask_emb'])
"""

from speechbrain_ext.lobes.embedding_model import WavLMMHFA
from speechbrain_ext.lobes.mhfa import MHFA
from speechbrain_ext.lobes.wavlm.state_dict import is_pretraining_key
from speechbrain_ext.pretrained.checkpoints import (
    CheckpointMismatchError,
    check_state_dict,
)

WAVLM_PREFIX = "__S__.model."
BACKEND_PREFIX = "__S__.backend."
CLASSIFIER_KEY = "__L__.weight"
DDP_PREFIX = "module."


class ReferenceCheckpointError(ValueError):
    """Raised when a file is not a reference SpeakerNet state dict."""


def split_reference_state(state_dict, source):
    """Split a reference ``SpeakerNet`` state dict into its parts.

    Arguments
    ---------
    state_dict : dict
        The loaded checkpoint.
    source : str
        The file (for messages).

    Returns
    -------
    wavlm : dict
        WavLM tensors (original names).
    backend : dict
        MHFA tensors.
    classifier : torch.Tensor or None
        ``[n_classes, emb]`` AAM weights.
    ignored : list of str
        Keys used only in pre-training.

    Raises
    ------
    ReferenceCheckpointError
        One line naming unknown keys, or a file without WavLM or MHFA.
    """
    if not isinstance(state_dict, dict) or not state_dict:
        raise ReferenceCheckpointError(
            f"{source}: expected the state dict of the reference SpeakerNet, "
            f"found {type(state_dict).__name__}"
        )
    wavlm, backend, classifier, ignored, unknown = {}, {}, None, [], []
    for key, value in state_dict.items():
        name = key[len(DDP_PREFIX) :] if key.startswith(DDP_PREFIX) else key
        if name.startswith(WAVLM_PREFIX):
            inner = name[len(WAVLM_PREFIX) :]
            if is_pretraining_key(inner):
                ignored.append(key)
            else:
                wavlm[inner] = value
        elif name.startswith(BACKEND_PREFIX):
            backend[name[len(BACKEND_PREFIX) :]] = value
        elif name == CLASSIFIER_KEY:
            classifier = value
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:3])
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise ReferenceCheckpointError(
            f"{source}: keys outside __S__.model.*, __S__.backend.* and "
            f"__L__.weight: {shown}{more}"
        )
    return wavlm, backend, classifier, ignored


def mhfa_from_state(backend, input_size, source):
    """An MHFA sized from the reference back-end's tensors.

    Arguments
    ---------
    backend : dict
        The ``__S__.backend.*`` tensors (prefix removed).
    input_size : int
        WavLM width.
    source : str
        The file (for messages).

    Returns
    -------
    MHFA
        Untrained, of the sizes the tensors imply.

    Example
    -------
    >>> state = MHFA(3, 64, 4, 8, 16).state_dict()
    >>> mhfa_from_state(state, 64, "f").att_head.out_features
    4
    """
    needed = ("weights_k", "cmp_linear_k.weight", "att_head.weight")
    needed += ("pooling_fc.weight",)
    missing = [k for k in needed if k not in backend]
    if missing:
        raise ReferenceCheckpointError(
            f"{source}: MHFA back-end tensors missing: "
            + ", ".join(BACKEND_PREFIX + k for k in missing)
        )
    return MHFA(
        n_layers=backend["weights_k"].shape[0],
        input_size=input_size,
        n_heads=backend["att_head.weight"].shape[0],
        compression_size=backend["cmp_linear_k.weight"].shape[0],
        output_size=backend["pooling_fc.weight"].shape[0],
    )


def convert_reference(state_dict, wavlm, source="checkpoint"):
    """Our embedding model (and AAM weights) from a reference checkpoint.

    Arguments
    ---------
    state_dict : dict
        The reference ``SpeakerNet`` state dict.
    wavlm : speechbrain_ext.lobes.wavlm.WavLM
        A WavLM of the reference's architecture (e.g. loaded from
        ``WavLM-Base+.pt``); its weights are replaced.
    source : str
        The file (for messages).

    Returns
    -------
    model : WavLMMHFA
        In eval mode.
    classifier_weight : torch.Tensor or None
    ignored : list of str
        Pre-training-only keys that were skipped.

    Raises
    ------
    ReferenceCheckpointError, CheckpointMismatchError
        One line naming the file and the first offending keys.
    """
    wavlm_state, backend, classifier, ignored = split_reference_state(
        state_dict, source
    )
    if not wavlm_state:
        raise ReferenceCheckpointError(
            f"{source}: no WavLM tensors (__S__.model.*)"
        )
    mhfa = mhfa_from_state(backend, wavlm.config.encoder_embed_dim, source)
    try:
        model = WavLMMHFA(wavlm, mhfa)
    except ValueError as error:
        raise CheckpointMismatchError(f"{source}: {error}") from None
    state = {f"wavlm.{k}": v for k, v in wavlm_state.items()}
    state.update({f"mhfa.{k}": v for k, v in backend.items()})
    check_state_dict(model.state_dict(), state, source)
    model.load_state_dict(state)
    if classifier is not None and (
        classifier.dim() != 2
        or classifier.shape[1] != mhfa.pooling_fc.out_features
    ):
        raise CheckpointMismatchError(
            f"{source}: {CLASSIFIER_KEY} has shape {tuple(classifier.shape)}, "
            f"expected [n_classes, {mhfa.pooling_fc.out_features}]"
        )
    return model.eval(), classifier, ignored


def to_reference_state(model, classifier_weight=None, ddp=True):
    """Our model as the reference would save it (for tests and round trips).

    Arguments
    ---------
    model : WavLMMHFA
        The model.
    classifier_weight : torch.Tensor, optional
        AAM weights ``[n_classes, emb]``.
    ddp : bool
        Add the ``module.`` prefix.

    Returns
    -------
    dict

    Example
    -------
    >>> from speechbrain_ext.lobes.embedding_model import WavLMMHFA
    >>> from speechbrain_ext.lobes.mhfa import MHFA
    >>> from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
    >>> model = WavLMMHFA(WavLM(WavLMConfig.tiny()), MHFA(3, 64, 4, 8, 16))
    >>> state = to_reference_state(model)
    >>> sorted(k for k in state if "backend" in k)[0]
    'module.__S__.backend.att_head.bias'

    """
    prefix = DDP_PREFIX if ddp else ""
    state = {}
    for key, value in model.wavlm.state_dict().items():
        state[prefix + WAVLM_PREFIX + key] = value.clone()
    for key, value in model.mhfa.state_dict().items():
        state[prefix + BACKEND_PREFIX + key] = value.clone()
    if classifier_weight is not None:
        state[prefix + CLASSIFIER_KEY] = classifier_weight.clone()
    return state
