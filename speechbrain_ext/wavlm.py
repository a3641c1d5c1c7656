"""WavLM written for this recipe: all hidden states of a padded batch.

WavLM (Chen et al., "WavLM: Large-Scale Self-Supervised Pre-Training for Full
Stack Speech Processing", IEEE JSTSP 2022) is a 7-layer convolutional feature
encoder followed by a convolutional positional embedding and a Transformer
with gated relative position bias. This module rebuilds it so that

* a padded batch gives, on every utterance's valid frames, the same hidden
  states as running that utterance alone: the group norm of the first
  convolution and the optional waveform normalisation take their statistics
  over valid samples only, padded frames are zeroed before the positional
  convolution and attention never looks at padded keys;
* the original checkpoint (``WavLM-Base+.pt``: a dict with ``cfg`` and
  ``model``) loads directly, module names being those of its state dict, and
  so does the Hugging Face layout of the same weights (a folder with
  ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``);
* attention runs through ``torch.nn.functional.scaled_dot_product_attention``
  with the gated position bias and the padding mask as one additive mask.

The convolutional feature encoder always runs without gradients: its
parameters never receive any.

Example
-------
>>> model = WavLM(WavLMConfig.tiny()).eval()
>>> wavs = torch.randn(2, 16000)
>>> hidden = model(wavs, wav_lens=torch.tensor([1.0, 0.6]))
>>> hidden.shape
torch.Size([3, 2, 49, 64])
>>> model.frame_lengths(torch.tensor([16000, 9600]))
tensor([49, 29])
"""

import ast
import dataclasses
import json
import logging
import math
import os
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_ext.io_utils import (
    CorruptFileError,
    atomic_torch_save,
    safe_torch_load,
)

logger = logging.getLogger(__name__)

_BASE_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2

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

# Values the original code assumes for keys missing from a ``cfg`` dict.
_ORIGINAL_DEFAULTS = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "normalize": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
}

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class WavLMCheckpointError(ValueError):
    """Raised when a checkpoint's keys, shapes or config do not fit WavLM."""


@dataclasses.dataclass
class WavLMConfig:
    """Hyper-parameters of :class:`WavLM` (defaults: WavLM Base+).

    Field names are those of the original ``cfg`` dict, except
    ``conv_layers`` (the original ``conv_feature_layers`` string, parsed).

    Arguments
    ---------
    conv_layers : sequence of (channels, kernel, stride)
        The convolutional feature encoder, one triple per layer.
    extractor_mode : str
        ``"default"``: group norm (one group per channel) in the first block
        only; ``"layer_norm"``: a layer norm in every block (WavLM Large).
    conv_bias : bool
        Whether the feature encoder's convolutions have a bias.
    normalize : bool
        Normalise each waveform to zero mean and unit variance over its
        valid samples first (WavLM Large; Base and Base+ do not).
    encoder_layers, encoder_embed_dim, encoder_ffn_embed_dim : int
        Number of Transformer layers, their width and feed-forward width.
    encoder_attention_heads : int
        Number of attention heads.
    activation_fn : str
        Feed-forward activation, ``"gelu"`` or ``"relu"``.
    layer_norm_first : bool
        Pre-LN Transformer (Large) instead of post-LN (Base, Base+).
    conv_pos, conv_pos_groups : int
        Kernel size and groups of the convolutional positional embedding.
    relative_position_embedding : bool
        Use the bucketed relative position bias (computed by the first layer,
        shared by all).
    num_buckets, max_distance : int
        Buckets and maximum distance of the relative position bias.
    gru_rel_pos : bool
        Gate the position bias per head and frame.
    dropout, attention_dropout, activation_dropout : float
        Dropout after attention / feed-forward, on attention weights and
        after the feed-forward activation (training mode only).
    encoder_layerdrop : float
        Probability of skipping a Transformer layer in training mode (its
        hidden state then repeats the previous one; the shared position
        bias is still applied). Under DDP this needs
        ``find_unused_parameters``; set it to 0 to avoid that.
    dropout_input : float
        Dropout on the projected features.
    extra : dict
        Other keys of an original ``cfg`` (pre-training settings), kept so
        that a saved checkpoint carries them.

    Example
    -------
    >>> config = WavLMConfig.base_plus()
    >>> config.encoder_layers, config.receptive_field, config.total_stride
    (12, 400, 320)
    >>> WavLMConfig.tiny(encoder_layers=3).encoder_layers
    3
    """

    conv_layers: tuple = _BASE_CONV_LAYERS
    extractor_mode: str = "default"
    conv_bias: bool = False
    normalize: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.1
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.conv_layers = _validate_conv_layers(self.conv_layers)
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ValueError(
                f"extractor_mode must be 'default' or 'layer_norm', "
                f"not {self.extractor_mode!r}"
            )
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(
                f"activation_fn must be one of {sorted(_ACTIVATIONS)}, "
                f"not {self.activation_fn!r}"
            )
        dim = self.encoder_embed_dim
        if dim % self.encoder_attention_heads:
            raise ValueError(
                f"encoder_embed_dim {dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if dim % self.conv_pos_groups:
            raise ValueError(
                f"encoder_embed_dim {dim} is not divisible by "
                f"conv_pos_groups {self.conv_pos_groups}"
            )
        if self.relative_position_embedding and self.num_buckets < 4:
            raise ValueError("num_buckets must be at least 4")
        if self.gru_rel_pos and not self.relative_position_embedding:
            raise ValueError(
                "gru_rel_pos needs relative_position_embedding=True"
            )

    @classmethod
    def base(cls, **overrides):
        """WavLM Base (same architecture as Base+).

        Arguments
        ---------
        **overrides
            Fields to change.

        Returns
        -------
        WavLMConfig

        Example
        -------
        >>> WavLMConfig.base().encoder_embed_dim
        768
        """
        return cls(**overrides)

    @classmethod
    def base_plus(cls, **overrides):
        """WavLM Base+ (12 layers, width 768, 12 heads, ~94.4M parameters).

        Arguments
        ---------
        **overrides
            Fields to change, e.g. ``encoder_layerdrop=0.0``.

        Returns
        -------
        WavLMConfig

        Example
        -------
        >>> WavLMConfig.base_plus(encoder_layerdrop=0.0).encoder_layerdrop
        0.0
        """
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides):
        """WavLM Large (24 pre-LN layers, width 1024, layer-norm extractor).

        Arguments
        ---------
        **overrides
            Fields to change.

        Returns
        -------
        WavLMConfig

        Example
        -------
        >>> WavLMConfig.large().encoder_layers
        24
        """
        settings = dict(
            extractor_mode="layer_norm",
            conv_bias=True,
            normalize=True,
            encoder_layers=24,
            encoder_embed_dim=1024,
            encoder_ffn_embed_dim=4096,
            encoder_attention_heads=16,
            layer_norm_first=True,
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def tiny(cls, **overrides):
        """A very small random-weight config for tests and demos.

        Two layers of width 64, four heads and a four-layer feature encoder
        of 32 channels with the real total stride (320) and receptive field
        (400), so frame counts match the real model.

        Arguments
        ---------
        **overrides
            Fields to change.

        Returns
        -------
        WavLMConfig

        Example
        -------
        >>> config = WavLMConfig.tiny()
        >>> config.receptive_field, config.total_stride
        (400, 320)
        """
        settings = dict(
            conv_layers=((32, 10, 5), (32, 3, 2), (32, 7, 4), (32, 9, 8)),
            encoder_layers=2,
            encoder_embed_dim=64,
            encoder_ffn_embed_dim=128,
            encoder_attention_heads=4,
            conv_pos=16,
            conv_pos_groups=4,
            num_buckets=32,
            max_distance=128,
        )
        settings.update(overrides)
        return cls(**settings)

    @property
    def total_stride(self):
        """Samples between two output frames (320 for the real model)."""
        stride = 1
        for _, _, s in self.conv_layers:
            stride *= s
        return stride

    @property
    def receptive_field(self):
        """Samples seen by one output frame (400 for the real model)."""
        field, stride = 1, 1
        for _, k, s in self.conv_layers:
            field += (k - 1) * stride
            stride *= s
        return field

    def frame_lengths(self, num_samples):
        """Number of output frames of unpadded inputs of these lengths.

        Arguments
        ---------
        num_samples : int or torch.LongTensor
            Input lengths in samples.

        Returns
        -------
        int or torch.LongTensor
            Output frames (0 for inputs shorter than the receptive field).

        Example
        -------
        >>> WavLMConfig.base_plus().frame_lengths(48000)
        149
        """
        n = num_samples
        for _, k, s in self.conv_layers:
            if isinstance(n, torch.Tensor):
                n = (torch.div(n - k, s, rounding_mode="floor") + 1).clamp(0)
            else:
                n = max((n - k) // s + 1, 0)
        return n

    @classmethod
    def from_original_cfg(cls, cfg):
        """Build from the ``cfg`` dict of an original WavLM checkpoint.

        Missing keys take the original code's defaults; keys that do not
        change the feature extractor are kept in ``extra``.

        Arguments
        ---------
        cfg : dict
            The checkpoint's ``cfg``.

        Returns
        -------
        WavLMConfig

        Example
        -------
        >>> config = WavLMConfig.from_original_cfg(
        ...     {"relative_position_embedding": True, "gru_rel_pos": True,
        ...      "max_distance": 800, "mask_prob": 0.65})
        >>> config == WavLMConfig.base_plus(
        ...     encoder_layerdrop=0.0, dropout_input=0.0,
        ...     extra={"mask_prob": 0.65})
        True
        """
        if not isinstance(cfg, dict):
            raise ValueError(f"cfg must be a dict, not {type(cfg).__name__}")
        values = dict(_ORIGINAL_DEFAULTS)
        values.update(cfg)
        layers = values.pop("conv_feature_layers")
        if isinstance(layers, str):
            layers = parse_conv_feature_layers(layers)
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in values.items() if k in fields}
        extra = {k: v for k, v in values.items() if k not in fields}
        return cls(conv_layers=layers, extra=extra, **kwargs)

    def to_original_cfg(self):
        """The ``cfg`` dict of the original checkpoint layout.

        Returns
        -------
        dict
            Plain values only (loadable with ``weights_only=True``).

        Example
        -------
        >>> WavLMConfig.base_plus().to_original_cfg()["conv_feature_layers"]
        '[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2'
        """
        cfg = dict(self.extra)
        for field in dataclasses.fields(self):
            if field.name not in ("conv_layers", "extra"):
                cfg[field.name] = getattr(self, field.name)
        cfg["conv_feature_layers"] = format_conv_feature_layers(
            self.conv_layers
        )
        return cfg

    @classmethod
    def from_hf_config(cls, hf_config, normalize=None):
        """Build from a Hugging Face ``WavLMConfig`` or its ``config.json``.

        Arguments
        ---------
        hf_config : dict or transformers.WavLMConfig
            The Hugging Face configuration.
        normalize : bool, optional
            Waveform normalisation (stored by Hugging Face in the feature
            extractor's ``do_normalize``); default: on for the layer-norm
            extractor, as in the original models.

        Returns
        -------
        WavLMConfig

        Example
        -------
        >>> WavLMConfig.from_hf_config({"num_hidden_layers": 2}).encoder_layers
        2
        """
        if not isinstance(hf_config, dict):
            hf_config = hf_config.to_dict()
        hf = dict(_HF_DEFAULTS)
        hf.update(hf_config)
        if hf["feat_extract_norm"] not in ("group", "layer"):
            raise ValueError(
                f"unsupported feat_extract_norm {hf['feat_extract_norm']!r}"
            )
        if hf["feat_extract_activation"] != "gelu" or hf["add_adapter"]:
            raise ValueError(
                "only feat_extract_activation='gelu' without adapter is "
                "supported"
            )
        mode = "default" if hf["feat_extract_norm"] == "group" else "layer_norm"
        conv = tuple(zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"]))
        if not len(hf["conv_dim"]) == len(hf["conv_kernel"]) == len(conv):
            raise ValueError("conv_dim, conv_kernel and conv_stride differ")
        return cls(
            conv_layers=conv,
            extractor_mode=mode,
            conv_bias=hf["conv_bias"],
            normalize=(mode == "layer_norm")
            if normalize is None
            else normalize,
            encoder_layers=hf["num_hidden_layers"],
            encoder_embed_dim=hf["hidden_size"],
            encoder_ffn_embed_dim=hf["intermediate_size"],
            encoder_attention_heads=hf["num_attention_heads"],
            activation_fn=hf["hidden_act"],
            layer_norm_first=hf["do_stable_layer_norm"],
            conv_pos=hf["num_conv_pos_embeddings"],
            conv_pos_groups=hf["num_conv_pos_embedding_groups"],
            num_buckets=hf["num_buckets"],
            max_distance=hf["max_bucket_distance"],
            dropout=hf["hidden_dropout"],
            attention_dropout=hf["attention_dropout"],
            activation_dropout=hf["activation_dropout"],
            encoder_layerdrop=hf["layerdrop"],
            dropout_input=hf["feat_proj_dropout"],
        )

    def to_hf_config(self):
        """Keyword arguments of a Hugging Face ``WavLMConfig``.

        Spec-augment masking is switched off (``mask_time_prob=0``), so the
        Hugging Face model has exactly this model's parameters.

        Returns
        -------
        dict

        Example
        -------
        >>> WavLMConfig.tiny().to_hf_config()["conv_stride"]
        [5, 2, 4, 8]
        """
        if not (self.relative_position_embedding and self.gru_rel_pos):
            raise ValueError(
                "Hugging Face WavLM always has a gated relative position bias"
            )
        if self.conv_layers[-1][0] == self.encoder_embed_dim:
            raise ValueError(
                "Hugging Face WavLM always has a feature projection; this "
                "config has none (conv width == encoder width)"
            )
        return dict(
            conv_dim=[c for c, _, _ in self.conv_layers],
            conv_kernel=[k for _, k, _ in self.conv_layers],
            conv_stride=[s for _, _, s in self.conv_layers],
            num_feat_extract_layers=len(self.conv_layers),
            feat_extract_norm=(
                "group" if self.extractor_mode == "default" else "layer"
            ),
            feat_extract_activation="gelu",
            conv_bias=self.conv_bias,
            num_hidden_layers=self.encoder_layers,
            hidden_size=self.encoder_embed_dim,
            intermediate_size=self.encoder_ffn_embed_dim,
            num_attention_heads=self.encoder_attention_heads,
            hidden_act=self.activation_fn,
            do_stable_layer_norm=self.layer_norm_first,
            num_conv_pos_embeddings=self.conv_pos,
            num_conv_pos_embedding_groups=self.conv_pos_groups,
            num_buckets=self.num_buckets,
            max_bucket_distance=self.max_distance,
            hidden_dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout,
            layerdrop=self.encoder_layerdrop,
            feat_proj_dropout=self.dropout_input,
            layer_norm_eps=1e-5,
            mask_time_prob=0.0,
            mask_feature_prob=0.0,
        )


# Hugging Face WavLMConfig defaults, for keys missing from a config.json.
_HF_DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "activation_dropout": 0.1,
    "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0,
    "layerdrop": 0.1,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "num_buckets": 320,
    "max_bucket_distance": 800,
    "do_stable_layer_norm": False,
    "add_adapter": False,
}


def _validate_conv_layers(layers):
    try:
        layers = tuple(tuple(layer) for layer in layers)
    except TypeError:
        raise ValueError(f"conv_layers: not a list of triples: {layers!r}")
    ok = layers and all(
        len(layer) == 3 and all(type(v) is int and v > 0 for v in layer)
        for layer in layers
    )
    if not ok:
        raise ValueError(
            "conv_layers must be a non-empty list of (channels, kernel, "
            f"stride) positive integers, got {layers!r}"
        )
    return layers


def parse_conv_feature_layers(text):
    """Parse the original ``conv_feature_layers`` string without ``eval``.

    Only list/tuple displays of integers, ``+`` and ``*`` are accepted.

    Arguments
    ---------
    text : str
        E.g. ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``.

    Returns
    -------
    tuple of (channels, kernel, stride)

    Example
    -------
    >>> parse_conv_feature_layers("[(8,10,5)] + [(8,3,2)] * 2")
    ((8, 10, 5), (8, 3, 2), (8, 3, 2))
    """

    def _value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List):
            return [_value(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(_value(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = _value(node.left), _value(node.right)
            if isinstance(left, list) and isinstance(right, list):
                return left + right
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = _value(node.left), _value(node.right)
            if isinstance(left, list) and type(right) is int:
                if 0 <= right <= 1000:
                    return left * right
        raise ValueError(ast.dump(node)[:60])

    try:
        return _validate_conv_layers(_value(ast.parse(text, mode="eval").body))
    except (SyntaxError, ValueError, TypeError) as error:
        raise ValueError(
            f"cannot parse conv_feature_layers {text!r} ({error})"
        ) from None


def format_conv_feature_layers(conv_layers):
    """Write conv layers as the original ``conv_feature_layers`` string.

    Arguments
    ---------
    conv_layers : sequence of (channels, kernel, stride)

    Returns
    -------
    str

    Example
    -------
    >>> format_conv_feature_layers([(8, 10, 5), (8, 3, 2), (8, 3, 2)])
    '[(8,10,5)] + [(8,3,2)] * 2'
    """
    runs = []
    for layer in conv_layers:
        if runs and runs[-1][0] == tuple(layer):
            runs[-1][1] += 1
        else:
            runs.append([tuple(layer), 1])
    parts = []
    for (c, k, s), n in runs:
        parts.append(f"[({c},{k},{s})]" + (f" * {n}" if n > 1 else ""))
    return " + ".join(parts)


class _ChannelLayerNorm(nn.Sequential):
    """Layer norm over channels of [B, C, T] in fp32 (child "1" as in the
    original checkpoint, where it sits between two transposes)."""

    def __init__(self, channels):
        super().__init__(OrderedDict([("1", nn.LayerNorm(channels))]))

    def forward(self, x):
        """[B, C, T] -> [B, C, T] normalised over C."""
        norm = self._modules["1"]
        y = F.layer_norm(
            x.transpose(1, 2).float(),
            norm.normalized_shape,
            norm.weight,
            norm.bias,
            norm.eps,
        )
        return y.transpose(1, 2).to(x.dtype)


class _ConvBlock(nn.Sequential):
    """Convolution, optional norm, GELU. Children are named "0" (conv) and
    "2" (norm) as in the original checkpoint, so it loads directly."""

    def __init__(self, n_in, n_out, kernel, stride, bias, norm):
        children = [("0", nn.Conv1d(n_in, n_out, kernel, stride, bias=bias))]
        if norm == "group":
            children.append(("2", nn.GroupNorm(n_out, n_out)))
        elif norm == "layer":
            children.append(("2", _ChannelLayerNorm(n_out)))
        super().__init__(OrderedDict(children))
        self.norm_type = norm

    def forward(self, x, lengths=None):
        """[B, C, T] and valid lengths (or None) -> output and its lengths."""
        conv = self._modules["0"]
        x = conv(x)
        if lengths is not None:
            k, s = conv.kernel_size[0], conv.stride[0]
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        if self.norm_type == "group":
            x = _group_norm_valid(x, lengths, self._modules["2"])
        elif self.norm_type == "layer":
            x = self._modules["2"](x)
        return F.gelu(x), lengths


def _group_norm_valid(x, lengths, norm):
    """Per-channel norm of [B, C, T] over each utterance's first
    ``lengths`` frames (all frames when None), in fp32. In place: the
    feature encoder runs without autograd."""
    dtype = x.dtype
    x = x.float()
    if lengths is None:
        x = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        return x.to(dtype)
    padded = torch.arange(x.shape[-1], device=x.device) >= lengths[:, None]
    padded = padded.unsqueeze(1)
    count = lengths.view(-1, 1, 1).to(x.dtype)
    x.masked_fill_(padded, 0.0)
    x.sub_(x.sum(-1, keepdim=True) / count)
    x.masked_fill_(padded, 0.0)
    var = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_() / count
    scale = torch.rsqrt(var + norm.eps) * norm.weight.view(1, -1, 1)
    x.mul_(scale).add_(norm.bias.view(1, -1, 1))
    return x.to(dtype)


class ConvFeatureEncoder(nn.Module):
    """The convolutional feature encoder: waveform [B, S] -> [B, C, T].

    Arguments
    ---------
    conv_layers : sequence of (channels, kernel, stride)
        One triple per layer.
    mode : str
        ``"default"`` (group norm in the first block) or ``"layer_norm"``.
    bias : bool
        Whether the convolutions have a bias.

    Example
    -------
    >>> encoder = ConvFeatureEncoder(WavLMConfig.tiny().conv_layers)
    >>> encoder(torch.randn(2, 16000)).shape
    torch.Size([2, 32, 49])
    """

    def __init__(self, conv_layers, mode="default", bias=False):
        super().__init__()
        blocks, n_in = [], 1
        for i, (channels, kernel, stride) in enumerate(conv_layers):
            if mode == "layer_norm":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            blocks.append(
                _ConvBlock(n_in, channels, kernel, stride, bias, norm)
            )
            n_in = channels
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wavs, lengths=None):
        """Features of a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            [B, S] waveforms.
        lengths : torch.LongTensor, optional
            Valid samples per waveform; statistics of the group norm are
            taken over the valid part only.

        Returns
        -------
        torch.Tensor
            [B, C, T] features.
        """
        x = wavs.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x


class _WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``weight_g * weight_v / ||weight_v||`` (norm
    over all dims but the kernel axis), stored under the original names."""

    def __init__(self, channels, kernel_size, groups):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(
            torch.empty(channels, channels // groups, kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self):
        """The effective convolution weight."""
        norm = torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True)
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x):
        """Convolve [B, C, T] with "same" padding."""
        return F.conv1d(
            x,
            self.weight(),
            self.bias,
            padding=self.padding,
            groups=self.groups,
        )


class ConvPositionalEmbedding(nn.Sequential):
    """Convolutional positional embedding: weight-normed grouped conv,
    "same" length (last frame dropped for even kernels), GELU.

    The conv is child "0" as in the original checkpoint.

    Arguments
    ---------
    channels : int
        Width of the Transformer.
    kernel_size : int
        Kernel size (128 in WavLM).
    groups : int
        Convolution groups (16 in WavLM).

    Example
    -------
    >>> pos_conv = ConvPositionalEmbedding(64, 16, 4)
    >>> pos_conv(torch.randn(2, 49, 64)).shape
    torch.Size([2, 49, 64])
    """

    def __init__(self, channels, kernel_size, groups):
        super().__init__(
            OrderedDict(
                [("0", _WeightNormConv1d(channels, kernel_size, groups))]
            )
        )
        self.remove_last = kernel_size % 2 == 0

    def forward(self, x):
        """[B, T, D] -> [B, T, D] positional embedding."""
        y = self._modules["0"](x.transpose(1, 2))
        if self.remove_last:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


def relative_position_buckets(length, num_buckets, max_distance, device=None):
    """Bucket index of every (query, key) offset, as in WavLM / T5.

    Half the buckets are for keys after the query; within a half, offsets
    below a quarter of ``num_buckets`` are exact, larger ones are spaced
    logarithmically up to ``max_distance``.

    Arguments
    ---------
    length : int
        Sequence length T.
    num_buckets : int
        Number of buckets.
    max_distance : int
        Offset beyond which all offsets share the last bucket.
    device : torch.device, optional

    Returns
    -------
    torch.LongTensor
        [T, T] bucket indices.

    Example
    -------
    >>> relative_position_buckets(3, 320, 800)
    tensor([[  0, 161, 162],
            [  1,   0, 161],
            [  2,   1,   0]])
    """
    positions = torch.arange(length, device=device)
    offsets = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (offsets > 0).long() * half
    distance = offsets.abs()
    max_exact = half // 2
    log_ratio = torch.log(distance.float() / max_exact)
    log_ratio = log_ratio / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class GatedRelativeAttention(nn.Module):
    """Multi-head self-attention with WavLM's gated relative position bias.

    Arguments
    ---------
    dim : int
        Model width.
    heads : int
        Number of heads.
    dropout : float
        Dropout on attention weights (training mode).
    has_relative_attention_bias : bool
        Own the bucket embedding (first layer only).
    num_buckets, max_distance : int
        Relative position buckets.
    gated : bool
        Gate the shared position bias per head and query frame.

    Example
    -------
    >>> attention = GatedRelativeAttention(64, 4, 0.0, True, 32, 128, True)
    >>> x = torch.randn(2, 10, 64)
    >>> bias = attention.position_bias(10)
    >>> attention(x, bias).shape
    torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        dim,
        heads,
        dropout=0.0,
        has_relative_attention_bias=False,
        num_buckets=320,
        max_distance=800,
        gated=True,
    ):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gated = gated
        if gated:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def position_bias(self, length):
        """The [H, T, T] relative position bias (first layer only)."""
        weight = self.relative_attention_bias.weight
        buckets = relative_position_buckets(
            length, self.num_buckets, self.max_distance, weight.device
        )
        return F.embedding(buckets, weight).permute(2, 0, 1)

    def _gate(self, x):
        """[B, H, T, 1] gate of the position bias from the input [B, T, D]."""
        b, t, _ = x.shape
        # The 8 outputs of grep_linear are summed in two groups of 4 before
        # the sigmoid: summing the weights first is the same, and cheaper.
        weight = self.grep_linear.weight.view(2, 4, -1).sum(1)
        bias = self.grep_linear.bias.view(2, 4).sum(1)
        logits = F.linear(x.view(b, t, self.heads, self.head_dim), weight, bias)
        gate_a, gate_b = torch.sigmoid(logits).unbind(-1)
        gate = gate_a * (gate_b * self.grep_a.view(1, 1, -1) - 1.0) + 2.0
        return gate.transpose(1, 2).unsqueeze(-1)

    def forward(self, x, position_bias=None, key_padding=None):
        """Attend.

        Arguments
        ---------
        x : torch.Tensor
            [B, T, D] input.
        position_bias : torch.Tensor, optional
            [H, T, T] shared relative position bias.
        key_padding : torch.BoolTensor, optional
            [B, T], True at padded frames (never attended to).

        Returns
        -------
        torch.Tensor
            [B, T, D]
        """
        b, t, d = x.shape
        # One matrix product for q, k and v is faster than three.
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])
        qkv_bias = torch.cat([p.bias for p in projections])
        qkv = F.linear(x, weight, qkv_bias).view(b, t, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if key_padding is not None:
            mask = torch.zeros(b, 1, 1, t, dtype=q.dtype, device=q.device)
            mask.masked_fill_(key_padding.view(b, 1, 1, t), float("-inf"))
        if position_bias is not None:
            bias = position_bias.to(q.dtype)
            if self.gated:
                gate = self._gate(x).to(q.dtype)
                if mask is None:
                    mask = gate * bias
                else:
                    mask = torch.addcmul(mask, gate, bias)
            else:
                mask = bias if mask is None else mask + bias
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    """One WavLM Transformer layer (post-LN or pre-LN).

    Arguments
    ---------
    config : WavLMConfig
        The model's hyper-parameters.
    has_relative_attention_bias : bool
        Whether this layer owns the relative position embedding (layer 0).

    Example
    -------
    >>> layer = TransformerLayer(WavLMConfig.tiny())
    >>> layer(torch.randn(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    """

    def __init__(self, config, has_relative_attention_bias=False):
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = GatedRelativeAttention(
            dim,
            config.encoder_attention_heads,
            config.attention_dropout,
            has_relative_attention_bias,
            config.num_buckets,
            config.max_distance,
            config.gru_rel_pos,
        )
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = config.layer_norm_first
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout
        self.activation = _ACTIVATIONS[config.activation_fn]

    def _feed_forward(self, x):
        x = self.activation(self.fc1(x))
        x = F.dropout(x, self.activation_dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)

    def forward(self, x, position_bias=None, key_padding=None):
        """[B, T, D] -> [B, T, D]; see :class:`GatedRelativeAttention`."""
        if self.layer_norm_first:
            attended = self.self_attn(
                self.self_attn_layer_norm(x), position_bias, key_padding
            )
            x = x + F.dropout(attended, self.dropout, self.training)
            return x + self._feed_forward(self.final_layer_norm(x))
        attended = self.self_attn(x, position_bias, key_padding)
        x = x + F.dropout(attended, self.dropout, self.training)
        x = self.self_attn_layer_norm(x)
        return self.final_layer_norm(x + self._feed_forward(x))


class TransformerEncoder(nn.Module):
    """Positional convolution + Transformer, returning every hidden state.

    Arguments
    ---------
    config : WavLMConfig
        The model's hyper-parameters.

    Example
    -------
    >>> encoder = TransformerEncoder(WavLMConfig.tiny())
    >>> encoder(torch.randn(2, 10, 64)).shape
    torch.Size([3, 2, 10, 64])
    """

    def __init__(self, config):
        super().__init__()
        self.pos_conv = ConvPositionalEmbedding(
            config.encoder_embed_dim, config.conv_pos, config.conv_pos_groups
        )
        self.layers = nn.ModuleList(
            TransformerLayer(
                config, config.relative_position_embedding and i == 0
            )
            for i in range(config.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(config.encoder_embed_dim)
        self.layer_norm_first = config.layer_norm_first
        self.relative = config.relative_position_embedding
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop

    def forward(self, x, padding=None):
        """Hidden states [L + 1, B, T, D] of the input [B, T, D].

        Arguments
        ---------
        x : torch.Tensor
            [B, T, D] projected features.
        padding : torch.BoolTensor, optional
            [B, T], True at padded frames.

        Returns
        -------
        torch.Tensor
            [L + 1, B, T, D]: the input after the positional convolution
            (and layer norm for post-LN), then every layer's output. For
            pre-LN models the final ``layer_norm`` is not applied (as in the
            original ``layer_results`` and Hugging Face ``hidden_states``).
        """
        if padding is not None:
            # The unpadded run sees zeros beyond its end in the "same"
            # convolution, so zeroed padding keeps valid frames identical.
            x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, self.dropout, self.training)
        # As in the original model, layer 0 computes the relative position
        # bias and hands it on: when layer 0 is dropped, the later layers
        # run without it.
        bias = None
        hidden = [x]
        for index, layer in enumerate(self.layers):
            if self.keep_layer(index):
                if index == 0 and self.relative:
                    bias = layer.self_attn.position_bias(x.shape[1])
                x = layer(x, bias, padding)
            hidden.append(x)
        return torch.stack(hidden)

    def keep_layer(self, index):
        """Whether layer ``index`` runs in this forward pass (layer drop).

        Arguments
        ---------
        index : int
            0-based layer index.

        Returns
        -------
        bool
            True in eval mode or without layer drop; in training, False
            with probability ``encoder_layerdrop`` (one draw per layer).
        """
        del index
        if not (self.training and self.layerdrop > 0.0):
            return True
        return bool(torch.rand(()) >= self.layerdrop)


class WavLM(nn.Module):
    """WavLM returning all hidden states of a (padded) batch of waveforms.

    Arguments
    ---------
    config : WavLMConfig or dict
        Hyper-parameters (e.g. ``WavLMConfig.base_plus()``, or a dict of its
        fields as written in hparams). Weights are randomly initialised; use
        :func:`load_wavlm` for pre-trained ones.

    Example
    -------
    >>> model = WavLM(WavLMConfig.tiny()).eval()
    >>> model(torch.randn(3, 8000)).shape
    torch.Size([3, 3, 24, 64])
    >>> len(model.transformer_layers())
    2
    """

    def __init__(self, config):
        super().__init__()
        if isinstance(config, dict):
            config = WavLMConfig(**config)
        self.config = config
        conv_dim = config.conv_layers[-1][0]
        self.feature_extractor = ConvFeatureEncoder(
            config.conv_layers, config.extractor_mode, config.conv_bias
        )
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.post_extract_proj = None
        if conv_dim != config.encoder_embed_dim:
            self.post_extract_proj = nn.Linear(
                conv_dim, config.encoder_embed_dim
            )
        self.encoder = TransformerEncoder(config)
        self.reset_parameters()
        self.feature_extractor.requires_grad_(False)

    def reset_parameters(self):
        """Random initialisation as in the original pre-training code."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, _WeightNormConv1d):
                k, dim = module.weight_v.shape[-1], module.weight_v.shape[0]
                nn.init.normal_(module.weight_v, std=(4.0 / (k * dim)) ** 0.5)
                with torch.no_grad():
                    module.weight_g.copy_(
                        torch.linalg.vector_norm(
                            module.weight_v, dim=(0, 1), keepdim=True
                        )
                    )
                nn.init.zeros_(module.bias)
            elif isinstance(module, GatedRelativeAttention) and module.gated:
                nn.init.ones_(module.grep_a)

    def transformer_layers(self):
        """The L Transformer layer modules, first to last.

        Returns
        -------
        list of TransformerLayer

        Example
        -------
        >>> len(WavLM(WavLMConfig.tiny()).transformer_layers())
        2
        """
        return list(self.encoder.layers)

    def frame_lengths(self, num_samples):
        """Output frames of unpadded inputs of ``num_samples`` samples.

        Arguments
        ---------
        num_samples : int or torch.LongTensor

        Returns
        -------
        int or torch.LongTensor

        Example
        -------
        >>> WavLM(WavLMConfig.tiny()).frame_lengths(torch.tensor([400, 719]))
        tensor([1, 1])
        """
        return self.config.frame_lengths(num_samples)

    def sample_lengths(self, wav_lens, num_samples):
        """Valid samples of each waveform from SpeechBrain relative lengths.

        Arguments
        ---------
        wav_lens : torch.Tensor
            [B] relative lengths in (0, 1].
        num_samples : int
            Padded length S.

        Returns
        -------
        torch.LongTensor
            ``round(wav_lens * S)``.

        Example
        -------
        >>> WavLM(WavLMConfig.tiny()).sample_lengths(torch.tensor([1, .5]), 9)
        tensor([9, 4])
        """
        lengths = torch.round(wav_lens.double() * num_samples).long()
        return lengths.clamp(max=num_samples)

    def relative_frame_lengths(self, wav_lens, num_samples):
        """Relative frame lengths (for pooling) of a padded batch.

        Arguments
        ---------
        wav_lens : torch.Tensor, optional
            [B] relative lengths in (0, 1]; None means all full.
        num_samples : int
            Padded length S.

        Returns
        -------
        torch.Tensor or None
            [B] valid frames divided by the output length T.

        Example
        -------
        >>> model = WavLM(WavLMConfig.tiny())
        >>> model.relative_frame_lengths(torch.tensor([1.0, 0.5]), 16000)
        tensor([1.0000, 0.4898])
        """
        if wav_lens is None:
            return None
        frames = self.frame_lengths(self.sample_lengths(wav_lens, num_samples))
        return frames.float() / self.frame_lengths(num_samples)

    def forward(self, wavs, wav_lens=None):
        """All hidden states of a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            [B, S] waveforms (16 kHz), right-padded.
        wav_lens : torch.Tensor, optional
            [B] SpeechBrain relative lengths in (0, 1] (valid fraction of S).

        Returns
        -------
        torch.Tensor
            [L + 1, B, T, D]; index 0 is the encoder input after the
            positional convolution (and layer norm for post-LN models), then
            each layer's output. On each utterance's valid frames, equal to
            running it alone; frames beyond its length are zero.

        Raises
        ------
        ValueError
            If ``wavs`` is not 2-D or an utterance is shorter than the
            receptive field (400 samples for the real model).
        """
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be [batch, samples], got {wavs.shape}")
        num_samples = wavs.shape[1]
        lengths = None
        if wav_lens is not None:
            lengths = self.sample_lengths(wav_lens.to(wavs.device), num_samples)
            shortest = int(lengths.min())
            if self.frame_lengths(shortest) < 1:
                raise ValueError(
                    f"an utterance has {shortest} samples, fewer than the "
                    f"receptive field of WavLM ({self.config.receptive_field})"
                )
            if shortest == num_samples:
                lengths = None
        elif self.frame_lengths(num_samples) < 1:
            raise ValueError(
                f"{num_samples} samples is fewer than the receptive field of "
                f"WavLM ({self.config.receptive_field})"
            )
        with torch.no_grad():
            if self.config.normalize:
                wavs = _normalize_valid(wavs, lengths)
            features = self.feature_extractor(wavs, lengths)
        x = self.layer_norm(features.transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = F.dropout(x, self.config.dropout_input, self.training)
        padding = None
        if lengths is not None:
            frames = self.frame_lengths(lengths)
            positions = torch.arange(x.shape[1], device=x.device)
            padding = positions >= frames[:, None]
        hidden = self.encoder(x, padding)
        if padding is not None:
            hidden = hidden.masked_fill(padding[None, :, :, None], 0.0)
        return hidden

    def load_original_state_dict(self, state_dict, source="state dict"):
        """Load a state dict in the original checkpoint's naming.

        Keys used only in pre-training (``mask_emb``, ``label_embs_concat``,
        ``final_proj.*``...) are ignored and logged; anything else must match
        exactly.

        Arguments
        ---------
        state_dict : dict
            Original WavLM state dict (``checkpoint["model"]``).
        source : str
            Named in errors and logs (e.g. the file).

        Returns
        -------
        list of str
            The ignored keys.

        Raises
        ------
        WavLMCheckpointError
            One line naming the first missing, unexpected or mis-shaped keys.

        Example
        -------
        >>> model = WavLM(WavLMConfig.tiny())
        >>> state = dict(WavLM(WavLMConfig.tiny()).state_dict())
        >>> state["mask_emb"] = torch.zeros(64)
        >>> model.load_original_state_dict(state)
        ['mask_emb']
        """
        if not isinstance(state_dict, dict):
            raise WavLMCheckpointError(
                f"{source}: the state dict is a {type(state_dict).__name__}, "
                "not a dict"
            )
        ignored = sorted(k for k in state_dict if is_pretraining_key(k))
        kept = {k: v for k, v in state_dict.items() if k not in ignored}
        _check_state_dict(self.state_dict(), kept, source)
        self.load_state_dict(kept)
        if ignored:
            logger.info(
                "%s: ignored keys used only in pre-training: %s",
                source,
                ", ".join(ignored),
            )
        return ignored


def _normalize_valid(wavs, lengths):
    """Zero mean, unit variance per waveform over its valid samples (eps
    1e-5 as the original's layer norm); padded samples are set to zero."""
    if lengths is None:
        return F.layer_norm(wavs, wavs.shape[-1:])
    wavs = wavs.float()
    valid = torch.arange(wavs.shape[1], device=wavs.device) < lengths[:, None]
    count = lengths.unsqueeze(1).to(wavs.dtype)
    wavs = wavs * valid
    mean = wavs.sum(1, keepdim=True) / count
    centred = (wavs - mean) * valid
    var = centred.square().sum(1, keepdim=True) / count
    return centred * torch.rsqrt(var + 1e-5)


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


def _first(keys, n=3):
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
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_first(mismatched)}")
    return "; ".join(problems)


def _check_state_dict(expected, state_dict, source):
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


def _load_hf_folder(folder):
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{folder}: neither a WavLM checkpoint file nor a Hugging Face "
            "folder (no config.json)"
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            hf_config = json.load(f)
        normalize = None
        preprocessor = os.path.join(folder, "preprocessor_config.json")
        if os.path.isfile(preprocessor):
            with open(preprocessor, encoding="utf-8") as f:
                normalize = json.load(f).get("do_normalize")
        config = WavLMConfig.from_hf_config(hf_config, normalize=normalize)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise WavLMCheckpointError(f"{config_path}: {error}") from None
    safetensors_path = os.path.join(folder, "model.safetensors")
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        source = safetensors_path
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(
                f"{source}: reading it needs the 'safetensors' package "
                "(pip install safetensors)"
            ) from None
        try:
            hf_state = load_file(source)
        except (SafetensorError, OSError) as error:
            raise CorruptFileError(
                f"{source}: cannot be read as safetensors ({error})"
            ) from None
    elif os.path.isfile(bin_path):
        source = bin_path
        hf_state = safe_torch_load(source)
    else:
        raise FileNotFoundError(
            f"{folder}: no model.safetensors or pytorch_model.bin"
        )
    if not isinstance(hf_state, dict):
        raise WavLMCheckpointError(f"{source}: not a state dict")
    state, dropped = state_dict_from_hf(hf_state, config.extractor_mode)
    model = WavLM(config)
    _check_state_dict(model.state_dict(), state, source)
    model.load_state_dict(state)
    if dropped:
        logger.info(
            "%s: ignored keys not used for features: %s",
            source,
            ", ".join(dropped),
        )
    return model


def load_wavlm(path, map_location="cpu"):
    """Load a pre-trained WavLM (eval mode), detecting the layout.

    Arguments
    ---------
    path : str or os.PathLike
        The original checkpoint file (``WavLM-Base+.pt``: a dict with
        ``cfg`` and ``model``) or a Hugging Face folder (``config.json`` and
        ``model.safetensors`` or ``pytorch_model.bin``). Read with
        ``weights_only=True``: a file needing arbitrary code is refused.
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    WavLM

    Raises
    ------
    FileNotFoundError, UnsafeCheckpointError, CorruptFileError,
    WavLMCheckpointError
        With one line naming the file and the problem.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "wavlm.pt")
    >>> save_wavlm(WavLM(WavLMConfig.tiny()), path)
    >>> load_wavlm(path).training
    False
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        model = _load_hf_folder(path)
    else:
        checkpoint = safe_torch_load(path)
        if not (
            isinstance(checkpoint, dict)
            and "cfg" in checkpoint
            and "model" in checkpoint
        ):
            found = (
                f"keys {_first(sorted(map(str, checkpoint)))}"
                if isinstance(checkpoint, dict)
                else f"a {type(checkpoint).__name__}"
            )
            raise WavLMCheckpointError(
                f"{path}: not a WavLM checkpoint (expected a dict with 'cfg' "
                f"and 'model', found {found})"
            )
        try:
            config = WavLMConfig.from_original_cfg(checkpoint["cfg"])
        except (ValueError, TypeError) as error:
            raise WavLMCheckpointError(f"{path}: bad cfg: {error}") from None
        model = WavLM(config)
        model.load_original_state_dict(checkpoint["model"], source=path)
    return model.to(map_location).eval()


def save_wavlm(model, path):
    """Save a WavLM in the original checkpoint layout (atomically).

    The file is ``{"cfg": dict, "model": state_dict}`` like
    ``WavLM-Base+.pt``; pre-training-only tensors (``mask_emb``) are not
    written.

    Arguments
    ---------
    model : WavLM
        The model.
    path : str or os.PathLike
        Destination file.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "wavlm.pt")
    >>> save_wavlm(WavLM(WavLMConfig.tiny()), path)
    >>> sorted(safe_torch_load(path))
    ['cfg', 'model']
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {"cfg": model.config.to_original_cfg(), "model": state}, path
    )
