"""The random recording channel (an option the reference does not have).

The filters are checked by measuring sines through them against closed
forms written out here: the bilinear-transform Butterworth magnitude and
the Audio EQ Cookbook's peaking EQ evaluated on the unit circle; the draws
against their ranges and probabilities.
"""

import math

import numpy as np
import pytest
import torch

from speechbrain_ext.dataio.augment import (
    CHOICES,
    RandomChannel,
    SixWayAugment,
)

RATE = 16000


def butterworth_db(freq, cutoff, order, highpass=False):
    """|H|^2 = 1 / (1 + (tan(w/2) / tan(wc/2))^(2N)), bilinear transform."""
    ratio = math.tan(math.pi * freq / RATE) / math.tan(math.pi * cutoff / RATE)
    if highpass:
        ratio = 1 / ratio
    return -10 * math.log10(1 + ratio ** (2 * order))


def peaking_db(freq, centre, gain, q):
    """The Audio EQ Cookbook's peaking EQ, evaluated at ``freq``."""
    w0 = 2 * math.pi * centre / RATE
    alpha = math.sin(w0) / (2 * q)
    amp = 10 ** (gain / 40)
    b = [1 + alpha * amp, -2 * math.cos(w0), 1 - alpha * amp]
    a = [1 + alpha / amp, -2 * math.cos(w0), 1 - alpha / amp]
    z = np.exp(-2j * math.pi * freq / RATE * np.arange(3))
    return 20 * math.log10(abs(np.dot(b, z) / np.dot(a, z)))


CHANNEL = {
    "highpass": 200.0,
    "peaks": [(1000.0, 6.0, 1.0), (2500.0, -9.0, 0.7)],
    "lowpass": 3800.0,
}


def expected_gain_db(freq):
    total = butterworth_db(freq, CHANNEL["highpass"], 2, highpass=True)
    for centre, gain, q in CHANNEL["peaks"]:
        total += peaking_db(freq, centre, gain, q)
    return total + butterworth_db(freq, CHANNEL["lowpass"], 4)


@pytest.mark.parametrize("freq", [100, 300, 1000, 2500, 4000, 5000])
def test_channel_response_is_the_cookbook_cascade(freq):
    t = torch.arange(2 * RATE, dtype=torch.float64) / RATE
    sine = (0.1 * torch.sin(2 * math.pi * freq * t)).float()
    out = RandomChannel().apply(sine, CHANNEL).double()
    # The last second: an integer number of periods, long after the filters'
    # transients (their slowest pole decays in a few ms).
    rms_in = sine[RATE:].double().pow(2).mean().sqrt()
    rms_out = out[RATE:].pow(2).mean().sqrt()
    measured = 20 * math.log10(rms_out / rms_in)
    # The filters run in float64 on the float32 input; rounding the output
    # to float32 (relative 6e-8 per sample) moves the RMS ratio by < 1e-6
    # dB, and the transients have decayed by e^-50 and more.
    assert measured == pytest.approx(expected_gain_db(freq), abs=1e-5)


def test_a_loud_boosted_signal_is_not_clipped():
    """Filtering is linear: no clamp to [-1, 1] (torchaudio's biquads)."""
    t = torch.arange(RATE) / RATE
    loud = 0.9 * torch.sin(2 * math.pi * 1000 * t)
    channel = {
        "highpass": 50.0,
        "peaks": [(1000.0, 12.0, 1.0)],
        "lowpass": None,
    }
    out = RandomChannel().apply(loud, channel)
    assert out.abs().max() > 2.5  # +12 dB: about 3.6
    quiet = RandomChannel().apply(loud * 2.0**-20, channel)
    assert torch.equal(out, quiet * 2.0**20)


def test_draws_follow_their_ranges_and_probabilities():
    channel = RandomChannel(prob=0.6, telephone_prob=0.3)
    torch.manual_seed(0)
    draws = [channel.draw() for _ in range(3000)]
    used = [d for d in draws if d is not None]
    # Binomial counts: 4 standard deviations.
    assert abs(len(used) / 3000 - 0.6) < 4 * math.sqrt(0.6 * 0.4 / 3000)
    telephone = sum(d["lowpass"] is not None for d in used) / len(used)
    assert abs(telephone - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(used))
    assert all(50 <= d["highpass"] <= 300 for d in used)
    assert {len(d["peaks"]) for d in used} == {2, 3, 4}
    centres = np.log([c for d in used for c, _, _ in d["peaks"]])
    assert centres.min() >= math.log(100) and centres.max() <= math.log(6000)
    # Log-uniform: the median centre is the geometric mean of the range.
    assert np.median(centres) == pytest.approx(math.log(775), abs=0.15)
    gains = np.array([g for d in used for _, g, _ in d["peaks"]])
    assert gains.std() == pytest.approx(6.0, rel=0.05)
    assert all(3400 <= d["lowpass"] <= 4500 for d in used if d["lowpass"])
    torch.manual_seed(0)
    assert [channel.draw() for _ in range(3000)] == draws


def test_six_way_augment_applies_the_channel_after_its_choice():
    wav = torch.randn(RATE) * 0.1
    assert not SixWayAugment(channel=RandomChannel(prob=0.0)).enabled
    channel = RandomChannel(prob=1.0)
    augment = SixWayAugment(channel=channel)
    assert augment.enabled
    torch.manual_seed(0)
    out, choice = augment(wav)
    # No noise or RIR data: every choice leaves the crop clean, and the
    # channel drawn after the choice filters it.
    assert choice in CHOICES
    torch.manual_seed(0)
    torch.randint(0, len(CHOICES), ())
    assert torch.equal(out, channel.apply(wav, channel.draw()))


@pytest.mark.parametrize("name", ["prob", "telephone_prob"])
def test_probabilities_out_of_range_are_refused(name):
    with pytest.raises(
        ValueError, match=f"{name} must be in \\[0, 1\\], got 1.5"
    ):
        RandomChannel(**{name: 1.5})
