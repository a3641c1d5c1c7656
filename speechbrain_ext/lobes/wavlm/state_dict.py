"""WavLM state dicts: pre-training-only keys, shape checks, and the mapping
between the original and the Hugging Face parameter names.

Example
-------
>>> is_pretraining_key("mask_emb"), is_pretraining_key("encoder.layers.0.fc1")
(True, False)
"""

import re

import torch

from speechbrain_ext.lobes.wavlm.config import WavLMCheckpointError

# Keys of the original checkpoint's state dict that only pre-training uses.
_PRETRAINING_KEYS = ("mask_emb", "label_embs_concat")
_PRETRAINING_PREFIXES = (
    "final_proj.",
    "final_proj_list.",
    "label_embs_list.",
    "target_glu.",
)
# Hugging Face keys that only pre-training or spec-augment use.
_HF_IGNORED_KEYS = ("masked_spec_embed",)


def is_pretraining_key(key):
    """Whether ``key`` of an original checkpoint is a pre-training-only head.

    Arguments
    ---------
    key : str
        A state-dict key of the original ``WavLM-Base+.pt`` layout.

    Returns
    -------
    bool
        True for the masked-prediction heads that the encoder never uses.

    Example
    -------
    >>> is_pretraining_key("mask_emb"), is_pretraining_key("layer_norm.weight")
    (True, False)
    """
    return key in _PRETRAINING_KEYS or key.startswith(_PRETRAINING_PREFIXES)


def first_keys(keys, n=3):
    """The first ``n`` of ``keys`` joined for a message, with the rest counted.

    Example
    -------
    >>> first_keys(["a", "b", "c", "d"], n=2)
    'a, b (+2 more)'
    """
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def state_dict_problems(expected, state_dict):
    """How ``state_dict`` fails to fit a model whose own one is ``expected``.

    Arguments
    ---------
    expected : dict
        The model's ``state_dict()``.
    state_dict : dict
        The loaded tensors.

    Returns
    -------
    str
        The first missing, unexpected and mis-shaped keys, ``"; "``-joined;
        empty when it fits.

    Example
    -------
    >>> state_dict_problems({"a": torch.zeros(1), "b": torch.zeros(2)},
    ...                     {"b": torch.zeros(3), "c": 1})
    'missing keys: a; unexpected keys: c; shape mismatch: b (3,) in \
checkpoint vs (2,) in model'
    """
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = []
    for key, value in state_dict.items():
        if key not in expected:
            continue
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key} is a {type(value).__name__}")
        elif value.shape != expected[key].shape:
            mismatched.append(
                f"{key} {tuple(value.shape)} in checkpoint vs "
                f"{tuple(expected[key].shape)} in model"
            )
    problems = []
    if missing:
        problems.append(f"missing keys: {first_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {first_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {first_keys(mismatched)}")
    return "; ".join(problems)


def check_state_dict(expected, state_dict, source):
    """Raise one :class:`WavLMCheckpointError` line naming the first missing,
    unexpected and mis-shaped keys."""
    problems = state_dict_problems(expected, state_dict)
    if problems:
        raise WavLMCheckpointError(
            f"{source}: checkpoint does not fit the WavLM config: {problems}"
        )


# (ours, Hugging Face) key prefixes; "{n}" is a layer index. Order matters:
# the first match wins.
_CONV = "feature_extractor.conv_layers.{n}."
_POS = "encoder.pos_conv_embed.conv."
_LAYER = "encoder.layers.{n}."
_HF_NAMES = [
    (_CONV + "0.", _CONV + "conv."),
    ("layer_norm.", "feature_projection.layer_norm."),
    ("post_extract_proj.", "feature_projection.projection."),
    ("encoder.pos_conv.0.weight_g", _POS + "parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", _POS + "parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", _POS + "bias"),
    (
        _LAYER + "self_attn.grep_linear.",
        _LAYER + "attention.gru_rel_pos_linear.",
    ),
    (_LAYER + "self_attn.grep_a", _LAYER + "attention.gru_rel_pos_const"),
    (
        _LAYER + "self_attn.relative_attention_bias.",
        _LAYER + "attention.rel_attn_embed.",
    ),
    (_LAYER + "self_attn.", _LAYER + "attention."),
    (_LAYER + "self_attn_layer_norm.", _LAYER + "layer_norm."),
    (_LAYER + "fc1.", _LAYER + "feed_forward.intermediate_dense."),
    (_LAYER + "fc2.", _LAYER + "feed_forward.output_dense."),
]
# The feature encoder's norms: ".2." (group norm) or ".2.1." (layer norm).
_HF_CONV_NORM = _CONV + "layer_norm."
# Older transformers versions store the weight norm as weight_g / weight_v.
_HF_LEGACY_NAMES = [
    ("encoder.pos_conv.0.weight_g", _POS + "weight_g"),
    ("encoder.pos_conv.0.weight_v", _POS + "weight_v"),
]


def _rename(key, pairs):
    for source, target in pairs:
        pattern = "^" + re.escape(source).replace(r"\{n\}", r"(\d+)")
        renamed, count = re.subn(pattern, target.replace("{n}", r"\1"), key)
        if count:
            return renamed
    return key


def _conv_norm_name(extractor_mode):
    suffix = "2." if extractor_mode == "default" else "2.1."
    return (_CONV + suffix, _HF_CONV_NORM)


def state_dict_to_hf(state_dict, extractor_mode="default"):
    """Rename a WavLM state dict to Hugging Face ``WavLMModel`` names.

    Arguments
    ---------
    state_dict : dict
        Our (= the original checkpoint's) names.
    extractor_mode : str
        The config's ``extractor_mode``.

    Returns
    -------
    dict

    Example
    -------
    >>> from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
    >>> hf = state_dict_to_hf(WavLM(WavLMConfig.tiny()).state_dict())
    >>> "encoder.layers.0.attention.rel_attn_embed.weight" in hf
    True
    """
    pairs = [_conv_norm_name(extractor_mode)] + _HF_NAMES
    return {_rename(k, pairs): v for k, v in state_dict.items()}


def state_dict_from_hf(hf_state_dict, extractor_mode="default"):
    """Rename a Hugging Face ``WavLMModel`` state dict to our names.

    A ``wavlm.`` prefix (task models such as ``WavLMForXVector``) is removed
    and keys outside it dropped; ``masked_spec_embed`` is dropped.

    Arguments
    ---------
    hf_state_dict : dict
        Hugging Face names.
    extractor_mode : str
        The config's ``extractor_mode``.

    Returns
    -------
    dict
        Our names.
    list of str
        The dropped keys.

    Example
    -------
    >>> from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
    >>> state = WavLM(WavLMConfig.tiny()).state_dict()
    >>> back, dropped = state_dict_from_hf(state_dict_to_hf(state))
    >>> sorted(back) == sorted(state), dropped
    (True, [])
    """
    state, dropped = dict(hf_state_dict), []
    if any(k.startswith("wavlm.") for k in state):
        dropped = sorted(k for k in state if not k.startswith("wavlm."))
        state = {
            k[len("wavlm.") :]: v
            for k, v in state.items()
            if k.startswith("wavlm.")
        }
    dropped += [k for k in _HF_IGNORED_KEYS if k in state]
    norm_ours, norm_hf = _conv_norm_name(extractor_mode)
    pairs = [(hf, ours) for ours, hf in _HF_LEGACY_NAMES + _HF_NAMES]
    pairs.insert(0, (norm_hf, norm_ours))
    renamed = {
        _rename(k, pairs): v
        for k, v in state.items()
        if k not in _HF_IGNORED_KEYS
    }
    return renamed, dropped
