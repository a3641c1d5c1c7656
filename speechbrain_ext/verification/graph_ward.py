"""Ward agglomerative clustering along the edges of a neighbour graph.

Written by hand because scikit-learn's ``ward_tree`` with a connectivity
matrix (the reference's AHC) pushes a heap entry, a tuple of numpy
scalars, for every edge of every merged cluster, and pops the stale ones
one by one. Noisy first-round centroids (50,000 in a 10-nearest-neighbour
graph) grow clusters that touch hundreds of others: 8 million entries, and
47-135 s single-threaded at full scale depending on the machine.
:func:`ward_on_graph` makes the same merges (the connected pair of least
Ward cost, ties broken by node number as in scikit-learn) with one live
heap entry per cluster, its cheapest edge, and each edge's cost computed
once: 34 s where scikit-learn took 48 s at full scale (on separated
centroids, with few edges, 11 s against 9 s; BENCHMARKS.md)."""

import heapq
import time

import numpy as np
import scipy.sparse
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

# Seconds between progress lines of a long Ward run.
PROGRESS_SECONDS = 30.0


def _ward_costs(means, sizes, first, second):
    """Ward costs ``n_a n_b / (n_a + n_b) |m_a - m_b|^2`` (float64) of the
    pairs ``(first, second)`` of cluster numbers (arrays, or a number)."""
    diff = means[first] - means[second]
    products = sizes[first] * sizes[second]
    return np.einsum("ij,ij->i", diff, diff) * (
        products / (sizes[first] + sizes[second])
    )


def _cheapest(node, others, costs):
    """Heap key ``(cost, high, low)`` of the cheapest of ``node``'s edges
    to ``others``: the cost, then the larger and smaller node numbers
    (scikit-learn's order of ties)."""
    least = costs.min()
    tied = others[costs == least].tolist()
    other = min(tied, key=lambda o: (max(o, node), min(o, node)))
    return float(least), max(other, node), min(other, node)


def ward_on_graph(points, graph, n_clusters):
    """Ward clustering of ``points``, merging only along ``graph``'s edges.

    At each step the two clusters joined by an edge whose merge increases
    the within-cluster sum of squares least, ``n_a n_b / (n_a + n_b) |m_a -
    m_b|^2``, are merged (scikit-learn's ``ward_tree`` with
    ``connectivity``: the same merges, ties broken the same way, costs in
    float64 as there). A merged cluster's edges are the union of its parts'
    edges. The cost of an edge never changes while both ends live, so each
    cluster keeps its edges' costs, and the heap one entry per cluster, its
    cheapest edge; an entry goes stale when either end is merged, and only
    the clusters whose entry went stale look for their new cheapest edge.

    Arguments
    ---------
    points : numpy.ndarray
        ``[N, D]`` points (float64 inside).
    graph : scipy.sparse.spmatrix
        ``[N, N]`` neighbour graph (directions and self-loops ignored); it
        must have at most ``n_clusters`` connected components.
    n_clusters : int
        Number of clusters to stop at, in ``[1, N]``.

    Returns
    -------
    numpy.ndarray
        int64 ``[N]`` labels in ``[0, n_clusters)``, numbered in order of
        first appearance.

    Example
    -------
    >>> points = np.array([[0.0], [1.0], [5.0], [6.5], [20.0]])
    >>> chain = scipy.sparse.diags([1.0] * 4, 1, shape=(5, 5))
    >>> ward_on_graph(points, chain, 3).tolist()
    [0, 0, 1, 1, 2]
    """
    points = np.asarray(points, dtype=np.float64)
    n_points = len(points)
    if not 1 <= n_clusters <= n_points:
        raise ValueError(f"n_clusters={n_clusters} must be in [1, {n_points}]")
    graph = scipy.sparse.csr_matrix(graph)
    graph = (graph + graph.T).tocsr()
    graph.setdiag(0)
    graph.eliminate_zeros()
    n_nodes = 2 * n_points - n_clusters
    means = np.empty((n_nodes, points.shape[1]))
    means[:n_points] = points
    sizes = np.ones(n_nodes)
    active = np.zeros(n_nodes, dtype=bool)
    active[:n_points] = True
    parent = np.arange(n_nodes)
    # The other end of each cluster's heap entry.
    partner = np.full(n_nodes, -1)

    def push_cheapest(node, node_others, node_costs):
        """Put ``node``'s cheapest edge on the heap, note its other end."""
        entry = _cheapest(node, node_others, node_costs)
        partner[node] = entry[1] + entry[2] - node
        heapq.heappush(heap, entry)

    # Every edge's cost, and each point's cheapest edge on the heap.
    edge_from = np.repeat(np.arange(n_points), np.diff(graph.indptr))
    edge_to = graph.indices
    edge_costs = np.empty(graph.nnz)
    for start in range(0, graph.nnz, 16384):
        block = slice(start, start + 16384)
        edge_costs[block] = _ward_costs(
            means, sizes, edge_from[block], edge_to[block]
        )
    edge_high = np.maximum(edge_from, edge_to)
    edge_low = np.minimum(edge_from, edge_to)
    order = np.lexsort((edge_low, edge_high, edge_costs, edge_from))
    linked = np.flatnonzero(np.diff(graph.indptr))
    cheapest = order[graph.indptr[linked]]
    heap = list(
        zip(
            edge_costs[cheapest].tolist(),
            edge_high[cheapest].tolist(),
            edge_low[cheapest].tolist(),
        )
    )
    heapq.heapify(heap)
    partner[linked] = edge_high[cheapest] + edge_low[cheapest] - linked
    # Each cluster's edges (the other end, the cost); edges to merged
    # clusters are dropped when the list is next scanned.
    others = [row.tolist() for row in np.split(edge_to, graph.indptr[1:-1])]
    costs = [row.tolist() for row in np.split(edge_costs, graph.indptr[1:-1])]
    start = last_report = time.perf_counter()
    for new in range(n_points, n_nodes):
        if time.perf_counter() - last_report > PROGRESS_SECONDS:
            last_report = time.perf_counter()
            logger.info(
                "Ward: %d of %d merges (%.0f s)",
                new - n_points,
                n_nodes - n_points,
                last_report - start,
            )
        while True:
            if not heap:
                raise ValueError(
                    f"the graph has more than n_clusters={n_clusters} "
                    "connected components"
                )
            _, high, low = heapq.heappop(heap)
            if active[high] and active[low]:
                break
        active[high] = active[low] = False
        active[new] = True
        parent[high] = parent[low] = new
        sizes[new] = sizes[high] + sizes[low]
        means[new] = (sizes[high] * means[high] + sizes[low] * means[low]) / (
            sizes[new]
        )
        ends = np.array(others[high] + others[low], dtype=np.intp)
        ends = np.unique(ends[active[ends]])
        others[high] = others[low] = costs[high] = costs[low] = None
        new_costs = _ward_costs(means, sizes, ends, new)
        others.append(ends.tolist())
        costs.append(new_costs.tolist())
        for other, cost in zip(others[new], costs[new]):
            others[other].append(new)
            costs[other].append(cost)
        if len(ends):
            push_cheapest(new, ends, new_costs)
        lost = partner[ends]
        for other in ends[(lost == high) | (lost == low)].tolist():
            node_others = np.array(others[other], dtype=np.intp)
            live = active[node_others]
            node_others = node_others[live]
            node_costs = np.array(costs[other])[live]
            others[other] = node_others.tolist()
            costs[other] = node_costs.tolist()
            push_cheapest(other, node_others, node_costs)
    # Parents have larger numbers than children: resolve roots top-down.
    root = parent.copy()
    for node in range(n_nodes - 1, -1, -1):
        root[node] = root[parent[node]]
    _, first, label = np.unique(
        root[:n_points], return_index=True, return_inverse=True
    )
    return np.argsort(np.argsort(first))[label].astype(np.int64)
