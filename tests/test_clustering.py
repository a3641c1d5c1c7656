"""Clustering: known answers, equivalence with scikit-learn, determinism."""

import logging
import warnings

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from speechbrain_ext.verification import clustering
from speechbrain_ext.verification.clustering import (
    ahc_ward,
    cluster_metrics,
    connect_components,
    kmeans,
    knn_connectivity,
    pseudo_label,
    session_pair_agreement,
    speakers_from_keys,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def speakers(n_speakers=12, per_speaker=40, dim=32, spread=0.3, seed=0):
    """Points around random unit speaker centres; returns x and truth."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_speakers), per_speaker)
    noise = rng.normal(size=(len(truth), dim)) * spread / np.sqrt(dim)
    return (centres[truth] + noise).astype(np.float32), truth


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_well_separated_speakers_give_nmi_one(method):
    x, truth = speakers()
    labels = pseudo_label(None, x, 60, 12, seed=0, method=method)
    assert cluster_metrics(truth, labels)["nmi"] > 0.999


def test_exact_kmeans_equals_sklearn_lloyd_from_the_same_start():
    x, _ = speakers(spread=2.0)
    # Our initial centroids: distinct random points, in index order.
    rng = np.random.default_rng(3)
    start = x[np.sort(rng.choice(len(x), 30, replace=False))]
    ref = KMeans(30, init=start, n_init=1, max_iter=300, tol=0).fit(x)
    _, labels, inertia = kmeans(
        x, 30, n_iter=300, seed=3, method="exact", tol=1e-9
    )
    assert adjusted_rand_score(ref.labels_, labels) == 1.0
    assert inertia == pytest.approx(ref.inertia_, rel=1e-4)


def test_fast_kmeans_matches_exact_kmeans():
    x, _ = speakers(n_speakers=20, per_speaker=60, spread=1.0)
    _, exact, exact_inertia = kmeans(x, 80, 10, seed=0, method="exact")
    _, fast, fast_inertia = kmeans(
        x, 80, 10, seed=0, method="fast", sample_fraction=1.0, n_candidates=8
    )
    assert fast_inertia <= exact_inertia * 1.01
    assert normalized_mutual_info_score(exact, fast) > 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smallest_k_over_blocks_is_a_set_of_k_smallest(dtype):
    # Compared with a full sort (float64): the values selected must be the
    # k smallest ones, whatever the columns chosen among ties (bf16 has
    # many); without ties (float32 random data) the columns are the same.
    gen = torch.Generator().manual_seed(0)
    for n_cols, block, k in ((600, 25, 8), (1000, 10, 3), (64, 8, 8)):
        scores = torch.randn(50, n_cols, generator=gen).to(dtype)
        columns = clustering.smallest_k(scores, k, block)
        chosen = scores.gather(1, columns).double().sort(1).values
        expected = scores.double().sort(1).values[:, :k]
        assert torch.equal(chosen, expected)
        assert all(len(set(row)) == k for row in columns.tolist())
        if dtype == torch.float32:
            reference = scores.double().argsort(1)[:, :k].sort(1).values
            assert torch.equal(columns.sort(1).values, reference)


def test_candidates_with_padded_blocks_are_the_nearest(monkeypatch):
    """K = 301 centroids: blocks of 18 and 5 padding centroids that must
    never be picked; float32 screening gives the exact nearest 8."""
    monkeypatch.setattr(clustering, "fast_bf16_matmul", lambda device: False)
    x, _ = speakers(n_speakers=30, per_speaker=40, spread=2.0)
    centroids = x[::4][:301].copy()
    candidates = clustering._global_candidates(x, centroids, 8, "cpu")
    exact = ((x[:, None].astype(float) - centroids[None]) ** 2).sum(2)
    nearest = np.sort(np.argsort(exact, axis=1)[:, :8], axis=1)
    assert np.array_equal(np.sort(candidates, axis=1), nearest)
    labels, dists = clustering._assign_candidates(x, centroids, candidates)
    assert np.array_equal(labels, exact.argmin(1))
    np.testing.assert_allclose(dists, exact.min(1), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_bf16_screening_keeps_the_nearest_within_bf16_rounding(
    monkeypatch, offset
):
    """bf16 screening (forced, so that every CPU runs it): each point's
    shortlist is its 8 nearest centroids up to bf16 rounding, padding
    blocks included (K = 301), also with a common offset 100 times the
    points' spread. Bound on a screened squared distance, for points and
    centroids centred on the centroids' mean: with unit roundoff
    u = 2**-8, rounding the inputs of the 514 products moves them by at
    most u (|x|^2 + |c|^2 + 4 |x| |c|) (2u on each cross product, u on
    each norm) and rounding the result by u d; the float32 sum adds ~1e-7
    relative. A chosen centroid is at most twice that beyond the 8th
    nearest."""
    monkeypatch.setattr(clustering, "fast_bf16_matmul", lambda device: True)
    x, _ = speakers(n_speakers=30, per_speaker=40, spread=2.0)
    x += np.float32(offset)
    centroids = x[::4][:301].copy()
    # A point on a centroid: distance 0 up to rounding, possibly negative.
    assert np.array_equal(x[0], centroids[0])
    candidates = clustering._global_candidates(x, centroids, 8, "cpu")
    x64, c64 = x.astype(float), centroids.astype(float)
    exact = ((x64[:, None] - c64[None]) ** 2).sum(2)
    centre = c64.mean(0)
    x_norm = np.linalg.norm(x64 - centre, axis=1)[:, None]
    c_norm = np.linalg.norm(c64 - centre, axis=1)[None]
    u = 2.0**-8
    bound = u * (x_norm**2 + c_norm**2 + 4 * x_norm * c_norm + exact)
    eighth = np.sort(exact, axis=1)[:, 7:8]
    chosen = np.take_along_axis(exact, candidates, 1)
    chosen_bound = np.take_along_axis(bound, candidates, 1)
    assert (candidates < len(centroids)).all()
    assert all(len(set(row)) == 8 for row in candidates.tolist())
    assert (chosen <= eighth + chosen_bound + bound.max(1, keepdims=True)).all()
    assert 0 in candidates[0]
    # The bound is tight: a few percent of a typical distance.
    assert np.median(bound) < 0.05 * np.median(exact)


def test_fast_kmeans_on_half_sample_converges_like_exact_kmeans():
    x, _ = speakers(n_speakers=20, per_speaker=60, spread=1.0)
    _, exact, exact_inertia = kmeans(x, 80, 10, seed=0, method="exact")
    # Other initial centroids (drawn from the sample), so another local
    # optimum: compare the inertia, and that the shortlists kept from the
    # warm-up still lead to (nearly) every point's nearest centroid.
    centroids, fast, fast_inertia = kmeans(
        x, 80, 10, seed=0, method="fast", sample_fraction=0.5
    )
    assert fast_inertia <= exact_inertia * 1.01
    exact_dist = ((x[:, None].astype(float) - centroids[None]) ** 2).sum(2)
    assert np.mean(exact_dist.argmin(1) == fast) > 0.99


def test_screening_is_float32_where_bf16_products_are_slow(monkeypatch):
    """Without fast bf16 kernels (AVX2 CPUs: torch's fallback bf16 product
    is ~70x slower) the shortlist is screened in float32, so
    it is the exact nearest 8 (float64 here; random data has no ties
    within float32 rounding, bf16's 8-bit mantissa reorders many)."""
    monkeypatch.setattr(clustering, "fast_bf16_matmul", lambda device: False)
    x, _ = speakers(spread=2.0)
    centroids = x[::12].copy()
    candidates = clustering._global_candidates(x, centroids, 8, "cpu")
    exact = ((x[:, None].astype(float) - centroids[None]) ** 2).sum(2)
    nearest = np.sort(np.argsort(exact, axis=1)[:, :8], axis=1)
    assert np.array_equal(np.sort(candidates, axis=1), nearest)


def test_pipeline_equals_sklearn_exact_pipeline_on_tiny_data():
    x, truth = speakers(n_speakers=8, per_speaker=25, spread=0.6)
    ref = KMeans(40, n_init=1, random_state=0).fit(x)
    ward = AgglomerativeClustering(8, linkage="ward")
    reference = ward.fit_predict(ref.cluster_centers_)[ref.labels_]
    ours = pseudo_label(None, x, 40, 8, seed=0, n_neighbors=None)
    assert adjusted_rand_score(reference, ours) == 1.0
    assert adjusted_rand_score(truth, ours) == 1.0


def test_full_ward_equals_sklearn_and_graph_ward_agrees():
    x, _ = speakers(n_speakers=6, per_speaker=10, spread=0.2)
    ours = ahc_ward(x, 6, n_neighbors=None)
    reference = AgglomerativeClustering(6, linkage="ward").fit_predict(x)
    assert np.array_equal(ours, reference)
    assert adjusted_rand_score(ours, ahc_ward(x, 6, n_neighbors=5)) == 1.0


def test_knn_connectivity_links_each_point_to_its_neighbours():
    points = np.array([[0.0], [1.0], [1.5], [10.0], [11.0]], dtype="float32")
    graph = knn_connectivity(points, 1).toarray()
    assert graph.tolist() == [
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 1, 0],
    ]


def islands(n_levels=4, per_island=6, dim=8, seed=0):
    """Tight islands of points, placed hierarchically: island ``g`` sits
    at the sum over levels ``l`` of bit ``l`` of ``g`` times ``3**l``
    along axis ``l``, so that full Ward merges pairs of islands, then
    pairs of pairs, and so on. Returns the points and the island of each.
    """
    rng = np.random.default_rng(seed)
    n_islands = 2**n_levels
    bits = (np.arange(n_islands)[:, None] >> np.arange(n_levels)) & 1
    centres = np.zeros((n_islands, dim))
    centres[:, :n_levels] = bits * 3.0 ** np.arange(n_levels) * 10
    island = np.repeat(np.arange(n_islands), per_island)
    points = centres[island] + rng.normal(size=(len(island), dim)) * 0.1
    return points.astype(np.float32), island


@pytest.mark.parametrize("n_clusters", [2, 4, 7, 16, 30])
def test_ward_on_a_graph_of_many_components_equals_full_ward(n_clusters):
    points, island = islands()
    # Each point's 5 nearest neighbours are the rest of its island: the
    # graph falls apart into the 16 islands.
    graph = knn_connectivity(points, 5)
    assert connected_components(graph, directed=False)[0] == 16
    full = AgglomerativeClustering(n_clusters, linkage="ward")
    with warnings.catch_warnings():
        # scikit-learn's completion of a disconnected graph (an edge per
        # pair of components: quadratic) is what made Ward slow at scale.
        warnings.filterwarnings("error", message=".*connected components")
        ours = ahc_ward(points, n_clusters, n_neighbors=5)
    # The same partition (label numbers may differ).
    assert adjusted_rand_score(ours, full.fit_predict(points)) == 1.0


def test_connect_components_bridges_each_point_to_its_nearest_outsider():
    points, island = islands(n_levels=3, per_island=5)
    graph = knn_connectivity(points, 4)
    n_before, component = connected_components(graph, directed=False)
    assert n_before == 8
    connected, n_components = connect_components(points, graph)
    assert n_components == n_before
    assert connected_components(connected, directed=False)[0] == 1
    # The input edges are kept; the first round adds, for every point
    # outside the largest component (here the first of equal ones), an
    # edge to its nearest point in another component (exact search: the
    # index has one cell at this size); later rounds link the merged ones.
    assert (connected.multiply(graph) != graph).nnz == 0
    distances = ((points[:, None] - points[None]) ** 2).sum(2)
    distances[component[:, None] == component[None]] = np.inf
    bridged = np.flatnonzero(component != 0)
    nearest = distances[bridged].argmin(1)
    assert np.all(connected[bridged, nearest] == 1)
    first_round = len(points) + graph.nnz
    assert graph.nnz < connected.nnz <= first_round + 2 * len(points)


def test_connect_components_searches_all_points_when_cells_hold_none():
    """Two islands of 60 points: with one IVF cell visited, a point's cell
    holds only its own island, so the bridges come from exact search."""
    points, island = islands(n_levels=1, per_island=60)
    graph = knn_connectivity(points, 10)
    assert connected_components(graph, directed=False)[0] == 2
    connected, _ = connect_components(points, graph, nprobe=1)
    assert connected_components(connected, directed=False)[0] == 1
    distances = ((points[:, None] - points[None]) ** 2).sum(2)
    distances[island[:, None] == island[None]] = np.inf
    bridged = np.flatnonzero(island == 1)  # island 0: the largest (first)
    nearest = distances[bridged].argmin(1)
    assert np.all(connected[bridged, nearest] == 1)


def test_connect_components_leaves_a_connected_graph_alone():
    points, _ = speakers(n_speakers=2, per_speaker=10)
    graph = knn_connectivity(points, 15)
    connected, n_components = connect_components(points, graph)
    assert n_components == 1
    assert (connected != graph).nnz == 0


def test_metrics_by_hand():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = [0, 0, 1, 1, 1, 1]
    metrics = cluster_metrics(truth, pred)
    # Cluster 0: 2 a; cluster 1: 2 b of 4. Classes: a 2 of 3, b 2, c 1.
    assert metrics["purity"] == pytest.approx(4 / 6)
    assert metrics["inverse_purity"] == pytest.approx(5 / 6)
    assert metrics["nmi"] == pytest.approx(
        normalized_mutual_info_score(truth, pred)
    )


def test_speakers_from_keys():
    assert speakers_from_keys(["a/id7/v/1.wav", "id8/v/2.wav"]) == [
        "id7",
        "id8",
    ]
    assert speakers_from_keys(["id8/v/2.wav", "flat.wav"]) is None


def test_session_pair_agreement_counts_every_pair():
    rng = np.random.default_rng(0)
    keys = [
        f"root/id{rng.integers(4)}/v{rng.integers(3)}/{i:05d}.wav"
        for i in range(60)
    ]
    labels = rng.integers(0, 5, len(keys))
    shared = {"same": [], "other_session": [], "other_speaker": []}
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            speaker_i, video_i = keys[i].split("/")[1:3]
            speaker_j, video_j = keys[j].split("/")[1:3]
            kind = (
                "other_speaker"
                if speaker_i != speaker_j
                else "same"
                if video_i == video_j
                else "other_session"
            )
            shared[kind].append(labels[i] == labels[j])
    found = session_pair_agreement(keys, labels)
    # Ratios of the same integer counts: equal exactly.
    assert found == {
        "same_session": sum(shared["same"]) / len(shared["same"]),
        "same_speaker_other_session": sum(shared["other_session"])
        / len(shared["other_session"]),
        "other_speaker": sum(shared["other_speaker"])
        / len(shared["other_speaker"]),
    }


def test_session_pair_agreement_without_such_pairs_or_sessions():
    keys = ["a/v/1.wav", "a/w/1.wav", "b/x/1.wav"]
    assert session_pair_agreement(keys, [0, 0, 1]) == {
        "same_session": None,
        "same_speaker_other_session": 1.0,
        "other_speaker": 0.0,
    }
    assert session_pair_agreement(["v/1.wav", "v/2.wav"], [0, 0]) is None


def test_pseudo_label_reports_session_pairs():
    x, truth = speakers(n_speakers=3, per_speaker=4)
    keys = [f"id{s}/v{i % 2}/{i:05d}.wav" for i, s in enumerate(truth)]
    stats = {}
    labels = pseudo_label(keys, x, 6, 3, stats=stats)
    assert stats["session_pairs"] == session_pair_agreement(keys, labels)
    assert stats["session_pairs"]["same_session"] == 1.0


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_same_seed_same_labels(method):
    x, _ = speakers(spread=1.5)
    first = pseudo_label(None, x, 50, 10, seed=5, method=method)
    again = pseudo_label(None, x, 50, 10, seed=5, method=method)
    assert np.array_equal(first, again)


def test_labels_are_compact_and_numbered_by_first_appearance():
    x, _ = speakers(spread=1.5)
    stats = {}
    labels = pseudo_label(None, x, 50, 10, seed=0, stats=stats)
    firsts = np.unique(labels, return_index=True)[1]
    assert np.all(np.diff(firsts) > 0) and labels[0] == 0
    assert labels.max() + 1 == len(np.unique(labels)) == 10
    assert stats["n_clusters_ahc"] == 10 and stats["n_clusters"] == 50


def test_no_kmeans_is_ward_of_the_embeddings_whatever_the_seed():
    x, _ = speakers(n_speakers=8, per_speaker=25, spread=1.5)
    reference = AgglomerativeClustering(8, linkage="ward").fit_predict(x)
    stats = {}
    full = pseudo_label(None, x, 0, 8, n_neighbors=None, stats=stats)
    assert adjusted_rand_score(reference, full) == 1.0
    assert stats["n_clusters"] == len(x) and stats["inertia"] == 0.0
    graph = [pseudo_label(None, x, 0, 8, seed=seed) for seed in (0, 7)]
    assert np.array_equal(graph[0], graph[1])
    assert np.array_equal(graph[0], pseudo_label(None, x, len(x), 8, seed=7))


def test_ahc_zero_keeps_kmeans_clusters():
    x, _ = speakers(spread=1.5)
    assert len(np.unique(pseudo_label(None, x, 50, 0, seed=0))) == 50


def test_fewer_embeddings_than_clusters_reduces_with_warning(caplog):
    x, truth = speakers(n_speakers=3, per_speaker=4)
    with caplog.at_level(logging.WARNING):
        labels = pseudo_label(None, x, 50, 30, seed=0)
    assert "only 12 embeddings for 50 K-Means clusters" in caplog.text
    assert "skipping AHC" in caplog.text
    assert len(labels) == 12 and len(np.unique(labels)) == 12


def test_invalid_cluster_counts():
    x, _ = speakers()
    with pytest.raises(ValueError, match="larger than n_clusters"):
        pseudo_label(None, x, 10, 20)
    with pytest.raises(ValueError, match="n_clusters >= 0"):
        pseudo_label(None, x, -1, 2)
    with pytest.raises(ValueError, match="needs n_clusters_ahc >= 1"):
        pseudo_label(None, x, 0, 0)
    with pytest.raises(ValueError, match="keys"):
        pseudo_label(["a/b/c.wav"], x, 10, 2)
    with pytest.raises(ValueError, match="must be in"):
        kmeans(x, len(x) + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_exact_kmeans_equals_cpu():
    x, _ = speakers(spread=1.5)
    _, cpu, _ = kmeans(x, 40, seed=0, method="exact", device="cpu")
    _, gpu, _ = kmeans(x, 40, seed=0, method="exact", device="cuda")
    assert adjusted_rand_score(cpu, gpu) > 0.99
