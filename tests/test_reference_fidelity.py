"""The reference's formulas, computed independently here (issue 12).

Each test builds the reference's value from its definition (float64 numpy,
mpmath, or the reference's own procedure re-written here) and compares the
project's code path with it: exact log-CE where float32 CE is 0, the gate's
mixture fit and its floor, the label-correction loss, layer drop without the
relative position bias, babble at per-file SNRs, evaluation crops of short
files and the sampler's treatment of repeated pseudo-speakers.
"""

import math
import os
import types

import mpmath
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from scipy.stats import norm
from sklearn.mixture import GaussianMixture
from tiny_models import tiny_wavlm_mhfa

import speechbrain_ext.lobes.wavlm.model as wavlm_module
import train
from data_prep.augmentation import write_audio_csv
from speechbrain_ext.dataio.audio import evenly_spaced_crops
from speechbrain_ext.dataio.augment import SixWayAugment, mix_at_snrs
from speechbrain_ext.dataio.sampler import SpeakerBalancedBatchSampler
from speechbrain_ext.lobes.classifier import CosineClassifier
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
from speechbrain_ext.nnet.aam import AAMCrossEntropy, log_cross_entropy
from speechbrain_ext.nnet.loss_gate import DynamicLossGate, fit_threshold

MARGIN, SCALE = 0.2, 30.0


def reference_logits(cosine, labels, m=MARGIN, s=SCALE):
    """The reference's AAM logits (its loss/aamsoftmax.py), float64.

    Arguments: cosine ``[B, C]`` and labels ``[B]`` (tensors or arrays).
    Returns a float64 tensor (differentiable when ``cosine`` is).
    """
    cosine = torch.as_tensor(cosine).double()
    labels = torch.as_tensor(labels)
    sine = torch.sqrt((1.0 - cosine * cosine).clamp(0, 1))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    mm = math.sin(math.pi - m) * m
    phi = torch.where(cosine - math.cos(math.pi - m) > 0, phi, cosine - mm)
    one_hot = F.one_hot(labels, cosine.shape[1]).double()
    return s * (one_hot * phi + (1.0 - one_hot) * cosine)


def reference_ce(logits, labels):
    """Cross-entropy per row (float64)."""
    return F.cross_entropy(
        torch.as_tensor(logits).double(),
        torch.as_tensor(labels),
        reduction="none",
    )


def exact_log_ce(logits, label):
    """``log(CE)`` of one row with 50 significant digits (mpmath)."""
    mpmath.mp.dps = 50
    z = [mpmath.mpf(float(v)) for v in logits]
    total = mpmath.fsum(
        mpmath.exp(v - z[label]) for j, v in enumerate(z) if j != label
    )
    return float(mpmath.log(mpmath.log1p(total)))


def confident_cosines(n_rows, n_classes, labels, target=0.8):
    """Target cosine high, every other class -0.1: float32 CE is 0."""
    cosine = torch.full((n_rows, n_classes), -0.1)
    cosine[torch.arange(n_rows), labels] = target
    return cosine


# --- 1. exact log(CE) --------------------------------------------------------


def test_log_ce_is_exact_where_float32_ce_is_zero_at_full_scale():
    """7,500 classes, target cosine 0.9 (margin 0.2) x 30 vs -0.1 x 30."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 4321, 7499])
    cosine = torch.cat(
        [
            confident_cosines(3, 7500, labels, target=0.9),
            torch.rand(2, 7500) * 2 - 1,
        ]
    )
    labels = torch.cat([labels, torch.tensor([17, 300])])
    logits = AAMCrossEntropy(MARGIN, SCALE).logits(cosine, labels)
    ce = F.cross_entropy(logits, labels, reduction="none")
    assert ce[:3].tolist() == [0.0, 0.0, 0.0]
    got = log_cross_entropy(logits, labels)
    want = [exact_log_ce(row, int(y)) for row, y in zip(logits, labels)]
    assert torch.isfinite(got).all()
    # float64 log-sum-exp of 7,500 terms: relative error a few 1e-15.
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def make_brain(n_classes=8):
    """A PseudoLabelBrain on a tiny model, driven by hand."""
    torch.manual_seed(0)
    hparams = {
        "aam_loss": AAMCrossEntropy(MARGIN, SCALE),
        "loss_gate": DynamicLossGate(start_epoch=1),
        "lc_start_epoch": 9,
        "lc_temperature": 0.1,
        "lc_min_prob": 0.5,
        "l2sp_weight": 0.01,
        "l2sp_eps": 1e-5,
        "seed": 0,
        "epoch_stats_file": None,
        "run_name": "test",
    }
    modules = {
        "embedding_model": tiny_wavlm_mhfa(4, 8, 16),
        "classifier": CosineClassifier(16, n_classes),
    }
    return train.PseudoLabelBrain(
        modules=modules, hparams=hparams, run_opts={"device": "cpu"}
    )


def fake_batch(labels, clean=None):
    """The batch fields compute_objectives reads."""
    n = len(labels)

    def field(data):
        return types.SimpleNamespace(data=data)

    return types.SimpleNamespace(
        label=field(torch.as_tensor(labels)),
        ok=field(torch.ones(n, dtype=torch.bool)),
        label_right=field(torch.full((n,), -1.0)),
        speaker_label=field(torch.full((n,), -1)),
        clean=field(torch.zeros(n, 16000) if clean is None else clean),
    )


def test_recorded_log_losses_are_exact_for_a_batch_with_zero_ce():
    brain = make_brain()
    brain.epoch = 1
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    cosine = confident_cosines(6, 8, labels)
    cosine[3:] = torch.rand(3, 8) * 2 - 1
    logits = reference_logits(cosine, labels)
    assert bool((reference_ce(logits, labels)[:3] < 1e-8).all())
    ce32 = AAMCrossEntropy(MARGIN, SCALE)(cosine, labels)
    assert ce32[:3].tolist() == [0.0, 0.0, 0.0]
    brain.compute_objectives(cosine, fake_batch(labels), None)
    recorded = brain.hparams.loss_gate.recorded.numpy()
    want = [exact_log_ce(row, y) for row, y in zip(logits, labels.tolist())]
    # The brain's logits are float32 (values <= 30, 2 ulp = 4e-6 each); the
    # log-CE of a confident row moves like its logit gaps, so 1e-4.
    np.testing.assert_allclose(recorded, want, atol=1e-4)
    assert np.all(recorded[:3] > -30.0)


def test_a_fit_that_would_keep_almost_nothing_keeps_the_previous_threshold(
    tmp_path, caplog
):
    rng = np.random.default_rng(0)
    gate = DynamicLossGate(start_epoch=1)
    sound = np.concatenate(
        [rng.normal(-1.0, 0.5, 42000), rng.normal(1.5, 0.5, 18000)]
    )
    gate.record(torch.from_numpy(sound))
    assert gate.end_epoch(1)["degenerate"] is None
    previous = gate.threshold
    # A narrow spike of confidently classified samples (5 %) below a
    # unimodal bulk: the mixture takes the spike as its low component.
    spiked = np.concatenate(
        [rng.normal(-25.0, 0.3, 3000), rng.normal(0.0, 1.0, 57000)]
    )
    gate.record(torch.from_numpy(spiked))
    info = gate.end_epoch(2, plot_path=str(tmp_path / "gate.png"))
    assert info["candidate"] is not None
    assert np.mean(spiked <= info["candidate"]) < 0.1
    assert "keep only" in info["degenerate"]
    assert gate.threshold == previous
    assert "degenerate fit" in caplog.text and "WARNING" in caplog.text
    assert os.path.getsize(tmp_path / "gate.png") > 0


# --- 2. the mixture fit ------------------------------------------------------


def reference_gate_threshold(log_losses):
    """``LGL_threshold_update_gmm`` of the reference, re-written here."""
    x = np.asarray(log_losses, dtype=np.float64)
    gmm = GaussianMixture(
        n_components=2,
        random_state=0,
        covariance_type="full",
        tol=0.00001,
        max_iter=1000,
    ).fit(x.reshape(-1, 1))
    grid = np.linspace(x.min(), x.max(), 1000)
    pdfs = [
        gmm.weights_[i]
        * norm.pdf(grid, gmm.means_[i, 0], np.sqrt(gmm.covariances_[i, 0, 0]))
        for i in range(2)
    ]
    crossings = grid[np.argwhere(np.diff(np.sign(pdfs[0] - pdfs[1]))).ravel()]
    peaks = sorted(grid[np.argmax(p)] for p in pdfs)
    good = crossings[(crossings > peaks[0]) & (crossings < peaks[1])]
    assert len(good) == 1
    return good[0], grid[1] - grid[0]


def test_mixture_fit_uses_the_reference_settings():
    """An overlapping 70/30 mixture, where tol / max_iter matter."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(0.0, 0.7, 42000), rng.normal(1.0, 0.8, 18000)]
    )
    want, step = reference_gate_threshold(x)
    threshold, _ = fit_threshold(x)
    # The reference finds the crossing on a 1,000-point grid.
    assert abs(threshold - want) <= step
    gate = DynamicLossGate(start_epoch=5)
    gate.record(torch.from_numpy(x))
    gate.end_epoch(3)
    assert gate.threshold is None  # fitted only for an epoch that uses it
    gate.record(torch.from_numpy(x))
    gate.end_epoch(4)
    assert abs(gate.threshold - want) <= step


@pytest.mark.parametrize("name", ["round1", "round2", "lmft"])
def test_hparams_fit_the_mixture_with_the_reference_seed(name):
    import ruamel.yaml

    path = os.path.join(os.path.dirname(train.__file__), "hparams", name)
    with open(path + ".yaml", encoding="utf-8") as f:
        text = f.read()
    gate = ruamel.yaml.YAML(typ="rt").load(
        text[text.index("loss_gate:") :].split("\n\n")[0]
    )["loss_gate"]
    assert gate["random_state"] == 0


# --- 3. label correction -----------------------------------------------------


def reference_lc_loss(cosine, labels, keep, label_lc, confident):
    """The reference from epoch 9: mean(ce * mask + ce_LC * mask_LGL_LC),
    both CEs on the logits with the margin at the ORIGINAL label."""
    logits = reference_logits(cosine, labels)
    ce = reference_ce(logits, labels)
    ce_lc = reference_ce(logits, label_lc)
    return (ce * keep + ce_lc * (~keep & confident)).mean()


def test_label_correction_loss_has_the_margin_at_the_original_label():
    brain = make_brain()
    brain.epoch = 9
    torch.manual_seed(3)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    cosine = torch.rand(8, 8) * 0.6 - 0.3
    # The first four fit their label, the last four do not.
    cosine[torch.arange(8), labels] = torch.tensor([0.7] * 4 + [-0.5] * 4)
    weight = brain.modules.classifier.weight.detach()
    # Clean views: rows 4-6 point at class 2, 0, 5 (confident corrections);
    # row 7 at nothing in particular (no correction).
    clean = torch.stack(
        [weight[0], weight[1], weight[2], weight[3]]
        + [50 * weight[2], 50 * weight[0], 50 * weight[5]]
        + [torch.zeros(16)]
    )
    brain.clean_embeddings = lambda batch, index: clean[index].unsqueeze(1)
    log_ce = reference_ce(reference_logits(cosine, labels), labels).log()
    # A threshold that keeps exactly rows 0-3.
    threshold = float(log_ce[:4].max() + log_ce[4:].min()) / 2
    assert log_ce[:4].max() < threshold < log_ce[4:].min()
    brain.hparams.loss_gate.threshold = threshold
    cosine.requires_grad_(True)
    objective = brain.compute_objectives(cosine, fake_batch(labels), None)
    label_lc = torch.tensor([0, 1, 2, 3, 2, 0, 5, 0])
    keep = torch.arange(8) < 4
    confident = torch.tensor([True] * 7 + [False])
    reference_cosine = cosine.detach().double().requires_grad_(True)
    want = reference_lc_loss(
        reference_cosine, labels, keep, label_lc, confident
    )
    got = brain.stats.counts["gated_loss_sum"]
    assert brain.stats.counts["corrected"] == 3
    # float32 sums of 8 CEs of size <= 30: relative 1e-5.
    assert got == pytest.approx(want.item(), rel=1e-5)
    # The objective is loss / (its value): its gradient times the value is
    # the loss's gradient, which matches the reference's (float64 autograd);
    # float32 softmax terms: relative 1e-4.
    objective.backward()
    want.backward()
    torch.testing.assert_close(
        cosine.grad.double() * got,
        reference_cosine.grad,
        rtol=1e-4,
        atol=1e-6,
    )


# --- 4. layer drop -----------------------------------------------------------


class FixedDraws:
    """Stands in for ``torch.rand``: scalar draws from a list."""

    def __init__(self, draws):
        self.values = iter(draws)
        self.real = torch.rand

    def __call__(self, *shape, **kwargs):
        if shape == ((),):
            return torch.tensor(next(self.values))
        return self.real(*shape, **kwargs)


def test_dropping_layer_0_runs_later_layers_without_position_bias(
    monkeypatch,
):
    torch.manual_seed(0)
    config = WavLMConfig.tiny(
        encoder_layers=3,
        encoder_layerdrop=0.5,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    encoder = WavLM(config).encoder.train()
    x = torch.randn(2, 20, 64)

    def run(draws):
        """The encoder with its layer-drop draws fixed."""
        with monkeypatch.context() as patch:
            patch.setattr(wavlm_module.torch, "rand", FixedDraws(draws))
            return encoder(x)

    layers = encoder.layers
    with torch.no_grad():
        # Layer 0 dropped (draw 0.1 < 0.5): no bias anywhere after it.
        hidden = run([0.1, 0.9, 0.9])
        assert torch.equal(hidden[1], hidden[0])
        want = layers[2](layers[1](hidden[0], None, None), None, None)
        assert torch.equal(hidden[3], want)
        # Layer 0 kept, layer 1 dropped: layer 2 gets layer 0's bias.
        hidden = run([0.9, 0.1, 0.9])
        bias = layers[0].self_attn.position_bias(x.shape[1])
        first = layers[0](hidden[0], bias, None)
        assert torch.equal(hidden[3], layers[2](first, bias, None))
        assert not torch.equal(hidden[3], layers[2](first, None, None))


# --- 5. babble ---------------------------------------------------------------


def test_each_babble_file_is_mixed_at_its_own_snr():
    """The reference's ``additive_noise`` scaling, per file."""
    rng = np.random.default_rng(0)
    clean = rng.standard_normal(1000) * 0.3
    noises = rng.standard_normal((4, 1000)) * np.array([[0.1], [1], [2], [5]])
    snrs = np.array([13.0, 15.5, 18.0, 20.0])
    clean_db = 10 * np.log10(np.mean(clean**2))
    want = clean.copy()
    for noise, snr in zip(noises, snrs):
        noise_db = 10 * np.log10(np.mean(noise**2))
        want += np.sqrt(10 ** ((clean_db - noise_db - snr) / 10)) * noise
    got = mix_at_snrs(
        torch.from_numpy(clean),
        torch.from_numpy(noises),
        torch.from_numpy(snrs),
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_babble_snr_distribution_is_the_reference_one(tmp_path):
    """3-8 files at 13-20 dB each: the whole babble at about 9 dB."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        path = str(tmp_path / f"s{i}.wav")
        noise = rng.standard_normal(16000) * (0.02 + 0.02 * i)
        soundfile.write(path, noise.astype("float32"), 16000)
        files.append(path)
    write_audio_csv(files, str(tmp_path / "speech.csv"))
    augment = SixWayAugment(speech_csv=str(tmp_path / "speech.csv"))
    torch.manual_seed(0)
    clean = torch.sin(torch.arange(8000) * 0.05) * 0.5
    snrs = []
    for _ in range(400):
        out = augment.apply_choice(clean, "babble")
        added = (out - clean).double()
        snrs.append(
            10 * math.log10(clean.double().pow(2).mean() / added.pow(2).mean())
        )
    # The reference's draw, simulated: the powers of independent noises add.
    sim = np.random.default_rng(1)
    reference = []
    for _ in range(200000):
        each = sim.uniform(13, 20, sim.integers(3, 9))
        reference.append(-10 * np.log10(np.sum(10 ** (-each / 10))))
    reference = np.array(reference)
    # 8 files at 13 dB ... 3 files at 20 dB.
    bounds = 13 - 10 * math.log10(8), 20 - 10 * math.log10(3)
    assert bounds[0] < reference.min() and reference.max() < bounds[1]
    # Independent white noises of 8000 samples: cross terms change the
    # added power by ~1 % (0.05 dB); the mean of 400 draws of sd ~1.7 dB
    # has a standard error of 0.09 dB: 0.35 dB is about 4 standard errors.
    assert abs(np.mean(snrs) - reference.mean()) < 0.35
    assert bounds[0] - 0.2 < min(snrs) and max(snrs) < bounds[1] + 0.2


# --- 6. evaluation crops and the sampler --------------------------------------


def reference_eval_crops(audio, max_audio, num_eval):
    """``loadWAV(..., evalmode=True)`` of the reference, re-written."""
    size = audio.shape[0]
    if size <= max_audio:
        audio = np.pad(audio, (0, max_audio - size + 1), "wrap")
        size = audio.shape[0]
    starts = np.linspace(0, size - max_audio, num=num_eval)
    return np.stack([audio[int(s) : int(s) + max_audio] for s in starts])


@pytest.mark.parametrize("samples", [1000, 4000, 6424, 6425, 9000])
def test_evaluation_crops_match_the_reference(samples):
    audio = np.arange(samples, dtype=np.float32)
    want = reference_eval_crops(audio, 6424, 15)
    got = evenly_spaced_crops(torch.from_numpy(audio), 6424, 15)
    np.testing.assert_array_equal(got.numpy(), want)


def reference_batches(order, labels, batch_size):
    """The reference sampler's packing: a repeat in the open batch is
    dropped; an incomplete last batch is dropped."""
    mixed = []
    for index in order:
        start = len(mixed) - len(mixed) % batch_size
        if labels[index] not in [labels[i] for i in mixed[start:]]:
            mixed.append(index)
    total = len(mixed) - len(mixed) % batch_size
    return [mixed[i : i + batch_size] for i in range(0, total, batch_size)]


def test_sampler_drops_repeated_speakers_like_the_reference():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(30), rng.integers(1, 40, size=30))
    sampler = SpeakerBalancedBatchSampler(labels, 12, max_per_speaker=20)
    sampler.set_epoch(3)
    want = reference_batches(sampler.epoch_order(), labels, 12)
    assert sampler.global_batches() == want
