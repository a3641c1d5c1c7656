#!/usr/bin/env python3
"""The GPU figures in one run, each part a benchmark of this folder.

Parts (``--parts a,b,c,d``; all by default), each printing its own table:

a. Extraction of WavLM Base+ + MHFA (random weights): length-sorted padded
   batches vs. one utterance at a time (:mod:`benchmarks.bench_extract`);
   targets: >= 3x, embeddings within 1e-4.
b. One training step of Base+ + MHFA: ours in bf16 autocast and in fp32
   vs. the reference-style fp32 step (:mod:`benchmarks.bench_train_step`).
c. Pseudo-labels at full scale on the GPU path: 1,092,009 x 512 synthetic
   embeddings -> K-Means 50,000 -> AHC 7,500 through
   ``recipes/pseudo_label.py`` (:mod:`benchmarks.bench_clustering`).
d. ``recipes/extract_embeddings.py`` under ``torchrun`` with one process
   per GPU (NCCL) vs. one plain process: throughput, and the same
   embeddings (:mod:`benchmarks.bench_extract_ddp`); with a single GPU this
   checks the NCCL path rather than scaling.

``--quick`` shrinks every part to toy sizes, so that the whole script can
be checked on any machine (a CPU included) in a few minutes; its figures
mean nothing.

Run::

    python -m benchmarks.bench_gpu              # the figures (GPU machine)
    python -m benchmarks.bench_gpu --parts a,d  # some of them
    python -m benchmarks.bench_gpu --quick      # check that every part runs
"""

import argparse
import time

import torch

from benchmarks import (
    bench_clustering,
    bench_extract,
    bench_extract_ddp,
    bench_train_step,
)
from benchmarks.common import machine

FULL = {
    "a": [
        "--model=base_plus",
        "--n_files=64",
        "--max_batch_size=16",
        "--max_batch_samples=4000000",
        "--num_workers=2",
        "--repeats=2",
    ],
    "b": ["--size=base_plus", "--batch=120", "--repeats=3"],
    "c": ["--subset=0", "--full"],
    "d": ["--model=base_plus", "--n_files=128", "--num_workers=2"],
}
QUICK = {
    "a": ["--model=tiny", "--n_files=6", "--repeats=1", "--num_workers=0"],
    "b": ["--size=mid", "--batch=2", "--crop=16000", "--repeats=1"],
    "c": ["--subset=0", "--full", "--full_fraction=0.002"],
    "d": ["--model=tiny", "--n_files=8", "--repeats=1"],
}
TITLES = {
    "a": "(a) batched vs one-at-a-time extraction, WavLM Base+ + MHFA",
    "b": "(b) training step: bf16 autocast / fp32 vs reference fp32",
    "c": "(c) pseudo-labels 1,092,009 x 512 -> 50,000 -> 7,500",
    "d": "(d) extract_embeddings.py: torchrun, 1 process per GPU",
}


def run_part(part, arguments, device):
    """Run one part; return a line with its verdict or figure."""
    if part == "a":
        speed_up, difference = bench_extract.main(arguments)
        return (
            f"batched {speed_up:.2f}x one at a time (target >= 3x: "
            f"{'met' if speed_up >= 3 else 'NOT met'}), max |difference| "
            f"{difference:.1e} (target <= 1e-4: "
            f"{'met' if difference <= 1e-4 else 'NOT met'})"
        )
    if part == "b":
        bench_train_step.main(arguments)
        return "see the table"
    if part == "c":
        bench_clustering.main(arguments)
        return "see the table"
    processes = max(1, torch.cuda.device_count()) if device == "cuda" else 2
    _, difference = bench_extract_ddp.main(
        arguments + [f"--device={device}", f"--processes={processes}"]
    )
    return f"max |difference| between the runs {difference:.1e}"


def main(argv=None):
    """Run the chosen parts and print a closing summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c,d")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(TITLES))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose among a, b, c, d")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}", flush=True)
    if device == "cuda":
        print(
            f"GPU: {torch.cuda.get_device_name(0)} x "
            f"{torch.cuda.device_count()}, CUDA {torch.version.cuda}, TF32 "
            f"matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN "
            f"{torch.backends.cudnn.allow_tf32}",
            flush=True,
        )
    elif not args.quick:
        print("no GPU here: every part runs on the CPU (slow)", flush=True)
    summary = []
    for part in parts:
        arguments = (QUICK if args.quick else FULL)[part]
        print(f"\n## {TITLES[part]}\n$ {' '.join(arguments)}", flush=True)
        start = time.perf_counter()
        verdict = run_part(part, list(arguments), device)
        seconds = time.perf_counter() - start
        summary.append(f"{TITLES[part]}: {verdict} ({seconds:.0f} s)")
    print("\n## summary" + (" (--quick: figures mean nothing)" * args.quick))
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
