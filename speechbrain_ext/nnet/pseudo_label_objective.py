"""The training objective of a pseudo-label round: gate, LC and L2-SP.

Per batch, :class:`PseudoLabelObjective` takes the AAM cosines and the
pseudo-labels and

1. computes the per-sample AAM cross-entropy and its exact ``log(CE)``
   (:func:`~speechbrain_ext.nnet.aam.log_cross_entropy`);
2. gathers losses, validity flags and diagnostics over DDP processes, so
   the gate, the loss normalisation and the record are those of the global
   batch, and records the valid samples' ``log(CE)`` for the next gate fit;
3. keeps the samples below the gate threshold
   (:class:`~speechbrain_ext.nnet.loss_gate.DynamicLossGate`);
4. from ``lc_start_epoch`` (while the gate is on) adds, for rejected samples
   whose clean view is confidently another class
   (:func:`~speechbrain_ext.nnet.label_correction.correct_labels`), the CE
   against that class, on the same logits, whose margin sits at the
   ORIGINAL label (the reference's ``CE(output, label_LC)``);
5. returns ``L / L.detach()``
   (:func:`~speechbrain_ext.nnet.l2sp.normalised_loss`), with ``L`` the
   kept (plus corrected) CE sum over the number kept (from label
   correction on: over the number of valid samples), and the batch's
   counters.

The L2-SP term's gradient, ``w * R / (R.detach() + eps)``, is added by
:meth:`PseudoLabelObjective.add_regulariser_gradient` after the gradient
all-reduce (see :meth:`~speechbrain_ext.nnet.l2sp.L2SP.add_gradient`).
"""

import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import ddp_all_reduce

from speechbrain_ext.nnet.aam import log_cross_entropy
from speechbrain_ext.nnet.l2sp import normalised_loss
from speechbrain_ext.nnet.label_correction import correct_labels

#: The counters of one batch, in the order of :meth:`PseudoLabelObjective.
#: __call__`'s ``counts``. Samples with a known true speaker are
#: ``known``; a pseudo-label is right when its speaker is the majority
#: speaker of its class; a correction agrees when it is the majority label
#: of the sample's speaker (diagnostics only, never used in the loss).
COUNTER_KEYS = (
    "samples",
    "kept",
    "rejected",
    "corrected",
    "bad_audio",
    "ce_sum",
    "gated_loss_sum",
    "known",
    "kept_known",
    "kept_right",
    "rejected_right",
    "corrected_known",
    "corrected_agree",
)


def world_size():
    """Number of DDP processes (1 without DDP).

    Returns
    -------
    int
    """
    if torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def gather_columns(tensor):
    """Concatenate every process's ``tensor`` along its last dimension.

    Written here because SpeechBrain's distributed helpers broadcast and
    reduce but do not gather tensors.

    Arguments
    ---------
    tensor : torch.Tensor
        ``[..., B]``, the same shape on every process.

    Returns
    -------
    torch.Tensor
        ``[..., world * B]``, process 0's columns first; ``tensor`` itself
        without DDP.

    Example
    -------
    >>> gather_columns(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    """
    world = world_size()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=-1)


class PseudoLabelObjective:
    """Loss gate, label correction and L2-SP around the AAM loss.

    Arguments
    ---------
    aam_loss : speechbrain_ext.nnet.aam.AAMCrossEntropy
        Gives the margin logits.
    loss_gate : speechbrain_ext.nnet.loss_gate.DynamicLossGate
        Its threshold decides which samples are kept; every batch's valid
        ``log(CE)`` values are recorded in it.
    lc_start_epoch : int
        First epoch (1-based) of label correction (the gate must be on).
    lc_temperature : float
        Softmax temperature of the correction (0.1 in the reference).
    lc_min_prob : float
        A correction is used only above this probability (0.5).
    l2sp : speechbrain_ext.nnet.l2sp.L2SP, optional
        The regulariser with its anchor; None: no regulariser.
    l2sp_weight : float
        ``w`` of the regulariser term (0.01).
    l2sp_eps : float
        Added to ``R.detach()`` (1e-5).

    Example
    -------
    >>> from speechbrain_ext.nnet.aam import AAMCrossEntropy
    >>> from speechbrain_ext.nnet.loss_gate import DynamicLossGate
    >>> objective = PseudoLabelObjective(
    ...     AAMCrossEntropy(0.2, 30.0), DynamicLossGate(start_epoch=5), 9
    ... )
    >>> cosine = torch.rand(4, 10) * 2 - 1
    >>> loss, counts = objective(cosine, torch.tensor([0, 1, 2, 3]), epoch=1)
    >>> loss.item(), counts["samples"], counts["kept"]
    (1.0, 4.0, 4.0)
    """

    def __init__(
        self,
        aam_loss,
        loss_gate,
        lc_start_epoch,
        lc_temperature=0.1,
        lc_min_prob=0.5,
        l2sp=None,
        l2sp_weight=0.01,
        l2sp_eps=1e-5,
    ):
        self.aam_loss = aam_loss
        self.loss_gate = loss_gate
        self.lc_start_epoch = lc_start_epoch
        self.lc_temperature = lc_temperature
        self.lc_min_prob = lc_min_prob
        self.l2sp = l2sp
        self.l2sp_weight = l2sp_weight
        self.l2sp_eps = l2sp_eps

    def lc_active(self, epoch):
        """Whether label correction runs in ``epoch``.

        Arguments
        ---------
        epoch : int
            1-based epoch.

        Returns
        -------
        bool
        """
        return epoch >= self.lc_start_epoch and self.loss_gate.active(epoch)

    def __call__(
        self,
        cosine,
        labels,
        epoch,
        ok=None,
        label_right=None,
        speaker_label=None,
        clean_embeddings=None,
        class_weights=None,
    ):
        """The normalised loss of a batch and its counters.

        Arguments
        ---------
        cosine : torch.Tensor
            ``[B, n_classes]`` cosines of the augmented views.
        labels : torch.Tensor
            ``[B]`` pseudo-labels.
        epoch : int
            1-based epoch.
        ok : torch.Tensor, optional
            ``[B]`` bool, False for samples whose audio was unusable (left
            out of everything but ``bad_audio``); default all True.
        label_right : torch.Tensor, optional
            ``[B]`` 1 / 0 whether the pseudo-label is right, -1 unknown
            (diagnostics); default all unknown.
        speaker_label : torch.Tensor, optional
            ``[B]`` the majority label of each sample's true speaker, -1
            unknown (diagnostics); default all unknown.
        clean_embeddings : callable, optional
            ``rows [n] -> [n, 1, D]`` embeddings of the clean views of
            those rows, without gradients; needed for label correction.
        class_weights : torch.Tensor, optional
            ``[n_classes, D]`` un-normalised AAM weights; needed for label
            correction.

        Returns
        -------
        loss : torch.Tensor
            Scalar ``L / L_global.detach()`` (value ``world`` times this
            process's share), ``L`` as in the module docstring.
        counts : dict
            :data:`COUNTER_KEYS` -> float, over the global batch.
        """
        device = cosine.device
        n = labels.shape[0]
        if ok is None:
            ok = torch.ones(n, dtype=torch.bool, device=device)
        if label_right is None:
            label_right = torch.full((n,), -1.0, device=device)
        logits = self.aam_loss.logits(cosine, labels)
        ce = F.cross_entropy(logits, labels, reduction="none")
        # Exact log(CE) in float64, finite also where the float32 CE is 0.
        log_ce = log_cross_entropy(logits, labels)
        gathered = gather_columns(
            torch.stack(
                [ce.detach().double(), log_ce, ok.double(), label_right]
            )
        )
        ce_all, log_ce_all = gathered[0].float(), gathered[1]
        ok_all, right_all = gathered[2].bool(), gathered[3]
        keep = self.loss_gate.keep_mask(log_ce, epoch) & ok
        keep_all = self.loss_gate.keep_mask(log_ce_all, epoch) & ok_all
        self.loss_gate.record(log_ce_all[ok_all])
        n_valid = ok_all.sum()
        kept_sum = (ce * keep).sum()
        kept_sum_all = (ce_all * keep_all).sum()
        corrected = torch.zeros(4, device=device)
        if self.lc_active(epoch):
            corrected_sum, lc_counts = self._corrected_loss(
                logits,
                ok & ~keep,
                speaker_label,
                clean_embeddings,
                class_weights,
            )
            kept_sum = kept_sum + corrected_sum
            corrected = ddp_all_reduce(
                torch.cat([corrected_sum.detach().reshape(1), lc_counts]),
                torch.distributed.ReduceOp.SUM,
            )
            denominator = n_valid.clamp_min(1)
        else:
            denominator = keep_all.sum().clamp_min(1)
        loss = world_size() * kept_sum / denominator
        global_loss = (kept_sum_all + corrected[0]) / denominator
        known_all = ok_all & (right_all >= 0)
        rejected_all = ok_all & ~keep_all
        # One device-to-host copy for all counters.
        counts = torch.stack(
            [
                n_valid.float(),
                keep_all.sum().float(),
                rejected_all.sum().float(),
                corrected[1],
                (~ok_all).sum().float(),
                (ce_all * ok_all).sum(),
                global_loss.detach(),
                known_all.sum().float(),
                (known_all & keep_all).sum().float(),
                (known_all & keep_all & (right_all == 1)).sum().float(),
                (known_all & rejected_all & (right_all == 1)).sum().float(),
                corrected[2],
                corrected[3],
            ]
        ).tolist()
        return (
            normalised_loss(loss, scale=global_loss),
            dict(zip(COUNTER_KEYS, counts)),
        )

    def _corrected_loss(
        self, logits, rejected, speaker_label, clean_embeddings, class_weights
    ):
        """CE against the corrected labels of rejected, confident samples.

        Returns
        -------
        loss_sum : torch.Tensor
            Sum of the corrected samples' CE.
        counts : torch.Tensor
            ``[3]``: corrected samples, those whose true speaker is known,
            and those whose new label is their speaker's majority label.
        """
        zero = torch.zeros((), device=logits.device)
        counts = torch.zeros(3, device=logits.device)
        if not bool(rejected.any()):
            return zero, counts
        index = rejected.nonzero().squeeze(1)
        new_labels, confident, _ = correct_labels(
            clean_embeddings(index),
            class_weights,
            self.lc_temperature,
            self.lc_min_prob,
        )
        if not bool(confident.any()):
            return zero, counts
        rows = index[confident]
        new_labels = new_labels[confident]
        ce = F.cross_entropy(logits[rows], new_labels, reduction="none")
        if speaker_label is None:
            majority = torch.full_like(rows, -1)
        else:
            majority = speaker_label[rows]
        known = majority >= 0
        counts = torch.stack(
            [
                torch.tensor(float(len(rows)), device=logits.device),
                known.sum().float(),
                (known & (new_labels == majority)).sum().float(),
            ]
        )
        return ce.sum(), counts

    def add_regulariser_gradient(self, module, grad_scale=1.0):
        """Add the L2-SP term's gradient to ``module``'s ``.grad``.

        Arguments
        ---------
        module : torch.nn.Module
            The regularised module (unwrapped).
        grad_scale : float
            Multiplies the added gradient (a mixed-precision loss scale).

        Returns
        -------
        torch.Tensor or None
            ``R`` (detached); None without a regulariser.
        """
        if self.l2sp is None:
            return None
        return self.l2sp.add_gradient(
            module, self.l2sp_weight, self.l2sp_eps, grad_scale=grad_scale
        )
