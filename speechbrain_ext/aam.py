"""Per-sample additive angular margin cross-entropy.

Wraps SpeechBrain's :class:`speechbrain.nnet.losses.AdditiveAngularMargin`,
which implements the reference formula: the target logit is
``cos(theta + m)`` where ``cos(theta) > cos(pi - m)`` and
``cos(theta) - m * sin(m)`` elsewhere (the monotonic fix), every logit scaled
by ``s``. SpeechBrain clamps the cosines to ``[-1 + 1e-7, 1 - 1e-7]`` before
taking the sine, which only matters for cosines within 1e-7 of +-1.
"""

import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin
from torch import nn


class AAMCrossEntropy(nn.Module):
    """Cross-entropy of AAM-softmax logits, one value per sample.

    Arguments
    ---------
    margin : float
        Angular margin ``m`` in radians (0.2 in the rounds, 0.5 in LMFT).
    scale : float
        Logit scale ``s``.

    Example
    -------
    >>> import torch
    >>> loss = AAMCrossEntropy(margin=0.2, scale=30.0)
    >>> cosine = torch.tensor([[0.9, 0.1, -0.2], [0.0, 0.5, 0.2]])
    >>> loss(cosine, torch.tensor([0, 1])).shape
    torch.Size([2])
    """

    def __init__(self, margin=0.2, scale=30.0):
        super().__init__()
        self.margin = margin
        self.scale = scale
        self.aam = AdditiveAngularMargin(margin=margin, scale=scale)

    def logits(self, cosine, targets):
        """Scaled logits with the margin on each sample's target class.

        Arguments
        ---------
        cosine : torch.Tensor
            ``[batch, n_classes]`` cosines.
        targets : torch.Tensor
            ``[batch]`` integer class indices.

        Returns
        -------
        torch.Tensor
            ``[batch, n_classes]`` float32 logits.
        """
        one_hot = F.one_hot(targets.long(), cosine.shape[-1]).to(cosine.dtype)
        return self.aam(cosine, one_hot)

    def forward(self, cosine, targets):
        """Per-sample cross-entropy (no reduction).

        Arguments
        ---------
        cosine : torch.Tensor
            ``[batch, n_classes]`` cosines.
        targets : torch.Tensor
            ``[batch]`` integer class indices.

        Returns
        -------
        torch.Tensor
            ``[batch]`` float32 losses.
        """
        return F.cross_entropy(
            self.logits(cosine, targets), targets.long(), reduction="none"
        )
