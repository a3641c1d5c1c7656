#!/usr/bin/env python3
"""Pseudo-labels: K-Means of the embeddings, then Ward AHC of the centroids.

Reads an embeddings file (``Dict[str, Tensor]``, keys relative to the wav
root; a cache beside it makes later loads fast), clusters it with
:func:`speechbrain_ext.clustering.pseudo_label` and writes one
``LABEL RELPATH`` line per utterance, in the input order, plus a JSON report
``OUTPUT.json`` (counts, cluster-size histogram, wall time per phase, peak
memory, and NMI / purity / inverse purity when the keys are
``spk/video/utt.wav``). Both files are written atomically: a failed run
leaves an existing output untouched.

With fewer embeddings than ``n_clusters``, K-Means uses one cluster per
embedding and AHC is skipped when fewer K-Means clusters are used than
``n_clusters_ahc`` (both with a warning).

To run::

    python recipes/pseudo_label.py hparams/pseudo_label.yaml \\
        --embeddings_file=E.pt --output_file=PL.txt \\
        [--n_clusters=50000 --n_clusters_ahc=7500]
"""

import speechbrain_ext.preflight  # noqa: F401

import json
import logging
import os
import resource
import sys
import time

import numpy as np

from speechbrain_ext.clustering import pseudo_label
from speechbrain_ext.embeddings_io import (
    EmbeddingsFileError,
    load_embeddings,
)
from speechbrain_ext.io_utils import (
    UnsafeCheckpointError,
    atomic_open,
)
from speechbrain_ext.stage_utils import (
    load_stage_hparams,
    pick_device,
)

logger = logging.getLogger(__name__)

INPUT_ERRORS = (EmbeddingsFileError, FileNotFoundError, UnsafeCheckpointError)


def size_histogram(labels):
    """Histogram of cluster sizes in power-of-two bins.

    Arguments
    ---------
    labels : numpy.ndarray
        Cluster label of every utterance.

    Returns
    -------
    dict
        ``"1"``, ``"2-3"``, ``"4-7"``, ... -> number of clusters of that
        size (bins with no cluster left out).

    Example
    -------
    >>> size_histogram(np.array([0, 0, 1, 2, 2, 2, 2]))
    {'1': 1, '2-3': 1, '4-7': 1}
    """
    sizes = np.bincount(labels)
    sizes = sizes[sizes > 0]
    bins = np.floor(np.log2(sizes)).astype(int)
    histogram = {}
    for low_exp, count in zip(*np.unique(bins, return_counts=True)):
        low, high = 2**low_exp, 2 ** (low_exp + 1) - 1
        histogram[str(low) if low == high else f"{low}-{high}"] = int(count)
    return histogram


def write_labels(path, keys, labels):
    """Write ``LABEL RELPATH`` lines atomically.

    Arguments
    ---------
    path : str
        The output file.
    keys : list of str
        Utterance paths.
    labels : numpy.ndarray
        One label per key.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "pl.txt")
    >>> write_labels(path, ["a/b/1.wav", "a/c/2.wav"], np.array([1, 0]))
    >>> open(path).read()
    '1 a/b/1.wav\\n0 a/c/2.wav\\n'
    """
    with atomic_open(path) as f:
        f.write("".join(f"{label} {key}\n" for label, key in zip(labels, keys)))


def run(hparams, device="cpu"):
    """Load, cluster, write the labels and the JSON report.

    Arguments
    ---------
    hparams : dict
        The loaded hparams (see ``hparams/pseudo_label.yaml``).
    device : str
        Where the exact K-Means passes run (``cuda`` makes K-Means exact).

    Returns
    -------
    dict
        The report written to ``OUTPUT.json``.
    """
    start = time.perf_counter()
    keys, matrix = load_embeddings(hparams["embeddings_file"])
    timings = {"load": time.perf_counter() - start}
    logger.info(
        "loaded %d embeddings of dimension %d (%.1f s)",
        *matrix.shape,
        timings["load"],
    )
    stats = {}
    labels = pseudo_label(
        keys,
        matrix,
        hparams["n_clusters"],
        hparams["n_clusters_ahc"],
        seed=hparams["seed"],
        n_iter=hparams["kmeans_iterations"],
        method=hparams["kmeans_method"],
        device=device,
        n_candidates=hparams["kmeans_candidates"],
        sample_fraction=hparams["kmeans_sample_fraction"],
        n_warmup=hparams["kmeans_warmup"],
        n_neighbors=hparams["ahc_neighbors"],
        stats=stats,
    )
    timings["kmeans"], timings["ahc"] = stats["kmeans_s"], stats["ahc_s"]
    start = time.perf_counter()
    write_labels(hparams["output_file"], keys, labels)
    timings["write"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())
    metrics = stats.get("metrics", {})
    report = {
        "embeddings_file": os.path.abspath(hparams["embeddings_file"]),
        "utterances": len(keys),
        "dim": int(matrix.shape[1]),
        "n_clusters_requested": hparams["n_clusters"],
        "n_clusters_ahc_requested": hparams["n_clusters_ahc"],
        "kmeans_clusters": stats["n_clusters"],
        "kmeans_nonempty_clusters": stats["nonempty_clusters"],
        "clusters": stats["n_clusters_ahc"],
        "cluster_size_histogram": size_histogram(labels),
        "kmeans_inertia": stats["inertia"],
        "NMI": metrics.get("nmi"),
        "purity": metrics.get("purity"),
        "inverse_purity": metrics.get("inverse_purity"),
        "wall_s": {name: round(value, 2) for name, value in timings.items()},
        # ru_maxrss is in KiB on Linux.
        "peak_rss_gb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
        ),
        "device": device,
        "seed": hparams["seed"],
    }
    with atomic_open(hparams["output_file"] + ".json") as f:
        json.dump(report, f, indent=2)
    logger.info(
        "wrote %s: %d utterances, %d clusters, NMI %s (%.1f s)",
        hparams["output_file"],
        len(keys),
        report["clusters"],
        "n/a" if report["NMI"] is None else f"{report['NMI']:.4f}",
        timings["total"],
    )
    return report


def main(argv):
    """Run the stage from the command line (see the module docstring)."""
    _, run_opts, _, hparams = load_stage_hparams(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        run(hparams, pick_device(run_opts.device))
    except INPUT_ERRORS as error:
        sys.exit(str(error))
    except ValueError as error:
        sys.exit(f"{hparams['embeddings_file']}: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
