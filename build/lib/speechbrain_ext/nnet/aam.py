"""Per-sample additive angular margin cross-entropy.

Wraps SpeechBrain's :class:`speechbrain.nnet.losses.AdditiveAngularMargin`,
which implements the reference formula: the target logit is
``cos(theta + m)`` where ``cos(theta) > cos(pi - m)`` and
``cos(theta) - m * sin(m)`` elsewhere (the monotonic fix), every logit scaled
by ``s``. SpeechBrain clamps the cosines to ``[-1 + 1e-7, 1 - 1e-7]`` before
taking the sine, which only matters for cosines within 1e-7 of +-1.

The loss gate needs ``log(CE)`` of every sample. A confidently classified
sample has a float32 CE of exactly 0 (its log is -inf), so
:func:`log_cross_entropy` computes ``log(CE)`` in the log domain from the
logits instead: finite for every sample.
"""

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin
from torch import nn

# Below this, log(log1p(exp(u))) = u - exp(u) / 2 to float64 precision (the
# next term, exp(2u) / 24, is under 1e-18).
_SERIES_BELOW = -20.0


def log_softplus(u):
    """``log(log(1 + exp(u)))``, finite for every finite ``u``.

    Arguments
    ---------
    u : torch.Tensor
        Any shape, float64 recommended.

    Returns
    -------
    torch.Tensor
        Same shape and dtype.

    Example
    -------
    >>> u = torch.tensor([-1000.0, 0.0, 1000.0], dtype=torch.float64)
    >>> log_softplus(u)
    tensor([-1.0000e+03, -3.6651e-01,  6.9078e+00], dtype=torch.float64)
    """
    series = u - torch.exp(u) / 2
    # softplus returns u itself above its threshold (20 by default), off by
    # log1p(exp(-u)); at 50 that is under float64 resolution.
    direct = torch.log(F.softplus(u.clamp_min(_SERIES_BELOW), threshold=50.0))
    return torch.where(u < _SERIES_BELOW, series, direct)


def log_cross_entropy(logits, targets):
    """Exact ``log(CE)`` per sample, in the log domain.

    ``CE = log(1 + sum_{j != y} exp(z_j - z_y))``, so
    ``log(CE) = log(softplus(u))`` with ``u`` the log-sum-exp of the
    non-target logit gaps ``z_j - z_y``. Computed in float64 from the
    (float32) logits; finite whenever the logits are, also where the float32
    CE rounds to 0.

    Arguments
    ---------
    logits : torch.Tensor
        ``[batch, n_classes]`` (at least 2 classes).
    targets : torch.Tensor
        ``[batch]`` integer class indices.

    Returns
    -------
    torch.Tensor
        ``[batch]`` float64, no gradient.

    Example
    -------
    >>> logits = torch.tensor([[24.0, -3.0, -3.0], [0.0, 0.0, 0.0]])
    >>> ce = F.cross_entropy(logits, torch.tensor([0, 0]), reduction="none")
    >>> ce[0].item() == 0.0
    True
    >>> log_cross_entropy(logits, torch.tensor([0, 0]))
    tensor([-26.3069,   0.0940], dtype=torch.float64)
    """
    with torch.no_grad():
        z = logits.detach().double()
        targets = targets.long().reshape(-1, 1)
        gaps = z - z.gather(1, targets)
        gaps.scatter_(1, targets, float("-inf"))
        return log_softplus(torch.logsumexp(gaps, dim=1))


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
