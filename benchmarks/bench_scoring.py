#!/usr/bin/env python3
"""Scoring a VoxCeleb1-H-sized trial list from cached embeddings.

Times, on random embeddings of the real sizes (153,516 files of
VoxCeleb1, 552,536 trials, 256-d, 15 crops): building the per-file vectors,
scoring every trial (reference averaged cosine and plain cosine), AS-norm
with a 20,000-utterance cohort (top 300), and EER + two minDCFs. The
baseline is the reference's per-trial loop (normalise, 15 x 15 crop matmul,
full cosine) on a sample of trials, extrapolated, and SpeechBrain's
``EER`` / ``minDCF`` (quadratic) on a subset, extrapolated. Prints a table
and the machine.

Run::

    python -m benchmarks.bench_scoring [--n_files 153516 --n_trials 552536]
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from speechbrain.utils.metric_stats import EER, minDCF

from benchmarks.common import machine, timed
from speechbrain_ext.verification.metrics import verification_metrics
from speechbrain_ext.verification.scoring import (
    as_norm,
    cohort_probes,
    cohort_statistics,
    file_vectors,
    normalise_rows,
    score_trials,
)


def reference_loop(crops, full, enrol, test):
    """The reference's per-trial scoring loop (torch, one trial at a time)."""
    scores = []
    for e, t in zip(enrol, test):
        a = F.normalize(torch.from_numpy(crops[e]), p=2, dim=1)
        b = F.normalize(torch.from_numpy(crops[t]), p=2, dim=1)
        fa = F.normalize(torch.from_numpy(full[e][None]), p=2, dim=1)
        fb = F.normalize(torch.from_numpy(full[t][None]), p=2, dim=1)
        score = (torch.mean(a @ b.T) + torch.mean(fa @ fb.T)) / 2
        scores.append(score.item())
    return np.array(scores)


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_files", type=int, default=153_516)
    parser.add_argument("--n_trials", type=int, default=552_536)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--n_crops", type=int, default=15)
    parser.add_argument("--cohort", type=int, default=20_000)
    parser.add_argument("--top_k", type=int, default=300)
    parser.add_argument("--loop_sample", type=int, default=5_000)
    parser.add_argument("--sb_sample", type=int, default=4_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    def normal(*shape):
        """Standard normal float32 samples (no float64 temporary)."""
        return rng.standard_normal(shape, dtype=np.float32)

    speakers = normal(1000, args.dim)
    owner = rng.integers(0, 1000, args.n_files)
    full = 0.4 * speakers[owner] + normal(args.n_files, args.dim)
    crops = normal(args.n_files, args.n_crops, args.dim)
    crops += full[:, None, :]
    enrol = rng.integers(0, args.n_files, args.n_trials)
    test = np.where(
        rng.random(args.n_trials) < 0.5,
        rng.integers(0, args.n_files, args.n_trials),
        enrol,
    )
    labels = (owner[enrol] == owner[test]).astype(np.int8)
    cohort = normal(args.cohort, args.dim)

    rows = []
    vectors, seconds = timed(file_vectors, "reference", full, crops)
    rows.append(("file vectors (reference)", seconds))
    scores, seconds = timed(score_trials, vectors, enrol, test)
    rows.append(("score trials (reference)", seconds))
    _, seconds = timed(score_trials, file_vectors("cosine", full), enrol, test)
    rows.append(("score trials (cosine)", seconds))
    used = np.unique(np.concatenate([enrol, test]))
    (mean, std), seconds = timed(
        cohort_statistics,
        cohort_probes("reference", vectors[used]),
        normalise_rows(cohort),
        args.top_k,
    )
    rows.append((f"AS-norm cohort stats ({len(used)} files)", seconds))
    full_mean = np.zeros(args.n_files, np.float32)
    full_std = np.ones(args.n_files, np.float32)
    full_mean[used], full_std[used] = mean, std
    _, seconds = timed(as_norm, scores, enrol, test, full_mean, full_std)
    rows.append(("AS-norm of the scores", seconds))
    metrics, seconds = timed(verification_metrics, scores, labels)
    rows.append(("EER + minDCF 0.05/0.01", seconds))
    ours_total = sum(s for _, s in rows)

    sample = slice(0, args.loop_sample)
    loop_scores, seconds = timed(
        reference_loop, crops, full, enrol[sample], test[sample]
    )
    assert np.allclose(loop_scores, scores[sample], atol=1e-5)
    loop_total = seconds * args.n_trials / args.loop_sample
    small = slice(0, args.sb_sample)
    positive = torch.from_numpy(scores[small][labels[small] == 1].astype("f8"))
    negative = torch.from_numpy(scores[small][labels[small] == 0].astype("f8"))
    _, eer_s = timed(EER, positive, negative)
    _, dcf_s = timed(minDCF, positive, negative, p_target=0.01)
    # Both are quadratic in the number of trials.
    growth = (args.n_trials / args.sb_sample) ** 2
    sb_total = (eer_s + 2 * dcf_s) * growth

    print(f"machine: {machine()}")
    print(
        f"{args.n_trials} trials, {args.n_files} files, {args.dim}-d, "
        f"{args.n_crops} crops, cohort {args.cohort} (top {args.top_k})"
    )
    print(f"{'step':<40} {'seconds':>10}")
    for name, seconds in rows:
        print(f"{name:<40} {seconds:>10.2f}")
    print(f"{'total (ours)':<40} {ours_total:>10.2f}")
    print(
        f"{'reference per-trial loop (extrapolated)':<40} {loop_total:>10.1f}"
        f"   ({loop_total / ours_total:.0f}x ours)"
    )
    print(
        f"{'SpeechBrain EER+2 minDCF (extrapolated)':<40} {sb_total:>10.0f}"
        f"   (measured {eer_s + 2 * dcf_s:.2f} s on {args.sb_sample} trials)"
    )
    print(f"EER {metrics['EER']:.2f}% (random embeddings, sanity only)")


if __name__ == "__main__":
    main()
