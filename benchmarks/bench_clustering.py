#!/usr/bin/env python3
"""Benchmark of the pseudo-label clustering on synthetic speaker embeddings.

Generates realistic synthetic embeddings (VoxCeleb2-like: 5,994 speakers,
long-tailed utterance counts summing to 1,092,009, per-video session
offsets, per-utterance noise levels; tuned so that the exact pipeline's NMI
is about 0.95 and the cosine EER a few percent, as for DINO embeddings;
``--regime separated``: the well-separated speakers of later rounds, NMI
>= 0.99, see :data:`REGIMES`) and prints, in one run:

* on a subset (a fraction of the speakers and utterances, with the cluster
  counts scaled alike): the reference algorithm (scikit-learn KMeans to
  convergence + full Ward), flat exact K-Means (3 iterations) + graph Ward,
  and ours (the defaults of ``hparams/pseudo_label.yaml``): wall time, peak
  extra RSS, NMI;
* with ``--full``: ours alone at full scale through the command line
  (embeddings file written as the reference does, one storage per
  utterance and no cache beside it, then ``recipes/pseudo_label.py``, whose
  load is thus a first load): load / K-Means / AHC times, peak RSS, NMI and
  the connected components of the neighbour graph from its JSON report,
  and the wall and CPU time of the whole command (Python start and imports
  included);
* with ``--full_baseline``: flat exact K-Means (3 iterations, float32) +
  graph Ward at full scale on the same embeddings (about half an hour on 2
  CPU cores), and ours' NMI difference to it.

To run::

    python -m benchmarks.bench_clustering [--subset 0.0625] [--full]
        [--full_baseline] [--regime first_round|separated]

(``--subset 0 --full``: full scale only.)
"""

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import torch
from sklearn.cluster import AgglomerativeClustering, KMeans

from benchmarks.common import machine
from speechbrain_ext.verification.clustering import (
    ahc_ward,
    cluster_metrics,
    kmeans,
    pseudo_label,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOXCELEB2 = {"speakers": 5994, "utterances": 1092009}
# Generator settings: "first_round" as DINO embeddings (exact-pipeline NMI
# ~0.95, anisotropic spectrum); "separated" as the embeddings of later
# rounds (NMI >= 0.99: isotropic, same-speaker cosine ~0.39, other-speaker
# 0.00 +/- 0.044, no session offsets), whose K-Means centroids form
# hundreds of islands in the neighbour graph.
REGIMES = {
    "first_round": {},
    "separated": {
        "spectrum": float("inf"),
        "video_std": 0.0,
        "noise_spread": 0.0,
        "noise_std": 1.25,
    },
}


def utterance_counts(rng, n_speakers, n_utterances, sigma=0.55, low=20):
    """Long-tailed (log-normal) utterances per speaker with an exact sum.

    Arguments
    ---------
    rng : numpy.random.Generator
    n_speakers : int
    n_utterances : int
        The sum of the counts.
    sigma : float
        Log-normal spread.
    low : int
        Minimum count (before the final rounding).

    Returns
    -------
    numpy.ndarray
        int64 ``[n_speakers]``.

    Example
    -------
    >>> counts = utterance_counts(np.random.default_rng(0), 10, 1000)
    >>> int(counts.sum()), bool(counts.min() >= 19)
    (1000, True)
    """
    raw = rng.lognormal(0.0, sigma, n_speakers)
    counts = np.maximum(low, raw / raw.sum() * n_utterances)
    counts = counts / counts.sum() * n_utterances
    rounded = np.floor(counts).astype(np.int64)
    rounded[np.argsort(rounded - counts)[: n_utterances - rounded.sum()]] += 1
    return rounded


def generate_embeddings(
    n_speakers=VOXCELEB2["speakers"],
    n_utterances=VOXCELEB2["utterances"],
    dim=512,
    seed=0,
    video_std=0.55,
    noise_std=1.1,
    spectrum=4.0,
    noise_spread=0.35,
    utterances_per_video=7,
):
    """Synthetic speaker embeddings, written speaker by speaker.

    Every component has the same decaying spectrum (variance of dimension
    k proportional to ``1 / (1 + k / spectrum)``, so that the embeddings,
    like first-round ones, are far from isotropic; ``inf``: isotropic): a
    unit-norm speaker centre,
    plus a per-video session offset (``video_std``), plus per-utterance
    noise whose level is log-normal around ``noise_std``. The only big
    allocation is the output matrix.

    Arguments
    ---------
    n_speakers, n_utterances, dim : int
        Sizes.
    seed : int
        Random seed.
    video_std, noise_std, spectrum, noise_spread : float
        See above.
    utterances_per_video : int
        Average number of utterances per video.

    Returns
    -------
    keys : list of str
        ``idSSSSS/VIDEO/UUUUU.wav`` (11-character video ids).
    matrix : numpy.ndarray
        float32 ``[n_utterances, dim]``.
    speakers : numpy.ndarray
        int64 speaker index of every row.

    Example
    -------
    >>> keys, x, spk = generate_embeddings(3, 30, dim=8)
    >>> keys[0], x.shape, spk.tolist()[:3]
    ('id00000/v0000000000/00001.wav', (30, 8), [0, 0, 0])
    """
    rng = np.random.default_rng(seed)
    counts = utterance_counts(rng, n_speakers, n_utterances)
    variance = 1.0 / (1.0 + np.arange(dim) / spectrum)
    scale = np.sqrt(variance / variance.sum()).astype(np.float32)
    matrix = np.empty((n_utterances, dim), dtype=np.float32)
    keys = []
    start = video_base = 0
    for speaker, count in enumerate(counts):
        centre = rng.standard_normal(dim, dtype=np.float32) * scale
        centre /= np.linalg.norm(centre)
        n_videos = max(1, round(count / utterances_per_video))
        video = np.sort(rng.integers(0, n_videos, count))
        offsets = rng.standard_normal((n_videos, dim), dtype=np.float32)
        offsets *= scale * np.float32(video_std)
        level = noise_std * rng.lognormal(0.0, noise_spread, count)
        noise = rng.standard_normal((count, dim), dtype=np.float32)
        noise *= scale * level.astype(np.float32)[:, None]
        matrix[start : start + count] = centre + offsets[video] + noise
        first = np.searchsorted(video, video)
        keys.extend(
            f"id{speaker:05d}/v{video_base + v:010d}/{i - f + 1:05d}.wav"
            for i, (v, f) in enumerate(zip(video.tolist(), first.tolist()))
        )
        start += count
        video_base += n_videos
    return keys, matrix, np.repeat(np.arange(n_speakers), counts)


def cosine_eer(matrix, speakers, n_trials=20000, seed=0):
    """Cosine-scoring EER on random target and non-target pairs.

    Arguments
    ---------
    matrix : numpy.ndarray
        ``[N, D]`` embeddings.
    speakers : numpy.ndarray
        Speaker of every row.
    n_trials : int
        Pairs of each kind.
    seed : int

    Returns
    -------
    float
        EER as a fraction.

    Example
    -------
    >>> x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype="float32")
    >>> cosine_eer(x, np.array([0, 0, 1, 1]), n_trials=100)
    0.0
    """
    rng = np.random.default_rng(seed)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    order = np.argsort(speakers, kind="stable")
    first = np.searchsorted(speakers[order], speakers)
    count = np.bincount(speakers)[speakers]
    a = rng.integers(0, len(matrix), n_trials)
    same = order[first[a] + (rng.random(n_trials) * count[a]).astype(int)]
    other = rng.integers(0, len(matrix), n_trials)
    target = (unit[a] * unit[same]).sum(1)[same != a]
    nontarget = (unit[a] * unit[other]).sum(1)[speakers[a] != speakers[other]]
    thresholds = np.sort(np.concatenate([target, nontarget]))
    miss = np.searchsorted(np.sort(target), thresholds) / len(target)
    false_alarm = 1 - np.searchsorted(np.sort(nontarget), thresholds) / len(
        nontarget
    )
    best = np.argmin(np.abs(miss - false_alarm))
    return float((miss[best] + false_alarm[best]) / 2)


class PeakRSS:
    """Context manager sampling this process's RSS; ``.peak_gb`` is the
    largest increase over the RSS at entry.

    Example
    -------
    >>> with PeakRSS() as rss:
    ...     block = np.ones(10**6)
    >>> rss.peak_gb >= 0
    True
    """

    def __enter__(self):
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.peak_gb = (self.peak - self.base) / 2**30


def reference_pipeline(matrix, n_clusters, n_clusters_ahc, seed):
    """scikit-learn KMeans (Lloyd from random points, to convergence) +
    full Ward of the centroids.

    Arguments
    ---------
    matrix : numpy.ndarray
        ``[N, D]`` embeddings.
    n_clusters, n_clusters_ahc, seed : int

    Returns
    -------
    numpy.ndarray
        Labels.
    """
    model = KMeans(n_clusters, init="random", n_init=1, random_state=seed).fit(
        matrix
    )
    ward = AgglomerativeClustering(n_clusters_ahc, linkage="ward")
    return ward.fit_predict(model.cluster_centers_)[model.labels_]


def flat3_pipeline(matrix, n_clusters, n_clusters_ahc, seed):
    """Flat exact K-Means (3 Lloyd iterations) + Ward on a 10-NN graph.

    Arguments
    ---------
    matrix : numpy.ndarray
        ``[N, D]`` embeddings.
    n_clusters, n_clusters_ahc, seed : int

    Returns
    -------
    numpy.ndarray
        Labels.
    """
    centroids, labels, _ = kmeans(
        matrix, n_clusters, n_iter=3, seed=seed, method="exact", tol=0
    )
    used, labels = np.unique(labels, return_inverse=True)
    return ahc_ward(centroids[used], n_clusters_ahc, 10, seed)[labels]


def subset_benchmark(fraction, seed, regime="first_round"):
    """Reference vs. flat-3 vs. ours on a fraction of the speakers.

    Arguments
    ---------
    fraction : float
        Fraction of speakers, utterances and clusters.
    seed : int
    regime : str
        A key of :data:`REGIMES`.

    Returns
    -------
    list of dict
        One row per method.
    """
    n_speakers = round(VOXCELEB2["speakers"] * fraction)
    n_utterances = round(VOXCELEB2["utterances"] * fraction)
    n_clusters, n_ahc = round(50000 * fraction), round(7500 * fraction)
    keys, matrix, speakers = generate_embeddings(
        n_speakers, n_utterances, seed=seed, **REGIMES[regime]
    )
    print(
        f"subset ({regime}): {n_utterances} x {matrix.shape[1]}, "
        f"{n_speakers} speakers, "
        f"K-Means {n_clusters}, AHC {n_ahc}, cosine EER "
        f"{100 * cosine_eer(matrix, speakers):.2f}%",
        flush=True,
    )
    stats = {}
    methods = {
        "reference (sklearn KMeans + full Ward)": reference_pipeline,
        "flat K-Means 3 it + graph Ward": flat3_pipeline,
        "ours (defaults)": lambda x, k, a, s: pseudo_label(
            None, x, k, a, s, method="fast", stats=stats
        ),
    }
    rows = []
    for name, method in methods.items():
        start = time.perf_counter()
        with PeakRSS() as rss:
            labels = method(matrix, n_clusters, n_ahc, seed)
        rows.append(
            {
                "method": name,
                "wall_s": time.perf_counter() - start,
                "peak_extra_rss_gb": rss.peak_gb,
                "graph_components": stats.pop("graph_components", None),
                **cluster_metrics(speakers, labels),
            }
        )
        print(f"  {name}: {rows[-1]}", flush=True)
    return rows


def save_reference_format(keys, matrix, path):
    """Save embeddings as the reference code does: a ``Dict[str, Tensor]``
    with one storage per utterance, and no cache beside it (so that
    :func:`~speechbrain_ext.dataio.embeddings_io.load_embeddings` reads
    the file itself: a first load).

    Arguments
    ---------
    keys : list of str
    matrix : numpy.ndarray
        ``[N, D]``.
    path : str
    """
    rows = torch.from_numpy(matrix)
    torch.save({key: row.clone() for key, row in zip(keys, rows)}, path)


def full_benchmark(folder, seed, dim=512, fraction=1.0, regime="first_round"):
    """Ours at full scale through the command line, first load included.

    Arguments
    ---------
    folder : str
        Where the embeddings file and outputs go.
    seed : int
    dim : int
        Embedding dimension.
    fraction : float
        Of the speakers, utterances and cluster counts (1: full scale;
        smaller only to check the script quickly).
    regime : str
        A key of :data:`REGIMES`.

    Returns
    -------
    dict
        The recipe's JSON report plus generation and save times.
    """
    start = time.perf_counter()
    keys, matrix, speakers = generate_embeddings(
        round(VOXCELEB2["speakers"] * fraction),
        round(VOXCELEB2["utterances"] * fraction),
        seed=seed,
        dim=dim,
        **REGIMES[regime],
    )
    generate_s = time.perf_counter() - start
    print(
        f"full: {matrix.shape[0]} x {matrix.shape[1]} generated in "
        f"{generate_s:.0f} s, cosine EER "
        f"{100 * cosine_eer(matrix, speakers):.2f}%",
        flush=True,
    )
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "embeddings.pt")
    start = time.perf_counter()
    save_reference_format(keys, matrix, path)
    save_s = time.perf_counter() - start
    del keys, matrix, speakers
    output = os.path.join(folder, "labels.txt")
    start, cpu = time.perf_counter(), _children_cpu_s()
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "recipes", "pseudo_label.py"),
            os.path.join(ROOT, "hparams", "pseudo_label.yaml"),
            f"--embeddings_file={path}",
            f"--output_file={output}",
            f"--seed={seed}",
            f"--n_clusters={round(50000 * fraction)}",
            f"--n_clusters_ahc={round(7500 * fraction)}",
        ],
        check=True,
    )
    with open(output + ".json", encoding="utf-8") as f:
        report = json.load(f)
    report.update(
        generate_s=generate_s,
        save_s=save_s,
        command_s=time.perf_counter() - start,
        command_cpu_s=_children_cpu_s() - cpu,
    )
    return report


def _children_cpu_s():
    """User + system CPU seconds of the finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def full_baseline(seed, dim=512, regime="first_round"):
    """Flat exact K-Means (3 iterations) + graph Ward at full scale.

    Arguments
    ---------
    seed : int
        Seed of the embeddings (same as :func:`full_benchmark`'s) and of
        the clustering.
    dim : int
        Embedding dimension.
    regime : str
        A key of :data:`REGIMES`.

    Returns
    -------
    dict
        ``wall_s``, ``peak_extra_rss_gb`` and :func:`cluster_metrics`.
    """
    _, matrix, speakers = generate_embeddings(
        seed=seed, dim=dim, **REGIMES[regime]
    )
    start = time.perf_counter()
    with PeakRSS() as rss:
        labels = flat3_pipeline(matrix, 50000, 7500, seed)
    return {
        "wall_s": time.perf_counter() - start,
        "peak_extra_rss_gb": rss.peak_gb,
        **cluster_metrics(speakers, labels),
    }


def print_subset_table(fraction, rows):
    """Print the subset rows as a markdown table (ratios vs. the first).

    Arguments
    ---------
    fraction : float
        The subset fraction (for the header).
    rows : list of dict
        From :func:`subset_benchmark`.
    """
    base = rows[0]
    print(
        f"\n| subset {fraction:g} | wall s | x ref | peak extra RSS GB "
        "| NMI | dNMI vs ref | purity | inv. purity | graph components |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['wall_s']:.1f} | "
            f"{row['wall_s'] / base['wall_s']:.2f} | "
            f"{row['peak_extra_rss_gb']:.2f} | {row['nmi']:.4f} | "
            f"{row['nmi'] - base['nmi']:+.4f} | {row['purity']:.4f} | "
            f"{row['inverse_purity']:.4f} | {row['graph_components'] or '-'} |"
        )


def main(argv=None):
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--subset", type=float, default=0.0625, help="0 skips the subset"
    )
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--full_baseline", action="store_true")
    parser.add_argument(
        "--dim", type=int, default=512, help="dimension at full scale"
    )
    parser.add_argument(
        "--full_fraction",
        type=float,
        default=1.0,
        help="scale of --full (below 1 only to check the script)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--regime", choices=sorted(REGIMES), default="first_round"
    )
    parser.add_argument("--folder", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(machine(), flush=True)
    print("load average at the start: %.1f %.1f %.1f" % os.getloadavg())
    if args.subset > 0:
        print_subset_table(
            args.subset,
            subset_benchmark(args.subset, args.seed, args.regime),
        )
    if args.full:
        folder = args.folder or tempfile.mkdtemp(prefix="bench_clustering_")
        report = full_benchmark(
            folder, args.seed, args.dim, args.full_fraction, args.regime
        )
        wall = report["wall_s"]
        print(
            "\n| full scale (ours, first load) | generate | save | load "
            "| K-Means | AHC | total | whole command | its CPU s "
            "| peak RSS GB | NMI | clusters | graph components |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        print(
            f"| {args.regime} {report['utterances']} x {report['dim']} "
            f"| {report['generate_s']:.0f} | {report['save_s']:.0f} "
            f"| {wall['load']:.0f} | {wall['kmeans']:.0f} "
            f"| {wall['ahc']:.0f} | {wall['total']:.0f} "
            f"| {report['command_s']:.0f} | {report['command_cpu_s']:.0f} "
            f"| {report['peak_rss_gb']:.2f} "
            f"| {report['NMI']:.4f} | {report['clusters']} "
            f"| {report['ahc_graph_components']} |"
        )
    if args.full_baseline:
        row = full_baseline(args.seed, args.dim, args.regime)
        print(
            "\n| full scale, flat K-Means 3 it + graph Ward | wall s "
            "| peak extra RSS GB | NMI | purity | inv. purity |"
            + (" ours - baseline NMI |" if args.full else "")
        )
        print("|---|---|---|---|---|---|" + ("---|" if args.full else ""))
        print(
            f"| 1092009 x {args.dim} | {row['wall_s']:.0f} "
            f"| {row['peak_extra_rss_gb']:.2f} | {row['nmi']:.4f} "
            f"| {row['purity']:.4f} | {row['inverse_purity']:.4f} |"
            + (f" {report['NMI'] - row['nmi']:+.4f} |" if args.full else "")
        )

    print("load average at the end: %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
