"""WavLM's hyper-parameters and their translation from the original and
Hugging Face layouts.

:class:`WavLMConfig` holds the fields of the original checkpoint's ``cfg``
dict that define the network, with presets (``tiny``, ``base``,
``base_plus``, ``large``) and readers of an original ``cfg`` dict or a
Hugging Face ``config.json``.

Example
-------
>>> WavLMConfig.base_plus().encoder_layers
12
>>> format_conv_feature_layers(WavLMConfig.tiny().conv_layers)
'[(32,10,5)] + [(32,3,2)] + [(32,7,4)] + [(32,9,8)]'
"""

import ast
import dataclasses

import torch
import torch.nn.functional as F

_BASE_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2

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

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


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
        if self.activation_fn not in ACTIVATIONS:
            raise ValueError(
                f"activation_fn must be one of {sorted(ACTIVATIONS)}, "
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
