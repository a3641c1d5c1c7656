"""Pseudo-labels by clustering: K-Means, then Ward AHC of the centroids.

The method of the reference: K-Means with many clusters (50,000 for
VoxCeleb2) on the raw embeddings, then agglomerative clustering (Ward) of the
centroids into fewer clusters (7,500); an utterance's label is the AHC label
of its K-Means cluster.

At VoxCeleb2 scale (1.1 M x 512) one exact Lloyd pass costs N*K*D*2 = 5.6e13
flop, minutes on a CPU. :func:`kmeans` therefore has two methods:

* ``"exact"``: Lloyd iterations, every point against every centroid
  (chunked float32 matrix products in torch; on a GPU when present).
* ``"fast"`` (CPU default at scale): initial centroids drawn from a random
  ``sample_fraction`` of the points and ``n_warmup`` Lloyd iterations on
  that sample (drawing them from all points instead leaves centroids
  that no sample point reaches, which end as many extra singleton
  clusters); one pass of all points against all centroids that keeps each
  point's ``n_candidates`` nearest centroids (screened with bfloat16 matrix
  products, a few times faster than float32 on CPUs with bf16 units, float32
  on the others, where torch's bf16 products are very slow; keeping the
  sample's shortlists of the warm-up pass instead, made before the
  centroids moved, lost 0.007 NMI at 1/4 scale); then Lloyd iterations in
  which each point only compares its own candidates (N * n_candidates * D
  per iteration instead of N * K * D). Assignment stays global: no point
  is confined to a coarse cell. Measured on synthetic VoxCeleb2-like
  embeddings, restricting points to their centroid's neighbourhood or to
  approximate (IVF) search, or PCA, lost 0.01-0.1 NMI; this scheme's NMI
  is never more than 0.005 below flat 3-iteration Lloyd's (exact,
  float32) on 1/16 subsets and at full scale. See BENCHMARKS.md.

:func:`ahc_ward` runs Ward on the centroids, constrained to their
k-nearest-neighbour graph at scale (``n_neighbors``), which is an order of
magnitude cheaper in time and memory than full Ward: the merges of
scikit-learn's Ward with ``connectivity`` (the reference's), computed by
:func:`~speechbrain_ext.verification.graph_ward.ward_on_graph`. Like the
reference, Ward runs on the centroids themselves, unweighted by cluster sizes
(it is not Ward on the points).

On a small corpus, :func:`pseudo_label` with ``n_clusters=0`` skips K-Means
and runs Ward on the embeddings themselves: K-Means only makes Ward
affordable at scale, and on a few hundred utterances its random initial
centroids make the labels a draw (see the README's demo section).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> centres = rng.normal(size=(4, 16)) * 10
>>> x = np.repeat(centres, 25, axis=0) + rng.normal(size=(100, 16))
>>> labels = pseudo_label(None, x.astype("float32"), 20, 4, seed=0)
>>> truth = np.repeat(np.arange(4), 25)
>>> round(cluster_metrics(truth, labels)["nmi"], 3)
1.0
"""

import math
import time

import faiss
import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix, pair_confusion_matrix
from speechbrain.utils.logger import get_logger

from speechbrain_ext.verification.graph_ward import ward_on_graph

logger = get_logger(__name__)

# Below this many flop per exact assignment pass, "auto" uses exact Lloyd.
EXACT_FLOP_LIMIT = 2e11


def _resolve_device(device):
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _init_centroids(x, n_clusters, rng):
    """Pick ``n_clusters`` distinct points at random, in index order."""
    index = np.sort(rng.choice(len(x), n_clusters, replace=False))
    return x[index].copy()


def _update_centroids(x, labels, centroids):
    """Move each non-empty cluster's centroid to the mean of its points.

    Returns the cluster sizes. Empty clusters keep their centroid.
    """
    n_clusters = len(centroids)
    counts = np.bincount(labels, minlength=n_clusters)
    member = scipy.sparse.csr_matrix(
        (np.ones(len(x), dtype=np.float32), (labels, np.arange(len(x)))),
        shape=(n_clusters, len(x)),
    )
    sums = np.asarray(member @ x, dtype=np.float32)
    used = counts > 0
    centroids[used] = sums[used] / counts[used, None].astype(np.float32)
    return counts


def fast_bf16_matmul(device):
    """Whether bfloat16 matrix products are fast on ``device``: on a GPU,
    and on a CPU where oneDNN has bf16 kernels (AVX-512 and up). Elsewhere
    (e.g. AVX2-only CPUs) torch falls back to a naive bf16 product,
    ~70x slower than float32.

    Arguments
    ---------
    device : str
        ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    bool

    Example
    -------
    >>> fast_bf16_matmul("cuda")
    True
    """
    if device != "cpu":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def smallest_k(scores, k, block):
    """Column indices of ``k`` smallest values of each row, unsorted.

    Written by hand because ``torch.topk`` over 50,000 columns costs about
    as much as the bf16 product that made the scores on a CPU: the rows
    are cut into blocks of ``block`` columns, and the ``k`` blocks with
    the smallest minima hold a set of ``k`` smallest values (each other
    block's values are at least the largest of those ``k`` minima), so
    ``topk`` runs on ``k * block`` columns only. The result is a valid
    set of ``k`` smallest values, as ``topk``'s (ties may pick other
    columns of equal value).

    Arguments
    ---------
    scores : torch.Tensor
        ``[N, C]`` with ``C`` a multiple of ``block`` (pad with the
        largest value), of any type that ``amin`` and ``topk`` order as
        wanted (e.g. nonnegative bf16 read as int16).
    k : int
        At most ``C // block``.
    block : int
        Columns per block.

    Returns
    -------
    torch.Tensor
        int64 ``[N, k]``.

    Example
    -------
    >>> scores = torch.tensor([[5.0, 1.0, 7.0, 0.0, 9.0, 2.0]])
    >>> sorted(smallest_k(scores, 2, block=2)[0].tolist())
    [1, 3]
    """
    n_rows, n_cols = scores.shape
    blocks = scores.view(n_rows, n_cols // block, block)
    _, best_blocks = blocks.amin(2).topk(k, 1, largest=False)
    inside = blocks.gather(1, best_blocks[:, :, None].expand(-1, -1, block))
    _, where = inside.reshape(n_rows, k * block).topk(k, 1, largest=False)
    return best_blocks.gather(1, where // block) * block + where % block


def _global_candidates(x, centroids, n_candidates, device, chunk_size=4096):
    """The ``n_candidates`` nearest centroids of every point (unordered).

    All centroids are screened with one matrix product per chunk, in
    bfloat16 when ``n_candidates > 1`` and :func:`fast_bf16_matmul` (on
    CPUs with bf16 units a few times faster than float32), else in float32.
    In bfloat16 the products give squared distances (the points carry
    ``[x, 1, |x|^2]``, the centroids ``[-2c, |c|^2, 1]``), which are
    nonnegative up to rounding, so their bit patterns read as int16 order
    like their values, and :func:`smallest_k` compares them as integers
    (CPUs reduce int16 about 3x faster than bf16; the rare negative values
    that rounding gives a point lying on a centroid still come before all
    others, in reverse order among themselves). The product writes into
    one buffer reused by every chunk (a fresh 400 MB result per chunk cost
    a third of the product's time in page faults). The nearest centroid is
    in the shortlist unless bf16 rounding pushes it out; callers get the
    exact nearest with :func:`_assign_candidates`.

    Returns
    -------
    numpy.ndarray
        int64 ``[N, n]``.
    """
    # Distances do not change when points and centroids move together:
    # centring them keeps bf16 from rounding away distances that are small
    # next to a large common mean.
    centre = centroids.mean(0, dtype=np.float64).astype(np.float32)
    cent = torch.from_numpy(centroids - centre).to(device)
    centre = torch.from_numpy(centre).to(device)
    n_candidates = min(n_candidates, len(cent))
    bf16 = n_candidates > 1 and fast_bf16_matmul(str(device))
    dtype = torch.bfloat16 if bf16 else torch.float32
    screen = torch.cat(
        [
            -2.0 * cent,
            (cent * cent).sum(1, keepdim=True),
            torch.ones_like(cent[:, :1]),
        ],
        1,
    )
    block = math.isqrt(len(cent) - 1) + 1
    n_blocks = -(-len(cent) // block)
    if n_blocks < 4 * n_candidates:
        block = None
    else:
        # Padding centroids that score +inf against every point.
        padding = torch.zeros(n_blocks * block - len(cent), screen.shape[1])
        padding[:, -2] = float("inf")
        screen = torch.cat([screen, padding.to(device)])
    screen = screen.to(dtype).T.contiguous()
    scores = torch.empty(
        min(chunk_size, len(x)), screen.shape[1], dtype=dtype, device=device
    )
    candidates = np.empty((len(x), n_candidates), dtype=np.int64)
    for start in range(0, len(x), chunk_size):
        stop = start + chunk_size
        chunk = torch.from_numpy(x[start:stop]).to(device) - centre
        ones = torch.ones(len(chunk), 1, device=device)
        norms = torch.zeros_like(ones)
        if bf16:  # float32 compares |c|^2 - 2 x.c, no need for |x|^2
            norms = (chunk * chunk).sum(1, keepdim=True)
        points = torch.cat([chunk, ones, norms], 1)
        chunk_scores = scores[: len(chunk)]
        torch.matmul(points.to(dtype), screen, out=chunk_scores)
        if bf16:
            chunk_scores = chunk_scores.view(torch.int16)
        if block is None:
            _, shortlist = chunk_scores.topk(n_candidates, 1, largest=False)
        else:
            shortlist = smallest_k(chunk_scores, n_candidates, block)
        candidates[start:stop] = shortlist.cpu().numpy()
    return candidates


def _assign_candidates(x, centroids, candidates, chunk_size=4096):
    """Nearest centroid of each point among its own candidates (exact);
    returns labels and squared distances."""
    cent = torch.from_numpy(centroids)
    cent_sq = (cent * cent).sum(1)
    labels = np.empty(len(x), dtype=np.int64)
    dists = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), chunk_size):
        stop = start + chunk_size
        chunk = torch.from_numpy(x[start:stop])
        shortlist = torch.from_numpy(candidates[start:stop])
        near = cent.index_select(0, shortlist.reshape(-1))
        near = near.view(*shortlist.shape, -1)
        dist = (
            cent_sq[shortlist] - 2 * torch.bmm(near, chunk[:, :, None])[..., 0]
        )
        dist, best = dist.min(1)
        labels[start:stop] = shortlist.gather(1, best[:, None])[:, 0].numpy()
        dists[start:stop] = (dist + (chunk * chunk).sum(1)).clamp_min(0).numpy()
    return labels, dists


def kmeans(
    x,
    n_clusters,
    n_iter=3,
    seed=0,
    method="auto",
    device="auto",
    n_candidates=8,
    sample_fraction=0.5,
    n_warmup=1,
    tol=1e-4,
):
    """K-Means of the rows of ``x`` (see the module docstring for methods).

    Arguments
    ---------
    x : numpy.ndarray
        float32 ``[N, D]``.
    n_clusters : int
        Number of clusters K (at most N).
    n_iter : int
        Maximum number of Lloyd iterations after the first assignment of
        all points.
    seed : int
        Seed of the random initial centroids and subsample.
    method : str
        ``"exact"``, ``"fast"`` or ``"auto"``: exact on a GPU or when one
        exact pass is cheap (< ``EXACT_FLOP_LIMIT`` flop), else fast.
    device : str
        ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``: where
        the all-centroid passes run.
    n_candidates : int
        Fast method: candidate centroids kept per point.
    sample_fraction : float
        Fast method: fraction of the points that the initial centroids and
        the warm-up iterations come from.
    n_warmup : int
        Fast method: Lloyd iterations on the subsample.
    tol : float
        Stop when fewer than this fraction of points change cluster.

    Returns
    -------
    centroids : numpy.ndarray
        float32 ``[K, D]`` (a cluster with no points keeps its last
        centroid).
    labels : numpy.ndarray
        int64 ``[N]``.
    inertia : float
        Sum of squared distances of the points to their centroid.

    Example
    -------
    >>> x = np.array([[0.0], [0.1], [10.0], [10.1]], dtype="float32")
    >>> centroids, labels, inertia = kmeans(x, 2, seed=0)
    >>> labels[0] == labels[1] != labels[2] == labels[3], round(inertia, 3)
    (np.True_, 0.01)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_points, dim = x.shape
    if not 1 <= n_clusters <= n_points:
        raise ValueError(f"n_clusters={n_clusters} must be in [1, {n_points}]")
    device = _resolve_device(device)
    if method == "auto":
        cheap = 2.0 * n_points * n_clusters * dim < EXACT_FLOP_LIMIT
        method = "exact" if device != "cpu" or cheap else "fast"
    if method not in ("exact", "fast"):
        raise ValueError(f"unknown K-Means method {method!r}")
    rng = np.random.default_rng(seed)
    n_sample = n_points
    if method == "fast":
        n_sample = min(
            n_points, max(n_clusters, round(sample_fraction * n_points))
        )
    sample = x
    if n_sample < n_points:
        sample = x[np.sort(rng.choice(n_points, n_sample, replace=False))]
    # Initial centroids come from the warm-up sample, so that each one
    # keeps at least its own point there.
    centroids = _init_centroids(sample, n_clusters, rng)
    logger.info(
        "K-Means (%s, %s): %d points x %d dims -> %d clusters",
        method,
        device,
        n_points,
        dim,
        n_clusters,
    )
    start = time.perf_counter()

    def log(name, dists, changed=None):
        """Log one step: inertia, fraction of points moved, time."""
        logger.info(
            "K-Means %s: inertia %.6g%s (%.1f s)",
            name,
            dists.sum(dtype=np.float64),
            "" if changed is None else f", {100 * changed:.3f}% changed",
            time.perf_counter() - start,
        )

    if method == "fast":
        for warmup in range(1, n_warmup + 1):
            shortlist = _global_candidates(
                sample, centroids, n_candidates, device
            )
            labels, dists = _assign_candidates(sample, centroids, shortlist)
            _update_centroids(sample, labels, centroids)
            log(f"warm-up {warmup} ({n_sample} points)", dists)
        del sample, shortlist
        candidates = _global_candidates(x, centroids, n_candidates, device)
        labels, dists = _assign_candidates(x, centroids, candidates)
    else:
        candidates = _global_candidates(x, centroids, 1, device)
        labels, dists = _assign_candidates(x, centroids, candidates)
    log("iteration 0 (all centroids)", dists)
    for iteration in range(1, n_iter + 1):
        _update_centroids(x, labels, centroids)
        if method == "exact":
            candidates = _global_candidates(x, centroids, 1, device)
        new_labels, dists = _assign_candidates(x, centroids, candidates)
        changed = np.count_nonzero(new_labels != labels) / n_points
        labels = new_labels
        log(f"iteration {iteration}", dists, changed)
        if changed < tol:
            break
    _update_centroids(x, labels, centroids)
    return centroids, labels, _inertia(x, centroids, labels)


def _inertia(x, centroids, labels, chunk_size=65536):
    total = 0.0
    for start in range(0, len(x), chunk_size):
        stop = start + chunk_size
        diff = x[start:stop] - centroids[labels[start:stop]]
        total += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return total


def _ivf_index(points, seed, nprobe):
    """A faiss IVF (flat) index of ``points`` with ~4 sqrt(K) cells."""
    n_points, dim = points.shape
    n_lists = max(1, min(round(4 * math.sqrt(n_points)), n_points // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, n_lists)
    index.cp.seed = seed
    index.train(points)
    index.add(points)
    index.nprobe = min(nprobe, n_lists)
    return index


def _graph(rows, cols, n_points):
    """``[K, K]`` 0/1 csr matrix with ones at ``(rows, cols)``, ``cols``
    of -1 (faiss' "not found") and self-loops left out."""
    keep = (cols >= 0) & (cols != rows)
    graph = scipy.sparse.csr_matrix(
        (np.ones(keep.sum(), dtype=np.float32), (rows[keep], cols[keep])),
        shape=(n_points, n_points),
    )
    graph.data[:] = 1.0
    return graph


def knn_connectivity(points, n_neighbors, seed=0, nprobe=16, index=None):
    """Sparse k-nearest-neighbour graph of ``points`` (faiss IVF search,
    approximate at scale).

    Arguments
    ---------
    points : numpy.ndarray
        float32 ``[K, D]``.
    n_neighbors : int
        Neighbours per point (itself excluded).
    seed : int
        Seed of the IVF coarse cells.
    nprobe : int
        IVF cells visited per search.
    index : faiss.Index or None
        An index of ``points`` to search (built here when ``None``).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``[K, K]`` with ones where a point links to a neighbour.

    Example
    -------
    >>> points = np.array([[0.0], [1.0], [5.0], [6.0]], dtype="float32")
    >>> knn_connectivity(points, 1).toarray().astype(int).tolist()
    [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    n_neighbors = min(n_neighbors, len(points) - 1)
    if index is None:
        index = _ivf_index(points, seed, nprobe)
    _, nbrs = index.search(points, n_neighbors + 1)
    rows = np.repeat(np.arange(len(points)), nbrs.shape[1])
    return _graph(rows, nbrs.ravel(), len(points))


def _nearest_outside(index, points, members, n_bridges):
    """The ``n_bridges`` nearest points of each of ``members`` among the
    points outside ``members`` in ``index`` (-1 where none is found)."""
    inside = faiss.IDSelectorBatch(members)
    outside = faiss.IDSelectorNot(inside)
    if isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=outside, nprobe=index.nprobe)
    else:
        params = faiss.SearchParameters(sel=outside)
    return index.search(points[members], n_bridges, params=params)[1]


def connect_components(
    points, graph, n_bridges=1, seed=0, nprobe=16, index=None
):
    """Link the connected components of a neighbour graph into one.

    Boruvka-style rounds: every point of every component but the largest
    gets an edge to its ``n_bridges`` nearest points outside its component
    (faiss IVF search with the component's points excluded; exact search
    when the cells visited hold no outside point), so that each round at
    least halves the number of components (the edges are undirected: the
    largest one, often a giant component, is reached by the others). Ward
    then merges across components along these bridges at their Ward cost,
    like full Ward, while the graph
    stays sparse: scikit-learn's own completion of a disconnected graph
    adds an edge for every pair of components (quadratic in their number,
    1,268 components of 50,000 centroids took minutes and gigabytes).

    Arguments
    ---------
    points : numpy.ndarray
        float32 ``[K, D]``.
    graph : scipy.sparse.spmatrix
        ``[K, K]`` neighbour graph (directions ignored).
    n_bridges : int
        Outside neighbours per point per round.
    seed : int
        Seed of the IVF coarse cells.
    nprobe : int
        IVF cells visited per search.
    index : faiss.IndexIVF or None
        An IVF index of ``points`` to search (built here when ``None`` and
        the graph has several components).

    Returns
    -------
    graph : scipy.sparse.csr_matrix
        ``[K, K]``, the input graph plus the bridges: one component.
    n_components : int
        The number of components of the input graph.

    Example
    -------
    >>> points = np.array([[0.0], [1.0], [5.0], [6.0]], dtype="float32")
    >>> graph, n_components = connect_components(
    ...     points, knn_connectivity(points, 1)
    ... )
    >>> n_components, connected_components(graph)[0]
    (2, 1)
    >>> graph[2, 1], graph[3, 1]  # {2, 3} to its nearest outside point
    (np.float32(1.0), np.float32(1.0))
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    graph = scipy.sparse.csr_matrix(graph, dtype=np.float32)
    n_components, component = connected_components(graph, directed=False)
    first_count = n_components
    if index is None and n_components > 1:
        index = _ivf_index(points, seed, nprobe)
    flat = None
    while n_components > 1:
        order = np.argsort(component, kind="stable")
        bounds = np.searchsorted(component[order], np.arange(n_components + 1))
        rows, cols = [], []
        largest = np.argmax(np.diff(bounds))
        for start, stop in np.delete(
            np.stack([bounds[:-1], bounds[1:]], 1), largest, 0
        ):
            members = order[start:stop]
            nbrs = _nearest_outside(index, points, members, n_bridges)
            if (nbrs < 0).all():
                # The IVF cells visited hold no outside point: search all.
                if flat is None:
                    flat = faiss.IndexFlatL2(points.shape[1])
                    flat.add(points)
                nbrs = _nearest_outside(flat, points, members, n_bridges)
            rows.append(np.repeat(members, nbrs.shape[1]))
            cols.append(nbrs.ravel())
        graph = graph + _graph(
            np.concatenate(rows), np.concatenate(cols), len(points)
        )
        graph.data[:] = 1.0
        n_components, component = connected_components(graph, directed=False)
        logger.info(
            "neighbour graph: bridged %d components into %d",
            len(bounds) - 1,
            n_components,
        )
    return graph, first_count


def linked_knn_graph(points, n_neighbors, seed=0):
    """The ``n_neighbors``-nearest-neighbour graph of ``points`` with its
    components linked into one (:func:`knn_connectivity`, then
    :func:`connect_components`, both searching one IVF index): the graph
    that :func:`ahc_ward` merges along.

    Arguments
    ---------
    points : numpy.ndarray
        float32 ``[K, D]``.
    n_neighbors : int
        Neighbours per point (itself excluded).
    seed : int
        Seed of the IVF coarse cells.

    Returns
    -------
    graph : scipy.sparse.csr_matrix
        ``[K, K]``, one connected component.
    n_components : int
        The number of components of the neighbour graph before linking.

    Example
    -------
    >>> points = np.array([[0.0], [1.0], [5.0], [6.0]], dtype="float32")
    >>> graph, n_components = linked_knn_graph(points, 1)
    >>> n_components, connected_components(graph)[0]
    (2, 1)
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    index = _ivf_index(points, seed, nprobe=16)
    graph = knn_connectivity(points, n_neighbors, index=index)
    return connect_components(points, graph, index=index)


def ahc_ward(centroids, n_clusters, n_neighbors=10, seed=0, stats=None):
    """Ward agglomerative clustering of centroids into ``n_clusters``.

    Arguments
    ---------
    centroids : numpy.ndarray
        float32 ``[K, D]``.
    n_clusters : int
        Number of clusters wanted (at most K).
    n_neighbors : int or None
        Merge only along a ``n_neighbors``-nearest-neighbour graph of the
        centroids (:func:`ward_on_graph`: scikit-learn's Ward with this
        ``connectivity``), its components linked
        by :func:`linked_knn_graph`; ``None`` or 0 runs full Ward
        (quadratic memory: only for small K).
    seed : int
        Seed of the approximate neighbour search.
    stats : dict or None
        If given and a graph is used, ``graph_components`` is set to the
        number of connected components of the neighbour graph (before
        linking).

    Returns
    -------
    numpy.ndarray
        int64 ``[K]`` labels in ``[0, n_clusters)``.

    Example
    -------
    >>> c = np.array([[0.0], [0.2], [5.0], [5.1], [9.0]], dtype="float32")
    >>> ahc_ward(c, 3, n_neighbors=None).tolist()
    [0, 0, 1, 1, 2]
    """
    if not 1 <= n_clusters <= len(centroids):
        raise ValueError(
            f"n_clusters={n_clusters} must be in [1, {len(centroids)}]"
        )
    if n_clusters == len(centroids):
        return np.arange(len(centroids))
    if not n_neighbors:
        model = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward")
        return model.fit_predict(centroids).astype(np.int64)
    start = time.perf_counter()
    connectivity, n_components = linked_knn_graph(centroids, n_neighbors, seed)
    logger.info(
        "Ward: %d-NN graph of %d centroids, %d connected component(s) (%.1f s)",
        n_neighbors,
        len(centroids),
        n_components,
        time.perf_counter() - start,
    )
    if stats is not None:
        stats["graph_components"] = n_components
    start = time.perf_counter()
    labels = ward_on_graph(centroids, connectivity, n_clusters)
    logger.info(
        "Ward: %d merges (%.1f s)",
        len(centroids) - n_clusters,
        time.perf_counter() - start,
    )
    return labels


def speakers_from_keys(keys):
    """True speakers read off ``spk/video/utt.wav`` keys, else ``None``.

    Arguments
    ---------
    keys : list of str
        Utterance paths.

    Returns
    -------
    list of str or None
        The third-last path component of every key, or ``None`` when some
        key has fewer than three components.

    Example
    -------
    >>> speakers_from_keys(["id1/v/00001.wav", "id2/w/00001.wav"])
    ['id1', 'id2']
    >>> speakers_from_keys(["a.wav"]) is None
    True
    """
    speakers = []
    for key in keys:
        parts = key.split("/")
        if len(parts) < 3:
            return None
        speakers.append(parts[-3])
    return speakers


def cluster_metrics(true_labels, pred_labels):
    """NMI, purity and inverse purity of a clustering.

    Arguments
    ---------
    true_labels : array-like
        Reference classes (e.g. speakers).
    pred_labels : array-like
        Cluster labels.

    Returns
    -------
    dict
        ``nmi`` (arithmetic normalisation), ``purity`` (fraction of points
        in their cluster's majority class), ``inverse_purity`` (fraction of
        points in their class's majority cluster).

    Example
    -------
    >>> m = cluster_metrics(["a", "a", "b", "b"], [0, 0, 0, 1])
    >>> m["purity"], m["inverse_purity"]
    (0.75, 0.75)
    """
    table = contingency_matrix(true_labels, pred_labels, sparse=True).tocsr()
    total = table.sum()
    return {
        "nmi": float(normalized_mutual_info_score(true_labels, pred_labels)),
        "purity": float(table.max(axis=0).sum() / total),
        "inverse_purity": float(table.max(axis=1).sum() / total),
    }


def session_pair_agreement(keys, pred_labels):
    """How often two utterances share a cluster, by how they are related.

    Pseudo-labels that follow the recording sessions (channel, room, noise
    floor: ``spk/video`` in the keys) rather than the speakers put two
    utterances of one session together far more often than two utterances
    of one speaker from different sessions. Counted over all pairs by
    scikit-learn's ``pair_confusion_matrix`` (no pair is enumerated).

    Arguments
    ---------
    keys : list of str
        Utterance paths ``spk/video/utt.wav``.
    pred_labels : array-like
        Cluster label of each key.

    Returns
    -------
    dict or None
        ``same_session``, ``same_speaker_other_session``,
        ``other_speaker``: the fraction of such pairs in one cluster
        (``None`` when there is no such pair); ``None`` when some key has
        fewer than three path components.

    Example
    -------
    >>> keys = ["a/v/1.wav", "a/v/2.wav", "a/w/1.wav", "b/x/1.wav"]
    >>> found = session_pair_agreement(keys, [0, 0, 1, 1])
    >>> found["same_session"], found["same_speaker_other_session"]
    (1.0, 0.0)
    >>> round(found["other_speaker"], 3)  # 1 of the 3 pairs with b
    0.333
    """
    speakers = speakers_from_keys(keys)
    if speakers is None:
        return None
    sessions = ["/".join(key.split("/")[-3:-1]) for key in keys]
    # [i, j]: ordered pairs together (1) or not (0) in the group, then in
    # the clustering.
    session = pair_confusion_matrix(sessions, pred_labels)
    speaker = pair_confusion_matrix(speakers, pred_labels)

    def fraction(shared, total):
        """``shared / total``, or ``None`` when there is no such pair."""
        return int(shared) / int(total) if total else None

    return {
        "same_session": fraction(session[1, 1], session[1].sum()),
        "same_speaker_other_session": fraction(
            speaker[1, 1] - session[1, 1], speaker[1].sum() - session[1].sum()
        ),
        "other_speaker": fraction(speaker[0, 1], speaker[0].sum()),
    }


def pseudo_label(
    keys,
    matrix,
    n_clusters,
    n_clusters_ahc,
    seed=0,
    n_iter=3,
    method="auto",
    device="auto",
    n_candidates=8,
    sample_fraction=0.5,
    n_warmup=1,
    n_neighbors=10,
    stats=None,
):
    """Pseudo-labels: K-Means, then Ward AHC of the centroids.

    With fewer embeddings than ``n_clusters``, K-Means uses one cluster per
    embedding (with a warning); when fewer clusters are used than
    ``n_clusters_ahc`` (empty K-Means clusters are dropped), AHC is skipped
    (with a warning).

    Arguments
    ---------
    keys : list of str or None
        Utterance keys (``spk/video/utt.wav``): used only to log NMI.
    matrix : numpy.ndarray
        float32 ``[N, D]`` embeddings.
    n_clusters : int
        K-Means clusters; 0 skips K-Means: Ward AHC of the embeddings
        themselves (each its own K-Means cluster), deterministic, for
        corpora small enough that Ward's cost does not matter.
    n_clusters_ahc : int
        Final clusters after Ward AHC; 0 skips AHC (not with
        ``n_clusters`` 0).
    seed : int
        Random seed (same seed, same labels).
    n_iter, method, device, n_candidates, sample_fraction, n_warmup
        See :func:`kmeans`.
    n_neighbors : int or None
        See :func:`ahc_ward`.
    stats : dict or None
        If given, filled with ``kmeans_s``, ``ahc_s``, ``inertia``,
        ``n_clusters`` / ``n_clusters_ahc`` (used), ``nonempty_clusters``
        and, when the keys name speakers, ``metrics`` (see
        :func:`cluster_metrics`) and ``session_pairs`` (see
        :func:`session_pair_agreement`).

    Returns
    -------
    numpy.ndarray
        int64 ``[N]`` labels in ``[0, number of clusters)``, numbered by
        first appearance.

    Example
    -------
    >>> x = np.array([[0.0], [0.1], [5.0], [5.1], [9.0]], dtype="float32")
    >>> pseudo_label(None, x, 4, 3).tolist()
    [0, 0, 1, 1, 2]
    """
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if keys is not None and len(keys) != len(matrix):
        raise ValueError(f"{len(keys)} keys but {len(matrix)} embeddings")
    if n_clusters < 0 or n_clusters_ahc < 0:
        raise ValueError(
            f"need n_clusters >= 0 and n_clusters_ahc >= 0, got "
            f"{n_clusters} and {n_clusters_ahc}"
        )
    if n_clusters == 0 and n_clusters_ahc == 0:
        raise ValueError("n_clusters=0 (no K-Means) needs n_clusters_ahc >= 1")
    if n_clusters and n_clusters_ahc > n_clusters:
        raise ValueError(
            f"n_clusters_ahc={n_clusters_ahc} is larger than "
            f"n_clusters={n_clusters}"
        )
    stats = {} if stats is None else stats
    if len(matrix) < n_clusters:
        logger.warning(
            "only %d embeddings for %d K-Means clusters: using %d clusters",
            len(matrix),
            n_clusters,
            len(matrix),
        )
        n_clusters = len(matrix)
    start = time.perf_counter()
    if n_clusters == 0:
        logger.info("no K-Means: Ward of the %d embeddings", len(matrix))
        n_clusters = len(matrix)
        centroids, labels, inertia = matrix, np.arange(n_clusters), 0.0
    else:
        centroids, labels, inertia = kmeans(
            matrix,
            n_clusters,
            n_iter=n_iter,
            seed=seed,
            method=method,
            device=device,
            n_candidates=n_candidates,
            sample_fraction=sample_fraction,
            n_warmup=n_warmup,
        )
    used, labels = np.unique(labels, return_inverse=True)
    stats.update(
        kmeans_s=time.perf_counter() - start,
        inertia=inertia,
        n_clusters=n_clusters,
        nonempty_clusters=len(used),
    )
    start = time.perf_counter()
    if n_clusters_ahc and n_clusters_ahc < len(used):
        labels = ahc_ward(
            centroids[used], n_clusters_ahc, n_neighbors, seed, stats
        )[labels]
    elif n_clusters_ahc > len(used):
        logger.warning(
            "only %d non-empty K-Means clusters for %d AHC clusters: "
            "skipping AHC",
            len(used),
            n_clusters_ahc,
        )
    stats["ahc_s"] = time.perf_counter() - start
    _, first, labels = np.unique(labels, return_index=True, return_inverse=True)
    labels = np.argsort(np.argsort(first))[labels]
    stats["n_clusters_ahc"] = int(labels.max()) + 1
    speakers = speakers_from_keys(keys) if keys is not None else None
    if speakers is not None:
        stats["metrics"] = cluster_metrics(speakers, labels)
        logger.info(
            "against the speakers in the keys: NMI %.4f, purity %.4f, "
            "inverse purity %.4f",
            *stats["metrics"].values(),
        )
        pairs = session_pair_agreement(keys, labels)
        stats["session_pairs"] = pairs
        logger.info(
            "pairs in one cluster: %s of same-session pairs, %s of "
            "same-speaker pairs from other sessions, %s of other-speaker "
            "pairs",
            *(
                "n/a" if value is None else f"{value:.3f}"
                for value in pairs.values()
            ),
        )
    return labels
