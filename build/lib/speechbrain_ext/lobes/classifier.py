"""Cosine classification head for additive angular margin training.

The head holds one weight vector per (pseudo-)speaker and returns the cosine
between the L2-normalised embedding and each L2-normalised weight; the margin
is applied afterwards by :class:`speechbrain_ext.nnet.aam.AAMCrossEntropy`.
"""

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """Cosine similarities between embeddings and class weights.

    Computed in float32 even under mixed precision.

    Arguments
    ---------
    input_size : int
        Embedding size.
    n_classes : int
        Number of classes (pseudo-speakers).
    init : str
        ``"xavier_normal"`` (the reference) or ``"xavier_uniform"`` (the
        initialisation of SpeechBrain's ECAPA ``Classifier``).

    Example
    -------
    >>> head = CosineClassifier(input_size=16, n_classes=10)
    >>> head.weight.shape
    torch.Size([10, 16])
    >>> cosine = head(torch.randn(4, 1, 16))
    >>> cosine.shape
    torch.Size([4, 10])
    >>> bool(cosine.abs().max() <= 1.0 + 1e-6)
    True
    """

    def __init__(self, input_size, n_classes, init="xavier_normal"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, input_size))
        initialisers = {
            "xavier_normal": nn.init.xavier_normal_,
            "xavier_uniform": nn.init.xavier_uniform_,
        }
        if init not in initialisers:
            raise ValueError(
                f"init={init!r}: expected one of {sorted(initialisers)}"
            )
        initialisers[init](self.weight)

    def forward(self, embeddings):
        """Cosine between each embedding and each class weight.

        Arguments
        ---------
        embeddings : torch.Tensor
            ``[batch, emb]`` or ``[batch, 1, emb]``.

        Returns
        -------
        torch.Tensor
            ``[batch, n_classes]`` in [-1, 1].
        """
        if embeddings.dim() == 3:
            embeddings = embeddings.squeeze(1)
        with torch.autocast(embeddings.device.type, enabled=False):
            return F.linear(
                F.normalize(embeddings.float()),
                F.normalize(self.weight.float()),
            )
