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

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from speechbrain.utils.logger import get_logger
from torch import nn

from speechbrain_ext.lobes.wavlm.config import (
    ACTIVATIONS,
    WavLMCheckpointError,
    WavLMConfig,
)
from speechbrain_ext.lobes.wavlm.state_dict import (
    check_state_dict,
    is_pretraining_key,
)

logger = get_logger(__name__)


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
        self.activation = ACTIVATIONS[config.activation_fn]

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

    def valid_frames(self, wav_lens, num_samples):
        """Valid output frames of each utterance of a padded batch.

        The one conversion of SpeechBrain's relative lengths into the frame
        counts that the back-end masks with (the same as :meth:`forward`
        masks attention with).

        Arguments
        ---------
        wav_lens : torch.Tensor, optional
            [B] relative lengths in (0, 1]; None means all full.
        num_samples : int
            Padded length S.

        Returns
        -------
        torch.LongTensor or None
            [B] frames (of the T output frames).

        Example
        -------
        >>> model = WavLM(WavLMConfig.tiny())
        >>> model.valid_frames(torch.tensor([1.0, 0.5]), 16000)
        tensor([49, 24])
        """
        if wav_lens is None:
            return None
        return self.frame_lengths(self.sample_lengths(wav_lens, num_samples))

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
        check_state_dict(self.state_dict(), kept, source)
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
