"""Ward on the centroids' neighbour graph: ours against scikit-learn's.

Generates VoxCeleb2-like embeddings (a ``--fraction`` of 1,092,009 x 512,
``--regime`` as in ``bench_clustering``), runs the recipe's K-Means
(``--fraction`` of 50,000 clusters), builds the 10-nearest-neighbour graph
of the centroids with its components linked (``linked_knn_graph``), then
times Ward into ``--fraction`` of 7,500 clusters on that same graph with
scikit-learn's ``AgglomerativeClustering(connectivity=...)`` (the
reference's) and with :func:`ward_on_graph`, and checks that both give the
same partition.

To run::

    python -m benchmarks.bench_ward [--fraction 1.0] [--regime first_round]
"""

import argparse
import resource
import time

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from benchmarks.bench_clustering import REGIMES, VOXCELEB2, generate_embeddings
from benchmarks.common import machine
from speechbrain_ext.verification.clustering import kmeans, linked_knn_graph
from speechbrain_ext.verification.graph_ward import ward_on_graph


def same_partition(a, b):
    """Whether two labelings group the points alike."""
    pairs = np.unique(np.stack([a, b]), axis=1).shape[1]
    return pairs == len(np.unique(a)) == len(np.unique(b))


def peak_rss_gb():
    """Peak resident memory of this process so far, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None):
    """Parse ``argv``, run both Ward implementations, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument(
        "--regime", choices=sorted(REGIMES), default="first_round"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_speakers = max(2, round(VOXCELEB2["speakers"] * args.fraction))
    n_points = round(VOXCELEB2["utterances"] * args.fraction)
    n_kmeans = max(2, round(50000 * args.fraction))
    n_ward = max(1, round(7500 * args.fraction))
    print(machine())
    _, x, _ = generate_embeddings(
        n_speakers, n_points, seed=args.seed, **REGIMES[args.regime]
    )
    centroids, labels, _ = kmeans(x, n_kmeans, seed=args.seed)
    centroids = np.ascontiguousarray(centroids[np.unique(labels)])
    graph, n_components = linked_knn_graph(centroids, 10, args.seed)
    rows = []
    start = time.perf_counter()
    reference = AgglomerativeClustering(
        n_ward, linkage="ward", connectivity=graph, compute_full_tree=False
    ).fit_predict(centroids)
    rows.append(("scikit-learn ward_tree", time.perf_counter() - start))
    start = time.perf_counter()
    ours = ward_on_graph(centroids, graph, n_ward)
    rows.append(("ours (ward_on_graph)", time.perf_counter() - start))
    print(
        f"\n{args.regime}: {len(centroids)} centroids of {n_points} x "
        f"{x.shape[1]} -> {n_ward} clusters, {graph.nnz} directed edges, "
        f"{n_components} graph component(s); same partition: "
        f"{same_partition(reference, ours)}; "
        f"process peak RSS {peak_rss_gb():.2f} GB\n"
    )
    print("| Ward | s | x scikit-learn |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
