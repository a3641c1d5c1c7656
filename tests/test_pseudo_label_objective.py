"""The pseudo-label objective on random tensors, against its formulas.

Every expected value is computed here from the reference's definitions in
float64 (AAM logits with the monotonic fix, per-sample CE, the gate's keep
rule, label correction with the margin at the ORIGINAL label, the
normalisation and L2-SP), never from the implementation's output.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from float32_bounds import U, gamma

from speechbrain_ext.nnet.aam import AAMCrossEntropy
from speechbrain_ext.nnet.l2sp import L2SP
from speechbrain_ext.nnet.loss_gate import DynamicLossGate
from speechbrain_ext.nnet.pseudo_label_objective import (
    COUNTER_KEYS,
    PseudoLabelObjective,
)

MARGIN, SCALE = 0.2, 30.0
N, C, D = 24, 10, 6
GATE_START, LC_START = 5, 9
TEMPERATURE, MIN_PROB = 0.1, 0.5
# Per-sample CE, float32 vs float64: a margin logit goes through ~6
# roundings (sqrt, 2 products, difference, scale) of values <= SCALE, every
# logit through one (scale); the log-sum-exp over C logits adds C + 2
# roundings relative to the largest logit (<= SCALE). Twice that for the
# difference z_y - logsumexp.
CE_ERROR = 2 * SCALE * gamma(C + 8)


def aam_logits(cosine, labels):
    """The reference's AAM logits in float64."""
    cosine = cosine.double()
    sine = torch.sqrt((1.0 - cosine**2).clamp(0, 1))
    phi = cosine * math.cos(MARGIN) - sine * math.sin(MARGIN)
    fixed = cosine - math.sin(math.pi - MARGIN) * MARGIN
    phi = torch.where(cosine > math.cos(math.pi - MARGIN), phi, fixed)
    one_hot = F.one_hot(labels, cosine.shape[1]).bool()
    return SCALE * torch.where(one_hot, phi, cosine)


def ce64(logits, labels):
    """Per-row cross-entropy, float64."""
    return torch.logsumexp(logits, 1) - logits.gather(1, labels[:, None])[:, 0]


def random_batch(seed):
    """Cosines, labels, validity and diagnostics of a random batch."""
    generator = torch.Generator().manual_seed(seed)
    cosine = torch.rand(N, C, generator=generator) * 1.6 - 0.8
    labels = torch.randint(0, C, (N,), generator=generator)
    # Half the rows fit their label well: a spread of losses to gate.
    cosine[: N // 2, :][torch.arange(N // 2), labels[: N // 2]] = 0.9
    ok = torch.ones(N, dtype=torch.bool)
    ok[[3, 17]] = False
    right = torch.randint(-1, 2, (N,), generator=generator).double()
    speaker = torch.randint(-1, C, (N,), generator=generator)
    return cosine, labels, ok, right, speaker


def gap_threshold(values):
    """A threshold in the widest gap between sorted values (no ties)."""
    ordered = values.sort().values
    gaps = ordered[1:] - ordered[:-1]
    i = int(gaps[2:-2].argmax()) + 2
    assert gaps[i] > 1e-2  # far wider than the float32 log-CE error
    return float(ordered[i] + ordered[i + 1]) / 2


def objective_with_gate(threshold):
    gate = DynamicLossGate(start_epoch=GATE_START)
    gate.threshold = threshold
    return PseudoLabelObjective(
        AAMCrossEntropy(MARGIN, SCALE),
        gate,
        LC_START,
        TEMPERATURE,
        MIN_PROB,
    )


def diagnostic_counts(keep, ok, right):
    """The four label diagnostics of the global batch."""
    known = ok & (right >= 0)
    return {
        "known": known.sum().item(),
        "kept_known": (known & keep).sum().item(),
        "kept_right": (known & keep & (right == 1)).sum().item(),
        "rejected_right": (known & ok & ~keep & (right == 1)).sum().item(),
    }


@pytest.mark.parametrize("epoch", [1, GATE_START - 1])
def test_before_the_gate_every_valid_sample_counts(epoch):
    cosine, labels, ok, right, speaker = random_batch(0)
    objective = objective_with_gate(threshold=-5.0)  # not used yet
    cosine.requires_grad_(True)
    loss, counts = objective(cosine, labels, epoch, ok, right, speaker)
    reference_cosine = cosine.detach().double().requires_grad_(True)
    ce = ce64(aam_logits(reference_cosine, labels), labels)
    want = ce[ok].sum() / ok.sum()
    assert list(counts) == list(COUNTER_KEYS)
    assert counts["samples"] == counts["kept"] == ok.sum().item() == N - 2
    assert counts["rejected"] == counts["corrected"] == 0
    assert counts["bad_audio"] == 2
    # A sum of N CEs: each within CE_ERROR, plus gamma(N) of the sum.
    sum_bound = N * CE_ERROR + gamma(N) * ce.abs().sum().item()
    assert counts["ce_sum"] == pytest.approx(ce[ok].sum().item(), abs=sum_bound)
    assert counts["gated_loss_sum"] == pytest.approx(
        want.item(), abs=sum_bound / (N - 2) + gamma(1) * want.item()
    )
    keep = ok.clone()
    for key, value in diagnostic_counts(keep, ok, right).items():
        assert counts[key] == value, key
    # The loss is normalised by its own value.
    assert loss.item() == pytest.approx(1.0, abs=2 * U)
    # The gate records log(CE) of the valid samples, exactly.
    recorded = objective.loss_gate.recorded
    assert torch.allclose(recorded, ce[ok].detach().log(), rtol=0, atol=1e-4)
    loss.backward()
    want.backward()
    got = cosine.grad.double() * counts["gated_loss_sum"]
    # d(CE_i)/d(cos_ij) = s * (p_ij - y_ij) * dlogit/dcos (<= 1.3 with the
    # margin), over N - 2 rows; a float32 probability is off by twice the
    # largest logit error (CE_ERROR / 2) plus gamma(C + 2).
    bound = SCALE * 1.3 * (CE_ERROR + gamma(C + 2)) / (N - 2)
    bound += gamma(N) * reference_cosine.grad.abs().max().item()
    torch.testing.assert_close(got, reference_cosine.grad, rtol=0, atol=bound)


def test_the_gate_keeps_samples_below_the_threshold():
    cosine, labels, ok, right, speaker = random_batch(1)
    ce = ce64(aam_logits(cosine, labels), labels)
    threshold = gap_threshold(ce[ok].log())
    keep = (ce.log() <= threshold) & ok
    assert 0 < keep.sum() < ok.sum()
    objective = objective_with_gate(threshold)
    loss, counts = objective(cosine, labels, GATE_START, ok, right, speaker)
    want = ce[keep].sum() / keep.sum()
    assert counts["kept"] == keep.sum().item()
    assert counts["rejected"] == (ok & ~keep).sum().item()
    assert counts["corrected"] == 0  # before lc_start_epoch
    sum_bound = N * CE_ERROR + gamma(N) * ce.sum().item()
    assert counts["gated_loss_sum"] == pytest.approx(
        want.item(), abs=sum_bound / keep.sum().item() + U * want.item()
    )
    assert counts["ce_sum"] == pytest.approx(ce[ok].sum().item(), abs=sum_bound)
    for key, value in diagnostic_counts(keep, ok, right).items():
        assert counts[key] == value, key
    # Every valid sample is recorded, also the rejected ones.
    assert len(objective.loss_gate.recorded) == ok.sum()


def test_a_gate_that_keeps_nothing_gives_a_finite_zero_loss():
    cosine, labels, ok, right, speaker = random_batch(2)
    objective = objective_with_gate(threshold=-1e9)
    cosine.requires_grad_(True)
    loss, counts = objective(cosine, labels, GATE_START, ok, right, speaker)
    assert counts["kept"] == 0 and counts["gated_loss_sum"] == 0.0
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(cosine.grad, torch.zeros_like(cosine))


def test_label_correction_adds_ce_at_the_clean_views_class():
    cosine, labels, ok, right, speaker = random_batch(3)
    generator = torch.Generator().manual_seed(30)
    weights = torch.randn(C, D, generator=generator)
    clean = torch.randn(N, D, generator=generator) * 0.02
    # Some clean views point clearly at one class.
    clean[::3] = 2 * weights[torch.randint(0, C, (N,))[::3]]
    ce_original = ce64(aam_logits(cosine, labels), labels)
    threshold = gap_threshold(ce_original[ok].log())
    keep = (ce_original.log() <= threshold) & ok
    rejected = ok & ~keep
    probabilities = torch.softmax(
        clean.double() @ weights.double().t() / TEMPERATURE, dim=1
    )
    top, new_labels = probabilities.max(1)
    # Clear-cut decisions, far from the 0.5 line in float32.
    assert bool(((top - MIN_PROB).abs() > 1e-3).all())
    corrected = rejected & (top > MIN_PROB)
    assert corrected.any() and (rejected & ~corrected).any()
    # The CE against the new label, on the logits whose margin is at the
    # ORIGINAL label.
    reference_cosine = cosine.double().requires_grad_(True)
    logits = aam_logits(reference_cosine, labels)
    ce = ce64(logits, labels)
    ce_new = ce64(logits, new_labels)
    want = (ce[keep].sum() + ce_new[corrected].sum()) / ok.sum()
    objective = objective_with_gate(threshold)
    cosine.requires_grad_(True)
    asked = []

    def embed(rows):
        asked.append(rows.tolist())
        return clean[rows].unsqueeze(1)

    loss, counts = objective(
        cosine,
        labels,
        LC_START,
        ok,
        right,
        speaker,
        clean_embeddings=embed,
        class_weights=weights,
    )
    # Only the rejected samples' clean views are embedded.
    assert asked == [rejected.nonzero().squeeze(1).tolist()]
    assert counts["corrected"] == corrected.sum().item()
    known = speaker[corrected] >= 0
    assert counts["corrected_known"] == known.sum().item()
    agree = known & (new_labels[corrected] == speaker[corrected])
    assert counts["corrected_agree"] == agree.sum().item()
    assert counts["kept"] == keep.sum().item()
    sum_bound = N * CE_ERROR + gamma(N) * (ce.sum() + ce_new.sum()).item()
    assert counts["gated_loss_sum"] == pytest.approx(
        want.item(), abs=sum_bound / ok.sum().item() + U * want.item()
    )
    loss.backward()
    want.backward()
    got = cosine.grad.double() * counts["gated_loss_sum"]
    bound = SCALE * 1.3 * (CE_ERROR + gamma(C + 2)) * 2 / ok.sum().item()
    bound += gamma(N) * reference_cosine.grad.abs().max().item()
    torch.testing.assert_close(got, reference_cosine.grad, rtol=0, atol=bound)


def test_no_correction_before_lc_start_or_without_a_gate():
    cosine, labels, ok, right, speaker = random_batch(4)
    weights = torch.randn(C, D)

    def embed(rows):
        raise AssertionError("no clean view is needed")

    objective = objective_with_gate(threshold=None)
    _, counts = objective(
        cosine, labels, LC_START, ok, right, speaker, embed, weights
    )
    assert counts["kept"] == ok.sum().item() and counts["corrected"] == 0


def test_regulariser_gradient_is_added_to_the_loss_gradient():
    torch.manual_seed(5)
    module = torch.nn.Linear(4, 3)
    l2sp = L2SP(module)
    objective = PseudoLabelObjective(
        AAMCrossEntropy(MARGIN, SCALE),
        DynamicLossGate(start_epoch=GATE_START),
        LC_START,
        l2sp=l2sp,
        l2sp_weight=0.01,
        l2sp_eps=1e-5,
    )
    anchor = {
        n: p.detach().double().clone() for n, p in module.named_parameters()
    }
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    earlier = {n: torch.randn_like(p) for n, p in module.named_parameters()}
    for name, p in module.named_parameters():
        p.grad = earlier[name].clone()
    reg = objective.add_regulariser_gradient(module, grad_scale=4.0)
    params = {n: p.detach().double() for n, p in module.named_parameters()}
    norms = {n: (params[n] - anchor[n]).norm() for n in params}
    r = sum(norms.values())
    # R: float32 norms of <= 12 values and a sum of 2: gamma(12 + 2).
    assert reg.item() == pytest.approx(r.item(), rel=gamma(14))
    for name, p in module.named_parameters():
        # d(w R / (R.detach() + eps)) / dW = w (W - W0) / ||W - W0|| / (R + eps)
        want = 0.01 * (params[name] - anchor[name]) / norms[name] / (r + 1e-5)
        want = earlier[name].double() + 4.0 * want
        # A handful of float32 roundings per entry (norm over <= 12 values,
        # 3 divisions/products, the scale, the addition): gamma(20) of the
        # magnitudes added.
        bound = gamma(20) * (earlier[name].abs().double() + want.abs())
        assert bool(((p.grad.double() - want).abs() <= bound).all()), name
    no_reg = objective_with_gate(threshold=None)
    assert no_reg.add_regulariser_gradient(module) is None


def _ddp_worker(rank, world, port, results):
    """One process of a 2-process gloo group: half of each batch."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    try:
        cosine, labels, ok, right, speaker = random_batch(3)
        generator = torch.Generator().manual_seed(30)
        weights = torch.randn(C, D, generator=generator)
        clean = torch.randn(N, D, generator=generator)
        ce = ce64(aam_logits(cosine, labels), labels)
        threshold = gap_threshold(ce[ok].log())
        rows = slice(rank * N // world, (rank + 1) * N // world)
        part = cosine[rows].clone().requires_grad_(True)
        objective = objective_with_gate(threshold)
        loss, counts = objective(
            part,
            labels[rows],
            LC_START,
            ok[rows],
            right[rows],
            speaker[rows],
            lambda index: clean[rows][index].unsqueeze(1),
            weights,
        )
        loss.backward()
        results[rank] = (
            loss.item(),
            counts,
            part.grad.clone(),
            objective.loss_gate.recorded.clone(),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_single_process_loss_counts_and_gradient():
    """Each process holds half of the batch: the gathered gate, loss
    normalisation, record and counters are the whole batch's, and the
    gradients DDP averages are the single process's."""
    import socket

    import torch.multiprocessing as mp

    cosine, labels, ok, right, speaker = random_batch(3)
    generator = torch.Generator().manual_seed(30)
    weights = torch.randn(C, D, generator=generator)
    clean = torch.randn(N, D, generator=generator)
    ce = ce64(aam_logits(cosine, labels), labels)
    objective = objective_with_gate(gap_threshold(ce[ok].log()))
    whole = cosine.clone().requires_grad_(True)
    loss, counts = objective(
        whole,
        labels,
        LC_START,
        ok,
        right,
        speaker,
        lambda index: clean[index].unsqueeze(1),
        weights,
    )
    loss.backward()
    assert counts["corrected"] > 0 and counts["rejected"] > 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2)
    for rank in range(2):
        share, rank_counts, grad, recorded = results[rank]
        assert rank_counts["samples"] == counts["samples"]
        assert rank_counts["kept"] == counts["kept"]
        assert rank_counts["corrected"] == counts["corrected"]
        assert rank_counts["ce_sum"] == counts["ce_sum"]
        assert torch.equal(recorded, objective.loss_gate.recorded)
        # Sums of the same float32 terms grouped per process: gamma(N).
        assert rank_counts["gated_loss_sum"] == pytest.approx(
            counts["gated_loss_sum"], rel=gamma(N)
        )
        # DDP averages the processes' gradients: each row's gradient,
        # divided by the world size, is the single process's.
        rows = slice(rank * N // 2, (rank + 1) * N // 2)
        torch.testing.assert_close(
            grad / 2, whole.grad[rows], rtol=gamma(N), atol=0
        )
    shares = [results[rank][0] for rank in range(2)]
    assert sum(shares) / 2 == pytest.approx(loss.item(), rel=gamma(N))
