"""Unit tests of the training pieces: AAM, gate, LC, L2-SP, sampler, data."""

import math
import os

import numpy as np
import pytest
import soundfile
import torch
from float32_bounds import U, gamma

from data_prep.augmentation import prepare_augmentation
from speechbrain_ext.dataio.augment import SixWayAugment
from speechbrain_ext.dataio.sampler import SpeakerBalancedBatchSampler
from speechbrain_ext.lobes.classifier import CosineClassifier
from speechbrain_ext.nnet.aam import AAMCrossEntropy
from speechbrain_ext.nnet.l2sp import L2SP, normalised_loss
from speechbrain_ext.nnet.label_correction import correct_labels
from speechbrain_ext.nnet.loss_gate import (
    DegenerateFitError,
    DynamicLossGate,
    crossing_threshold,
    fit_threshold,
)


def reference_aam_ce(cosine, targets, m, s):
    """The reference formula, computed independently in float64 numpy."""
    cosine = np.asarray(cosine, dtype=np.float64)
    losses = []
    for row, t in zip(cosine, targets):
        logits = s * row.copy()
        c = row[t]
        if c <= math.cos(math.pi - m):
            target = c - m * math.sin(m)
        else:
            target = math.cos(math.acos(c) + m)
        logits[t] = s * target
        shifted = logits - logits.max()
        losses.append(-(shifted[t] - math.log(np.exp(shifted).sum())))
    return np.array(losses)


@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_aam_matches_reference_formula(margin):
    torch.manual_seed(0)
    cosine = torch.rand(64, 10) * 1.98 - 0.99
    # Targets on both sides of cos(pi - m), the monotonic fix's switch.
    cosine[:8, 0] = torch.linspace(-0.99, -0.9, 8)
    targets = torch.randint(0, 10, (64,))
    targets[:8] = 0
    got = AAMCrossEntropy(margin=margin, scale=30.0)(cosine, targets)
    want = reference_aam_ce(cosine.numpy(), targets.numpy(), margin, 30.0)
    assert got.shape == (64,)
    # float32 bound. The target logit s * cos(t + m) = s * (c cos m -
    # sqrt(1 - c^2) sin m) carries (kappa + 6) roundings, kappa = |c| /
    # sqrt(1 - c^2) amplifying those of c^2 through the square root; other
    # logits 2 (the cosine, the scale). The loss moves by at most
    # (1 - p_target) times the largest logit errors, 1 - p_target =
    # 1 - exp(-CE); log-softmax over C classes adds gamma(C + 2) + 2u CE.
    c = cosine[torch.arange(64), targets].double().numpy()
    kappa = np.abs(c) / np.sqrt(1 - c**2)
    logit_error = 30.0 * (kappa + 6 + 2) * U
    bound = -np.expm1(-want) * logit_error + 2 * U * want + gamma(10 + 2)
    assert np.all(np.abs(got.double().numpy() - want) <= bound)


def test_aam_margin_raises_loss_and_is_monotonic():
    cos = torch.linspace(-0.999, 0.999, 200)
    cosine = torch.stack([cos, torch.zeros_like(cos)], dim=1)
    targets = torch.zeros(200, dtype=torch.long)
    with_margin = AAMCrossEntropy(0.2, 30.0)(cosine, targets)
    without = AAMCrossEntropy(0.0, 30.0)(cosine, targets)
    assert bool((with_margin >= without).all())
    assert bool((with_margin > without)[cos < 0.3].all())
    # The target logit never increases when the cosine decreases.
    assert bool((with_margin[1:] <= with_margin[:-1] + 1e-6).all())


def test_classifier_is_cosine_with_xavier_normal_init():
    torch.manual_seed(0)
    head = CosineClassifier(256, 2000)
    std = head.weight.std().item()
    assert abs(std - math.sqrt(2.0 / (256 + 2000))) < 0.002
    emb = torch.randn(5, 1, 256)
    want = torch.nn.functional.cosine_similarity(
        emb.squeeze(1)[:, None, :], head.weight[None], dim=-1
    )
    torch.testing.assert_close(head(emb), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="init="):
        CosineClassifier(4, 3, init="nope")


def test_threshold_equal_components_is_midpoint():
    assert crossing_threshold([0.5, 0.5], [1.0, 5.0], [2.0, 2.0]) == 3.0
    assert crossing_threshold([0.5, 0.5], [5.0, 1.0], [2.0, 2.0]) == 3.0


def test_threshold_unequal_variances_matches_brute_force():
    w, m, v = [0.7, 0.3], [-1.0, 2.0], [0.5, 2.0]

    def diff(x):
        pdf = [
            wi * math.exp(-((x - mi) ** 2) / (2 * vi)) / math.sqrt(vi)
            for wi, mi, vi in zip(w, m, v)
        ]
        return pdf[0] - pdf[1]

    grid = np.linspace(m[0], m[1], 200001)
    values = np.array([diff(x) for x in grid])
    brute = grid[np.flatnonzero(np.diff(np.sign(values)))[0]]
    assert abs(crossing_threshold(w, m, v) - brute) < 1e-4


def test_threshold_degenerate_cases():
    with pytest.raises(DegenerateFitError, match="coincide"):
        crossing_threshold([0.5, 0.5], [1.0, 1.0], [1.0, 2.0])
    with pytest.raises(DegenerateFitError, match="no crossing"):
        crossing_threshold([0.99, 0.01], [0.0, 1.0], [1.0, 1.0])
    with pytest.raises(DegenerateFitError, match="only 3"):
        fit_threshold([1.0, 2.0, 3.0])
    with pytest.raises(DegenerateFitError, match="equal"):
        fit_threshold(np.ones(100))


def test_fit_threshold_on_a_known_mixture():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 0.5, 4000), rng.normal(2, 0.5, 4000)])
    threshold, mixture = fit_threshold(x)
    assert abs(threshold - 0.5) < 0.05
    assert sorted(round(m) for m in mixture["means"]) == [-1, 2]


def test_gate_keeps_previous_threshold_on_degenerate_fit(tmp_path, caplog):
    gate = DynamicLossGate(start_epoch=2)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 0.5, 500), rng.normal(2, 0.5, 500)])
    gate.record(torch.tensor(x[:600]))
    gate.record(torch.tensor(x[600:]))
    info = gate.end_epoch(1, plot_path=str(tmp_path / "e1.png"))
    assert info["degenerate"] is None and os.path.getsize(tmp_path / "e1.png")
    first = gate.threshold
    assert not gate.keep_mask(torch.tensor([3.0]), epoch=1).logical_not().any()
    assert gate.keep_mask(
        torch.tensor([first - 0.1, first + 0.1]), 2
    ).tolist() == [
        True,
        False,
    ]
    gate.record(torch.full((50,), first - 1.0))
    info = gate.end_epoch(2)
    assert "equal" in info["degenerate"] and gate.threshold == first
    assert "keeping the previous threshold" in caplog.text
    # A previous threshold that keeps less than the floor of the epoch's
    # samples is dropped: the gate is off until the next good fit.
    gate.record(torch.full((50,), first + 1.0))
    info = gate.end_epoch(3)
    assert "equal" in info["degenerate"] and gate.threshold is None
    assert info["kept_fraction"] == 1.0
    assert "gate off until the next good fit" in caplog.text


@pytest.mark.parametrize("low_share, accepted", [(0.15, True), (0.05, False)])
def test_gate_floor_accepts_a_small_population_and_refuses_a_tail(
    low_share, accepted
):
    """The default floor (10 %) sits between tails (<= 9 % measured) and
    populations (>= 18.8 % measured): a well separated low component of
    15 % is a gate, one of 5 % a tail."""
    rng = np.random.default_rng(0)
    n_low = int(20000 * low_share)
    losses = np.concatenate(
        [rng.normal(-2.0, 0.5, n_low), rng.normal(2.0, 0.5, 20000 - n_low)]
    )
    gate = DynamicLossGate(start_epoch=1)
    gate.record(torch.from_numpy(losses))
    info = gate.end_epoch(1)
    assert np.mean(losses <= info["candidate"]) == pytest.approx(
        low_share, abs=0.01
    )
    assert (info["degenerate"] is None) == accepted


def test_gate_checkpoint_round_trip(tmp_path):
    gate = DynamicLossGate()
    gate.threshold = 0.25
    gate.record(torch.arange(5.0))
    gate.save(tmp_path / "gate.ckpt")
    other = DynamicLossGate()
    other.load(tmp_path / "gate.ckpt")
    assert other.threshold == 0.25
    assert other.recorded.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_label_correction_uses_unnormalised_weights_and_threshold():
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    clean = torch.tensor([[0.3, 0.0], [0.0, 0.02], [0.02, 0.0]])
    labels, confident, prob = correct_labels(clean, weights)
    assert labels.tolist() == [0, 1, 0]
    logits = clean.double() @ weights.double().t() / 0.1
    want = torch.softmax(logits, -1).max(-1).values
    # float32: a logit is a dot product of D = 2 (gamma(2)) divided by 0.1
    # (one rounding); a softmax probability moves by at most twice the
    # largest logit error, plus gamma(C + 2) of its own (C = 3 classes).
    logit_error = (gamma(2) + U) * (clean.abs() @ weights.abs().t()) / 0.1
    bound = 2 * logit_error.max().item() + gamma(3 + 2)
    assert bool(((prob.double() - want).abs() <= bound).all())
    assert confident.tolist() == (want > 0.5).tolist() == [True, False, False]
    # Scaling W changes the probabilities: the weights are not normalised.
    _, confident_big, _ = correct_labels(clean, 10 * weights)
    assert confident_big.tolist() == [True, True, True]


def test_l2sp_value_and_normalised_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    reg = L2SP(model)
    assert reg.names == ["0.weight", "1.weight", "1.bias"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    want = sum(0.5 * math.sqrt(p.numel()) for p in model.parameters())
    want -= 0.5 * 2.0  # the frozen bias (4 values) is left out
    r = reg(model)
    assert abs(r.item() - want) < 1e-5
    x = torch.randn(6, 3)
    # The formula's gradient, computed directly ...
    loss = model(x).pow(2).mean()
    total = loss / loss.detach() + 0.01 * r / (r.detach() + 1e-5)
    want_grads = torch.autograd.grad(total, [model[0].weight, model[1].weight])
    # ... equals normalised_loss's gradient plus add_gradient's.
    model.zero_grad()
    loss = model(x).pow(2).mean()
    objective = normalised_loss(loss)
    assert objective.item() == pytest.approx(1.0)
    objective.backward()
    assert reg.add_gradient(model, 0.01, 1e-5).item() == pytest.approx(want)
    # The same float operations in the same order (the two gradient terms
    # are added once, and float addition commutes): equal bit for bit.
    assert torch.equal(model[0].weight.grad, want_grads[0])
    assert torch.equal(model[1].weight.grad, want_grads[1])
    assert model[0].bias.grad is None


def test_normalised_loss_with_zero_loss_is_finite():
    loss = torch.zeros((), requires_grad=True)
    assert torch.isfinite(normalised_loss(loss))
    scaled = normalised_loss(torch.tensor(3.0), scale=torch.tensor(2.0))
    assert scaled.item() == 1.5


def make_labels():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 40, size=30)
    sizes[0] = 120
    return np.repeat(np.arange(30), sizes)


def test_sampler_constraints():
    labels = make_labels()
    sampler = SpeakerBalancedBatchSampler(
        labels, 12, max_per_speaker=20, defer_repeats=True
    )
    sampler.set_epoch(3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    seen = np.concatenate(batches)
    assert len(set(seen.tolist())) == len(seen)
    for batch in batches:
        assert len(batch) == 12
        assert len(set(labels[batch].tolist())) == 12
    counts = np.bincount(labels[seen], minlength=30)
    assert counts.max() <= 20
    # Deferring: nearly everything selected is used (only the last batch is
    # dropped).
    available = np.minimum(np.bincount(labels), 20).sum()
    assert len(seen) >= available - 12 - 20


def test_sampler_is_deterministic_per_seed_and_epoch():
    labels = make_labels()

    def order(seed, epoch):
        sampler = SpeakerBalancedBatchSampler(labels, 12, 20, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)


def test_sampler_ranks_split_every_global_batch():
    labels = make_labels()
    single = SpeakerBalancedBatchSampler(labels, 12, 20, seed=5)
    ranks = [
        SpeakerBalancedBatchSampler(labels, 12, 20, 5, num_replicas=3, rank=r)
        for r in range(3)
    ]
    for s in [single] + ranks:
        s.set_epoch(2)
    for global_batch, *parts in zip(single, *ranks):
        assert [len(p) for p in parts] == [4, 4, 4]
        assert sum(parts, []) == global_batch
    with pytest.raises(ValueError, match="divisible"):
        SpeakerBalancedBatchSampler(labels, 10, num_replicas=3, rank=0)


def test_sampler_state_round_trip(tmp_path):
    sampler = SpeakerBalancedBatchSampler([0, 1], 2, seed=7)
    sampler.set_epoch(4)
    sampler.save(tmp_path / "s.ckpt")
    other = SpeakerBalancedBatchSampler([0, 1], 2, seed=0)
    other.load(tmp_path / "s.ckpt")
    assert (other.seed, other.epoch) == (7, 4)


class Recorder:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __call__(self, wav, lengths=None):
        self.calls.append(self.name)
        return wav + 1.0


@pytest.mark.parametrize("bug, expected", [(False, 2), (True, 1)])
def test_babble_music_applies_both_unless_reproducing_the_bug(bug, expected):
    calls = []
    augment = SixWayAugment(music_only_for_babble_music=bug)
    augment.ops = {n: Recorder(n, calls) for n in ("babble", "music")}
    out = augment.apply_choice(torch.zeros(10), "babble_music")
    assert out[0].item() == expected
    assert calls == (["music"] if bug else ["babble", "music"])
    assert augment.apply_choice(torch.zeros(3), "none").tolist() == [0.0] * 3


def test_augmentation_choices_are_equally_likely_and_change_audio(tmp_path):
    folder = tmp_path / "musan"
    rng = np.random.default_rng(0)
    for kind in ("music", "speech", "noise"):
        os.makedirs(folder / kind / "g")
        for i in range(3):
            soundfile.write(
                folder / kind / "g" / f"{i}.wav",
                rng.standard_normal(4000).astype("float32") * 0.1,
                16000,
            )
    csv_files = prepare_augmentation(str(tmp_path / "csv"), str(folder))
    augment = SixWayAugment(**{f"{k}_csv": v for k, v in csv_files.items()})
    assert sorted(augment.load()) == ["babble", "music", "noise"]
    torch.manual_seed(0)
    wav = torch.sin(torch.arange(8000) * 0.05)
    choices = []
    for _ in range(600):
        out, choice = augment(wav)
        choices.append(choice)
        changed = not torch.allclose(out, wav)
        assert changed == (choice not in ("none", "reverb"))
    counts = np.unique(choices, return_counts=True)[1]
    assert len(counts) == 6 and counts.min() > 60


def test_no_augmentation_data_is_said_loudly(caplog, tmp_path):
    augment = SixWayAugment(music_csv=str(tmp_path / "music.csv"))
    assert not augment.enabled
    augment.log_coverage()
    assert "NO DATA AUGMENTATION" in caplog.text
