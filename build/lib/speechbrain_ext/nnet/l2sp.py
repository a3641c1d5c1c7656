"""L2-SP regulariser and the normalised training objective.

``R`` is the sum, over the fine-tuned WavLM tensors, of the L2 norm of the
difference to the pre-trained weights (Li et al., "Explicit inductive bias for
transfer learning with convolutional networks", ICML 2018). The objective
normalises both terms by their own detached value:
``L / L.detach() + w * R / (R.detach() + eps)``; the first term is
:func:`normalised_loss`, the gradient of the second is added by
:meth:`L2SP.add_gradient`.
"""

import torch
from torch import nn


class L2SP(nn.Module):
    """Distance of a module's trainable weights to a snapshot of them.

    The snapshot is taken at construction (call it right after loading the
    pre-trained weights and freezing what is not trained; frozen tensors never
    move and are left out).

    Arguments
    ---------
    module : torch.nn.Module
        The module whose trainable parameters are regularised.

    Example
    -------
    >>> layer = nn.Linear(3, 2)
    >>> reg = L2SP(layer)
    >>> float(reg(layer).detach())
    0.0
    >>> with torch.no_grad():
    ...     _ = layer.weight.add_(1.0)
    >>> round(float(reg(layer).detach()), 4)  # ||ones(2, 3)|| = sqrt(6)
    2.4495
    """

    def __init__(self, module):
        super().__init__()
        self.names = [
            name for name, p in module.named_parameters() if p.requires_grad
        ]
        params = dict(module.named_parameters())
        for i, name in enumerate(self.names):
            self.register_buffer(
                f"anchor_{i}", params[name].detach().clone(), persistent=False
            )

    def add_gradient(self, module, weight=0.01, eps=1e-5, grad_scale=1.0):
        """Add the gradient of ``weight * R / (R.detach() + eps)`` to ``.grad``.

        Done outside the model's backward pass: under DDP with unused
        parameters (WavLM's layer drop), a parameter may receive gradient
        only once from the wrapped forward. The term is the same on every
        process, so adding it after the gradient all-reduce is exact.

        Arguments
        ---------
        module : torch.nn.Module
            The regularised module (unwrapped).
        weight : float
            ``w`` (0.01 in the reference).
        eps : float
            Added to ``R.detach()``.
        grad_scale : float
            Multiplies the added gradient (a mixed-precision loss scale).

        Returns
        -------
        torch.Tensor
            ``R`` (detached).

        Example
        -------
        >>> layer = nn.Linear(2, 1)
        >>> reg = L2SP(layer)
        >>> with torch.no_grad():
        ...     _ = layer.bias.add_(3.0)
        >>> float(reg.add_gradient(layer))
        3.0
        >>> layer.bias.grad
        tensor([0.0033])
        """
        params = dict(module.named_parameters())
        tensors = [params[name] for name in self.names]
        with torch.enable_grad():
            reg = self(module)
            term = weight * reg / (reg.detach() + eps)
            grads = torch.autograd.grad(term, tensors)
        for tensor, grad in zip(tensors, grads):
            grad = grad.to(tensor.dtype) * grad_scale
            if tensor.grad is None:
                tensor.grad = grad
            else:
                tensor.grad.add_(grad)
        return reg.detach()

    def forward(self, module):
        """``sum_i ||w_i - w_i^pretrained||_2`` over the snapshot tensors.

        Arguments
        ---------
        module : torch.nn.Module
            The same module (or a copy with the same parameter names).

        Returns
        -------
        torch.Tensor
            Scalar float32.
        """
        params = dict(module.named_parameters())
        total = torch.zeros((), device=self.anchor_0.device)
        for i, name in enumerate(self.names):
            diff = params[name].float() - getattr(self, f"anchor_{i}").float()
            total = total + torch.linalg.vector_norm(diff)
        return total


def normalised_loss(loss, scale=None):
    """``L / L.detach()``: the classification part of the objective.

    Arguments
    ---------
    loss : torch.Tensor
        Scalar classification loss ``L``.
    scale : torch.Tensor, optional
        The value to divide by instead of ``L.detach()`` (in DDP: the loss
        of the global batch). A zero scale leaves ``L`` undivided.

    Returns
    -------
    torch.Tensor
        Scalar, value 1 (unless ``scale`` is given), gradient
        ``grad(L) / L``.

    Example
    -------
    >>> loss = torch.tensor(2.0, requires_grad=True)
    >>> normalised_loss(loss)
    tensor(1., grad_fn=<DivBackward0>)
    """
    scale = loss.detach() if scale is None else scale.detach()
    return loss / torch.where(scale != 0, scale, torch.ones_like(scale))
