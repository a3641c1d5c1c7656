"""Ward on a neighbour graph: the merges of scikit-learn's Ward with the
same connectivity."""

import numpy as np
import pytest
import scipy.sparse
from sklearn.cluster import AgglomerativeClustering
from sklearn.neighbors import kneighbors_graph

from speechbrain_ext.verification import graph_ward
from speechbrain_ext.verification.graph_ward import ward_on_graph


def sklearn_ward(points, graph, n_clusters):
    model = AgglomerativeClustering(
        n_clusters, linkage="ward", connectivity=graph, compute_full_tree=False
    )
    return model.fit_predict(points)


def same_partition(a, b):
    """Whether two labelings group the points alike (numbers may differ)."""
    pairs = np.unique(np.stack([a, b]), axis=1).shape[1]
    return pairs == len(np.unique(a)) == len(np.unique(b))


def chain(n_points):
    """Edges ``i -> i + 1``: keeps any graph it is added to connected."""
    return scipy.sparse.diags(np.ones(n_points - 1), 1, shape=(n_points,) * 2)


@pytest.mark.parametrize("seed", range(6))
def test_same_partitions_as_scikit_learn_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    n_points, dim = int(rng.integers(60, 300)), int(rng.integers(1, 24))
    points = rng.normal(size=(n_points, dim)).astype(np.float32)
    points[: n_points // 3] += 2.0
    graph = kneighbors_graph(points, int(rng.integers(2, 9))) + chain(n_points)
    for n_clusters in (1, 2, n_points // 10, n_points // 2, n_points - 1):
        ours = ward_on_graph(points, graph, n_clusters)
        reference = sklearn_ward(points, graph, n_clusters)
        assert len(np.unique(ours)) == n_clusters
        assert same_partition(reference, ours), n_clusters


@pytest.mark.parametrize("n_clusters", [2, 3, 5, 6, 8, 10])
def test_ties_are_broken_like_scikit_learn(n_clusters):
    # Evenly spaced integer points on a line: every pair of neighbouring
    # singletons costs exactly 0.5 in float64, so the first merges are
    # picked among tied edges by node number; with an odd count, pairing
    # from the low end leaves another point alone than from the high end.
    points = np.arange(11, dtype=np.float64)[:, None]
    graph = chain(11)
    ours = ward_on_graph(points, graph, n_clusters)
    reference = sklearn_ward(points, graph, n_clusters)
    assert same_partition(reference, ours)


def test_tied_edges_of_one_point_are_broken_like_scikit_learn():
    # Points 3, 0, 1, 2 at -1, 0, 1, 2 on a line, linked in that order:
    # all three edges cost 0.5. scikit-learn merges (1, 0) first; a point
    # that offered only its other tied edge would hide it.
    points = np.array([[0.0], [1.0], [2.0], [-1.0]])
    graph = scipy.sparse.csr_matrix(
        (np.ones(3), ([0, 1, 0], [1, 2, 3])), shape=(4, 4)
    )
    ours = ward_on_graph(points, graph, 3)
    assert same_partition(sklearn_ward(points, graph, 3), ours)
    assert ours.tolist() == [0, 0, 1, 2]


def test_directions_and_self_loops_are_ignored():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 3))
    graph = kneighbors_graph(points, 3) + chain(40)
    directed = scipy.sparse.triu(graph + graph.T) + scipy.sparse.eye(40)
    assert np.array_equal(
        ward_on_graph(points, directed, 7), ward_on_graph(points, graph, 7)
    )


def test_labels_are_numbered_in_order_of_first_appearance():
    points = np.array([[9.0], [0.0], [9.1], [0.1]])
    graph = np.ones((4, 4))
    assert ward_on_graph(points, graph, 2).tolist() == [0, 1, 0, 1]


def test_too_many_components_is_an_error():
    points = np.array([[0.0], [1.0], [5.0], [6.0]])
    graph = scipy.sparse.csr_matrix(([1.0, 1.0], ([0, 2], [1, 3])), (4, 4))
    assert ward_on_graph(points, graph, 2).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="connected components"):
        ward_on_graph(points, graph, 1)


def test_long_runs_log_their_progress(monkeypatch, caplog):
    monkeypatch.setattr(graph_ward, "PROGRESS_SECONDS", -1.0)
    points = np.arange(5, dtype=np.float64)[:, None]
    with caplog.at_level("INFO", logger=graph_ward.__name__):
        ward_on_graph(points, chain(5), 2)
    assert "Ward: 2 of 3 merges" in caplog.text
