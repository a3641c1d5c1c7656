"""Multi-head factorized attentive pooling (MHFA) back-end.

Peng et al., "An attention-based backend allowing efficient fine-tuning of
transformer models for speaker verification", SLT 2022. Keys and values are
two learned softmax-weighted sums over the hidden states of all layers of a
speech transformer, each compressed by a linear layer; every head attends over
time with logits computed from the keys and pools the values; the pooled
heads are projected to the speaker embedding. Parameter names follow the
reference implementation so that its checkpoints map one to one.
"""

import torch
import torch.nn.functional as F
from torch import nn


class MHFA(nn.Module):
    """MHFA pooling of stacked transformer hidden states.

    Arguments
    ---------
    n_layers : int
        Number of stacked hidden states (transformer layers + 1).
    input_size : int
        Width of the hidden states.
    n_heads : int
        Number of attention heads.
    compression_size : int
        Width of the compressed keys and values.
    output_size : int
        Size of the speaker embedding.

    Example
    -------
    >>> mhfa = MHFA(n_layers=3, input_size=16, n_heads=4,
    ...             compression_size=8, output_size=10)
    >>> hidden = torch.randn(3, 2, 50, 16)
    >>> mhfa(hidden, frames=torch.tensor([50, 30])).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        n_layers=13,
        input_size=768,
        n_heads=64,
        compression_size=128,
        output_size=256,
    ):
        super().__init__()
        self.n_layers = n_layers
        self.weights_k = nn.Parameter(torch.ones(n_layers))
        self.weights_v = nn.Parameter(torch.ones(n_layers))
        self.cmp_linear_k = nn.Linear(input_size, compression_size)
        self.cmp_linear_v = nn.Linear(input_size, compression_size)
        self.att_head = nn.Linear(compression_size, n_heads)
        self.pooling_fc = nn.Linear(n_heads * compression_size, output_size)

    def forward(self, hidden, frames=None):
        """Pool the hidden states into one embedding per utterance.

        Arguments
        ---------
        hidden : torch.Tensor
            ``[n_layers, batch, frames, input_size]``.
        frames : torch.LongTensor, optional
            Valid frames of each utterance ``[batch]`` (the encoder's own
            count, e.g. ``WavLM.valid_frames``); later frames are masked
            out of the attention softmax. None: all frames are valid.

        Returns
        -------
        torch.Tensor
            ``[batch, output_size]``.
        """
        if hidden.shape[0] != self.n_layers:
            raise ValueError(
                f"MHFA expects {self.n_layers} stacked hidden states, "
                f"got {hidden.shape[0]}"
            )
        keys = torch.tensordot(
            F.softmax(self.weights_k, dim=-1).to(hidden.dtype), hidden, dims=1
        )
        values = torch.tensordot(
            F.softmax(self.weights_v, dim=-1).to(hidden.dtype), hidden, dims=1
        )
        keys = self.cmp_linear_k(keys)
        values = self.cmp_linear_v(values)
        logits = self.att_head(keys)
        if frames is not None:
            valid = frames.long().clamp(min=1).to(logits.device)
            positions = torch.arange(logits.shape[1], device=logits.device)
            padded = positions[None, :] >= valid[:, None]
            logits = logits.masked_fill(
                padded[:, :, None], torch.finfo(logits.dtype).min
            )
        attention = F.softmax(logits, dim=1)
        pooled = torch.einsum("bth,btc->bhc", attention, values)
        return self.pooling_fc(pooled.flatten(start_dim=1))
