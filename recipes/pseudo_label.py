#!/usr/bin/env python3
"""Pseudo-labels: K-Means of the embeddings, then Ward AHC of the centroids.

Reads an embeddings file (``Dict[str, Tensor]``, keys relative to the wav
root; a cache beside it makes later loads fast), clusters it with
:func:`speechbrain_ext.verification.clustering.pseudo_label` and writes one
``LABEL RELPATH`` line per utterance, in the input order, plus a JSON report
``OUTPUT.json`` (counts, cluster-size histogram, wall time per phase, peak
memory, and NMI / purity / inverse purity when the keys are
``spk/video/utt.wav``). Both files are written atomically with one commit
point (the report, holding the labels' SHA-256, is renamed last): a failed
run leaves an existing output untouched, and a killed one never leaves new
labels beside an old report. Keys with whitespace, which the label lines
cannot hold, are refused before any work; so is an unwritable output.

``n_clusters`` 0 skips K-Means: Ward AHC of the embeddings themselves
(small corpora). With fewer embeddings than ``n_clusters``, K-Means uses one
cluster per embedding and AHC is skipped when fewer K-Means clusters are
used than ``n_clusters_ahc`` (both with a warning).

To run::

    python recipes/pseudo_label.py hparams/pseudo_label.yaml \\
        --embeddings_file=E.pt --output_file=PL.txt \\
        [--n_clusters=50000 --n_clusters_ahc=7500]
"""

import speechbrain_ext.preflight  # noqa: F401

import contextlib
import hashlib
import json
import os
import re
import resource
import sys
import time

import numpy as np
from speechbrain.utils.logger import get_logger

from speechbrain_ext.dataio.embeddings_io import (
    EmbeddingsFileError,
    load_embeddings,
)
from speechbrain_ext.utils.io_utils import (
    OutputWriteError,
    UnsafeCheckpointError,
    atomic_open,
    remove_stale_temporaries,
)
from speechbrain_ext.utils.stage_logging import setup_stage_logging
from speechbrain_ext.utils.stage_utils import (
    load_stage_hparams,
    pick_device,
)
from speechbrain_ext.verification.clustering import pseudo_label

logger = get_logger(__name__)

INPUT_ERRORS = (
    EmbeddingsFileError,
    FileNotFoundError,
    OutputWriteError,
    UnsafeCheckpointError,
)
WHITESPACE = re.compile(r"\s")


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


def check_keys(keys, source):
    """Refuse keys that a ``LABEL RELPATH`` line cannot hold.

    Arguments
    ---------
    keys : list of str
        Utterance paths.
    source : str
        The embeddings file (for the message).

    Raises
    ------
    EmbeddingsFileError
        With the count and the first such key.

    Example
    -------
    >>> check_keys(["a/b/1.wav", "a/b c/2.wav"], "e.pt")
    Traceback (most recent call last):
    ...
    speechbrain_ext.dataio.embeddings_io.EmbeddingsFileError: e.pt: 1 keys \
contain \
whitespace, which 'LABEL RELPATH' lines cannot hold (first: 'a/b c/2.wav'); \
rename those files
    """
    bad = [key for key in keys if WHITESPACE.search(key)]
    if bad:
        raise EmbeddingsFileError(
            f"{source}: {len(bad)} keys contain whitespace, which "
            f"'LABEL RELPATH' lines cannot hold (first: {bad[0]!r}); rename "
            "those files"
        )


def write_outputs(path, keys, labels, report):
    """Write the labels and their JSON report with one commit point.

    ``LABEL RELPATH`` lines go to ``path`` and the report (with the labels'
    SHA-256 added) to ``path + ".json"``, both atomically; the old report
    is removed just before the new labels are renamed into place, and the
    new report is renamed last. A run killed anywhere leaves the old pair,
    the new pair, or labels without a report (an interrupted run): never
    new labels beside an old report.

    Arguments
    ---------
    path : str
        The labels file.
    keys : list of str
        Utterance paths.
    labels : numpy.ndarray
        One label per key.
    report : dict
        The JSON report (``labels_sha256`` is added).

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "pl.txt")
    >>> write_outputs(path, ["a/b/1.wav", "a/c/2.wav"], np.array([1, 0]), {})
    >>> open(path).read()
    '1 a/b/1.wav\\n0 a/c/2.wav\\n'
    >>> sorted(json.load(open(path + ".json")))
    ['labels_sha256']
    """
    text = "".join(f"{label} {key}\n" for label, key in zip(labels, keys))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    report_path = path + ".json"
    with atomic_open(report_path) as report_file:
        json.dump(dict(report, labels_sha256=digest), report_file, indent=2)
        with atomic_open(path) as labels_file:
            labels_file.write(text)
            with contextlib.suppress(FileNotFoundError):
                os.remove(report_path)


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
    output_folder = os.path.dirname(os.path.abspath(hparams["output_file"]))
    remove_stale_temporaries(output_folder)
    start = time.perf_counter()
    keys, matrix = load_embeddings(hparams["embeddings_file"])
    check_keys(keys, hparams["embeddings_file"])
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
        "ahc_graph_components": stats.get("graph_components"),
        "NMI": metrics.get("nmi"),
        "purity": metrics.get("purity"),
        "inverse_purity": metrics.get("inverse_purity"),
        "session_pairs": stats.get("session_pairs"),
        "wall_s": {name: round(value, 2) for name, value in timings.items()},
        # ru_maxrss is in KiB on Linux.
        "peak_rss_gb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
        ),
        "device": device,
        "seed": hparams["seed"],
    }
    write_outputs(hparams["output_file"], keys, labels, report)
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
    setup_stage_logging(timestamps=True)
    try:
        run(hparams, pick_device(run_opts.device))
    except INPUT_ERRORS as error:
        sys.exit(str(error))
    except ValueError as error:
        sys.exit(f"{hparams['embeddings_file']}: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
