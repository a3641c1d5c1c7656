#!/usr/bin/env python3
"""Embedding extraction: batched by length vs one utterance at a time.

Both paths run the same model on the same files in one process. The
baseline is how the reference extracts embeddings: read a file, run the
model on it alone (``torch.no_grad``), next file. Ours is
:func:`speechbrain_ext.verification.extraction.embed_full_utterances`:
length-sorted padded batches with relative lengths, audio read by ``DataLoader``
workers, ``torch.inference_mode``. Prints a table (wall and process CPU
seconds, files/s, speed-ups, largest absolute difference between the two
sets of embeddings) and the machine.

Run::

    python -m benchmarks.bench_extract --model tiny --n_files 200
    python -m benchmarks.bench_extract --model base_plus --n_files 32
"""

import argparse
import os
import tempfile
import time

import numpy as np
import soundfile
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import machine
from speechbrain_ext.lobes.embedding_model import WavLMMHFA
from speechbrain_ext.lobes.wavlm import WavLM
from speechbrain_ext.pretrained.model_factory import mhfa_for, wavlm_config
from speechbrain_ext.verification.extraction import embed_full_utterances


def make_files(folder, n_files, min_seconds, max_seconds, seed=0):
    """Write ``n_files`` noise-like 16 kHz wavs of random durations."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(n_files):
        seconds = rng.uniform(min_seconds, max_seconds)
        samples = int(seconds * 16000)
        wav = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        path = os.path.join(folder, f"{index:05d}.wav")
        soundfile.write(path, wav, 16000)
        paths.append(path)
    return paths


def clocks():
    """Wall-clock and process CPU seconds, as an array."""
    return np.array([time.perf_counter(), time.process_time()])


def one_at_a_time(model, paths, device, max_samples):
    """The reference's loop: one file, one forward pass."""
    rows = []
    with torch.no_grad():
        for path in paths:
            wav, _ = soundfile.read(path, dtype="float32")
            wav = torch.from_numpy(wav[:max_samples]).to(device)
            rows.append(model(wav[None]).reshape(-1).float().cpu().numpy())
    return np.stack(rows)


def matrix_flops(model, paths, device, max_samples):
    """Matrix-product and convolution flops of the one-at-a-time pass."""
    with FlopCounterMode(display=False) as counter:
        one_at_a_time(model, paths, device, max_samples)
    return counter.get_total_flops()


def matmul_rate(device, size=2048, repeats=5):
    """Best float32 matrix-product rate (flop/s) of this machine."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="WavLM preset (tiny, base_plus...)"
    )
    parser.add_argument("--n_files", type=int, default=200)
    parser.add_argument("--min_seconds", type=float, default=4.0)
    parser.add_argument("--max_seconds", type=float, default=12.0)
    parser.add_argument("--max_batch_size", type=int, default=16)
    parser.add_argument("--max_batch_samples", type=int, default=1_000_000)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    heads, compression, size = (64, 128, 256)
    if args.model == "tiny":
        heads, compression, size = (4, 8, 16)
    config = wavlm_config(args.model)
    model = WavLMMHFA(WavLM(config), mhfa_for(config, heads, compression, size))
    model = model.to(device).eval()
    max_samples = 700_000
    with tempfile.TemporaryDirectory() as folder:
        paths = make_files(
            folder, args.n_files, args.min_seconds, args.max_seconds
        )
        one_at_a_time(model, paths[:2], device, max_samples)  # warm-up
        # Alternate the two methods and keep each one's best run: the
        # machine may be shared, and noise only ever adds time.
        baseline_runs, ours_runs = [], []
        for _ in range(args.repeats):
            start = clocks()
            baseline = one_at_a_time(model, paths, device, max_samples)
            baseline_runs.append(clocks() - start)
            start = clocks()
            ours = embed_full_utterances(
                model,
                paths,
                max_samples=max_samples,
                max_batch_size=args.max_batch_size,
                max_batch_samples=args.max_batch_samples,
                device=device,
                num_workers=args.num_workers,
                progress=False,
            )
            ours_runs.append(clocks() - start)
        baseline_s, baseline_cpu = np.min(baseline_runs, axis=0)
        ours_s, ours_cpu = np.min(ours_runs, axis=0)
        flops = matrix_flops(model, paths, device, max_samples)
    rate = matmul_rate(device)
    difference = float(np.abs(ours - baseline).max())
    print(f"machine: {machine()}, device {device}")
    print(
        f"model: WavLM {args.model} + MHFA, {args.n_files} files of "
        f"{args.min_seconds:g}-{args.max_seconds:g} s"
    )
    print(
        f"batches: <= {args.max_batch_size} files, <= "
        f"{args.max_batch_samples} padded samples; {args.num_workers} "
        f"loader worker(s); best of {args.repeats} alternated runs"
    )
    print(
        f"{'method':<20} {'wall s':>8} {'files/s':>8} {'speed-up':>9} "
        f"{'CPU s':>8} {'speed-up (CPU)':>15}"
    )
    for name, seconds, cpu in (
        ("one at a time", baseline_s, baseline_cpu),
        ("batched by length", ours_s, ours_cpu),
    ):
        print(
            f"{name:<20} {seconds:>8.2f} {args.n_files / seconds:>8.1f} "
            f"{baseline_s / seconds:>8.2f}x {cpu:>8.2f} "
            f"{baseline_cpu / cpu:>14.2f}x"
        )
    print(f"max |difference| of embeddings: {difference:.2e}")
    print(
        f"matrix products: {flops / 1e9:.0f} Gflop; one at a time runs them "
        f"at {flops / baseline_s / 1e9:.0f} Gflop/s, batched at "
        f"{flops / ours_s / 1e9:.0f} Gflop/s; a 2048 x 2048 float32 matrix "
        f"product runs at {rate / 1e9:.0f} Gflop/s here, so no float32 "
        f"batching can be more than {rate * baseline_s / flops:.2f}x "
        "faster than one at a time"
    )
    return baseline_s / ours_s, difference


if __name__ == "__main__":
    main()
