"""The DINO self-distillation loss, with teacher centering and temperature.

DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021; for speakers, RDINO: Chen et al., "Pushing the
limits of self-supervised speaker verification using regularized
distillation framework", ICASSP 2023) trains a student to match, on every
crop of an utterance, the output distribution the teacher gives on the
*other* global crops. Collapse is avoided by centering the teacher outputs
(a running mean is subtracted) and sharpening them with a low temperature,
warmed up from a higher value at the start of training.

Example
-------
>>> loss_fn = DINOLoss(output_size=8, n_global_crops=2)
>>> student = torch.randn(5 * 4, 8)  # 2 global + 3 local crops, batch 4
>>> teacher = torch.randn(2 * 4, 8)
>>> loss = loss_fn(student, teacher, teacher_temperature=0.04)
>>> loss.shape, bool(loss > 0)
(torch.Size([]), True)
"""

import torch
import torch.nn.functional as F


def teacher_temperature(epoch, warmup_temperature, temperature, warmup_epochs):
    """The teacher temperature at a (fractional) epoch.

    Linear from ``warmup_temperature`` at epoch 0 to ``temperature`` at
    ``warmup_epochs``, constant afterwards (as in DINO).

    Arguments
    ---------
    epoch : float
        Training progress in epochs (0 at the start; fractions allowed).
    warmup_temperature : float
        Temperature at the start.
    temperature : float
        Temperature after the warm-up.
    warmup_epochs : float
        Length of the warm-up; 0 disables it.

    Returns
    -------
    float

    Example
    -------
    >>> [round(teacher_temperature(e, 0.04, 0.07, 2), 3) for e in (0, 1, 2, 5)]
    [0.04, 0.055, 0.07, 0.07]
    """
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return float(temperature)
    fraction = max(0.0, float(epoch)) / warmup_epochs
    return float(
        warmup_temperature + fraction * (temperature - warmup_temperature)
    )


class DINOLoss(torch.nn.Module):
    """Cross-entropy between centred, sharpened teacher and student outputs.

    The loss averages, over every pair (teacher global crop ``i``, student
    crop ``j``) with ``i != j``, the batch mean of
    ``-sum_k softmax((t_i - c) / tau_t)_k * log_softmax(s_j / tau_s)_k``.
    The center ``c`` is a buffer (saved with the module) updated after each
    call by an exponential moving average of the teacher outputs, averaged
    over all processes under DDP.

    Arguments
    ---------
    output_size : int
        Dimension of the projection head output (number of prototypes).
    n_global_crops : int
        Number of global crops; the teacher sees only these, and they come
        first in the student's crop order.
    student_temperature : float
        Softmax temperature of the student.
    center_momentum : float
        Momentum of the center's moving average.

    Example
    -------
    >>> loss_fn = DINOLoss(output_size=4, n_global_crops=2)
    >>> teacher = torch.randn(2 * 3, 4)
    >>> student = torch.cat([teacher * 10, torch.randn(3, 4)])
    >>> loss_fn(student, teacher, 0.1).shape
    torch.Size([])
    >>> loss_fn.center.shape
    torch.Size([1, 4])
    """

    def __init__(
        self,
        output_size,
        n_global_crops=2,
        student_temperature=0.1,
        center_momentum=0.9,
    ):
        super().__init__()
        if n_global_crops < 1:
            raise ValueError("n_global_crops must be at least 1")
        self.n_global_crops = n_global_crops
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, output_size))

    def forward(self, student_output, teacher_output, teacher_temperature):
        """Compute the loss and update the center.

        Arguments
        ---------
        student_output : torch.Tensor
            ``[n_crops * B, K]``: the student's head outputs, crop-major
            (all items of crop 0, then of crop 1, ...), global crops first.
        teacher_output : torch.Tensor
            ``[n_global_crops * B, K]``: the teacher's outputs on the global
            crops, same order. Gradients are not taken through it.
        teacher_temperature : float
            The current teacher temperature (see :func:`teacher_temperature`).

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        teacher_output = teacher_output.detach().float()
        n_teacher = self.n_global_crops
        if teacher_output.shape[0] % n_teacher:
            raise ValueError(
                f"teacher output has {teacher_output.shape[0]} rows, not a "
                f"multiple of n_global_crops={n_teacher}"
            )
        batch = teacher_output.shape[0] // n_teacher
        if student_output.shape[0] % batch or (
            student_output.shape[0] // batch < n_teacher
        ):
            raise ValueError(
                f"student output has {student_output.shape[0]} rows, not "
                f"at least {n_teacher} crops of batch {batch}"
            )
        student_logp = F.log_softmax(
            student_output.float() / self.student_temperature, dim=-1
        ).chunk(student_output.shape[0] // batch)
        teacher_p = F.softmax(
            (teacher_output - self.center) / teacher_temperature, dim=-1
        ).chunk(n_teacher)

        total = student_output.new_zeros((), dtype=torch.float32)
        n_pairs = 0
        for i, target in enumerate(teacher_p):
            for j, logp in enumerate(student_logp):
                if i == j:
                    continue
                total = total + (-target * logp).sum(dim=-1).mean()
                n_pairs += 1
        if n_pairs == 0:
            raise ValueError(
                "one global crop and no local crops: no crop pair to compare"
            )
        self.update_center(teacher_output)
        return total / n_pairs

    @torch.no_grad()
    def update_center(self, teacher_output):
        """Move the center towards the mean teacher output (all processes).

        Arguments
        ---------
        teacher_output : torch.Tensor
            ``[N, K]`` teacher outputs of this step.

        Example
        -------
        >>> loss_fn = DINOLoss(output_size=2, center_momentum=0.5)
        >>> loss_fn.update_center(torch.tensor([[2.0, 0.0], [4.0, 2.0]]))
        >>> loss_fn.center
        tensor([[1.5000, 0.5000]])
        """
        batch_sum = teacher_output.float().sum(dim=0, keepdim=True)
        count = torch.tensor(
            [teacher_output.shape[0]],
            dtype=torch.float32,
            device=batch_sum.device,
        )
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(
            batch_center * (1 - self.center_momentum)
        )
