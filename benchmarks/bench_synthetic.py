"""Benchmark: generating the built-in synthetic corpus, and its baseline EER.

Times :func:`data_prep.synthetic.generate_corpus` at the default (demo) size
with 1 process (the reference of the ratio) and with every usable core, checks
that both give identical files, and reports the EER of the MFCC-statistics
cosine baseline (:mod:`data_prep.baseline`) on the default trials for a few
seeds (it must lie between 5% and 40%: a real task).

Usage::

    python -m benchmarks.bench_synthetic [--seeds 0 1 2] [--tiny]
"""

import argparse
import filecmp
import json
import os
import shutil
import tempfile
import time

from benchmarks.common import machine
from data_prep.baseline import baseline_eer
from data_prep.synthetic import (
    DEFAULT_SIZES,
    MARKER,
    TINY_SIZES,
    generate_corpus,
)


def same_files(first, second):
    """Whether two corpus folders hold byte-identical wav trees and lists."""
    for folder, _, names in os.walk(first):
        relative = os.path.relpath(folder, first)
        names = [n for n in names if n != MARKER]
        _, mismatch, errors = filecmp.cmpfiles(
            folder, os.path.join(second, relative), names, shallow=False
        )
        if mismatch or errors:
            return False
    return True


def main():
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    sizes = TINY_SIZES if args.tiny else DEFAULT_SIZES
    cores = len(os.sched_getaffinity(0))
    folder = tempfile.mkdtemp(prefix="bench_synthetic_")
    rows = []
    try:
        timings = {}
        for n_jobs in sorted({1, cores}):
            start, cpu = time.perf_counter(), time.process_time()
            generate_corpus(f"{folder}/jobs{n_jobs}", n_jobs=n_jobs, **sizes)
            timings[n_jobs] = time.perf_counter() - start
            if n_jobs == 1:
                cpu_seconds = time.process_time() - cpu
        identical = same_files(f"{folder}/jobs1", f"{folder}/jobs{cores}")
        with open(f"{folder}/jobs1/{MARKER}") as f:
            report = json.load(f)
        for seed in args.seeds:
            out = generate_corpus(f"{folder}/seed{seed}", seed=seed, **sizes)
            start = time.perf_counter()
            result = baseline_eer(out["data_folder"], out["trials"])
            rows.append((seed, result, time.perf_counter() - start))
    finally:
        shutil.rmtree(folder)
    print(f"machine: {machine()}")
    print(
        "load average (1, 5, 15 min) at the end: %.1f %.1f %.1f"
        % os.getloadavg()
    )
    print(f"sizes: {json.dumps(sizes)}")
    print(
        f"corpus: {report['utterances']} utterances, {report['hours']} h "
        f"of speech; same files with 1 and {cores} processes: {identical}"
    )
    print(
        f"\n{'generation':<28} {'s':>7} {'x real time':>12} {'vs 1 proc':>10}"
    )
    for n_jobs, seconds in timings.items():
        print(
            f"{f'{n_jobs} process(es)':<28} {seconds:>7.1f} "
            f"{report['hours'] * 3600 / seconds:>12.0f} "
            f"{timings[1] / seconds:>9.2f}x"
        )
    print(
        f"CPU time of the 1-process run: {cpu_seconds:.1f} s "
        f"({report['hours'] * 3600 / cpu_seconds:.0f}x real time per core)"
    )
    print(f"\n{'baseline (MFCC stats, cosine)':<32} {'EER %':>6} {'trials':>7}")
    for seed, result, seconds in rows:
        print(
            f"{f'seed {seed}':<32} {result['EER']:>6.1f} "
            f"{result['n_trials']:>7}   ({seconds:.0f} s)"
        )


if __name__ == "__main__":
    main()
