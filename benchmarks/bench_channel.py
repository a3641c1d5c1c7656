#!/usr/bin/env python3
"""The random recording channel: scipy second-order sections vs torchaudio.

Times :class:`speechbrain_ext.dataio.augment.RandomChannel` (the drawn
cascade run by ``scipy.signal.sosfilt`` in float64) against the same cascade
run by torchaudio's biquads (``highpass_biquad``, ``equalizer_biquad``, and
two ``lowpass_biquad`` with the fourth-order Butterworth's Q values), on
2-s crops through channels drawn with ``prob=1``. Both give the same output
(the largest difference is printed). The demo filters about 14,000 2-s and
14,000 1-s crops in stage 1 and 7,200 2-s crops in each round. Prints a
table and the machine.

Run::

    python -m benchmarks.bench_channel [--crops 300 --seconds 2]
"""

import argparse
import math
import time

import torch
import torchaudio

from benchmarks.common import machine
from speechbrain_ext.dataio.augment import RandomChannel

#: Q of the two sections of a fourth-order Butterworth filter.
BUTTERWORTH_4_Q = (
    1 / (2 * math.cos(math.pi / 8)),
    1 / (2 * math.cos(3 * math.pi / 8)),
)


def torchaudio_cascade(wav, channel, rate):
    """The drawn channel with torchaudio's biquads (float32)."""
    functional = torchaudio.functional
    wav = functional.highpass_biquad(wav, rate, channel["highpass"])
    for centre, gain, q in channel["peaks"]:
        wav = functional.equalizer_biquad(wav, rate, centre, gain, q)
    if channel["lowpass"] is not None:
        for q in BUTTERWORTH_4_Q:
            wav = functional.lowpass_biquad(wav, rate, channel["lowpass"], q)
    return wav


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    channel = RandomChannel(prob=1.0)
    rate = channel.sample_rate
    torch.manual_seed(0)
    # Speech-like level (RMS 0.05): torchaudio's [-1, 1] clamp never acts.
    crops = 0.05 * torch.randn(args.crops, int(args.seconds * rate))
    draws = [channel.draw() for _ in range(args.crops)]
    timings, outputs = {}, {}
    for name, run in (
        ("torchaudio biquads (baseline)", torchaudio_cascade),
        ("scipy sosfilt (ours)", lambda w, c, r: channel.apply(w, c)),
    ):
        start = time.perf_counter()
        outputs[name] = [run(w, c, rate) for w, c in zip(crops, draws)]
        timings[name] = (time.perf_counter() - start) / args.crops
    baseline = timings["torchaudio biquads (baseline)"]
    difference = max(
        float((a - b).abs().max())
        for a, b in zip(*(outputs[name] for name in timings))
    )
    print(f"Machine: {machine()}")
    print(
        f"{args.crops} crops of {args.seconds:g} s, "
        f"largest output difference {difference:.1e} (crop RMS 0.05)\n"
    )
    print("| cascade | ms per crop | speed-up |")
    print("|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {1000 * seconds:.3f} | {baseline / seconds:.1f}x |")


if __name__ == "__main__":
    main()
