"""Trial lists and vectorised verification scoring.

Every scoring method of the recipe is a dot product between one vector per
audio file, so a whole trial list is scored with a gather and a row-wise
product (seconds for VoxCeleb1-H's 550 k trials):

- ``cosine``: the L2-normalised full-utterance embedding ``f``.
- ``reference`` (DESIGN.md §1, the published numbers): the mean of the
  cosine over all ``n x n`` pairs of evenly spaced crops and the cosine of
  the full-utterance embeddings. The mean over crop pairs of ``a_i . b_j`` is
  ``mean_i(a_i) . mean_j(b_j)``, so with ``m`` the mean of the normalised
  crop embeddings the file vector is ``[m, f] / sqrt(2)``.
- AS-norm (adaptive symmetric score normalisation, Matejka et al. 2017) of
  either: each side's score is standardised by the mean and standard
  deviation of its ``top_k`` highest scores against a cohort (embeddings of
  training utterances), and the two are averaged.

Example
-------
>>> crops = np.random.default_rng(0).normal(size=(3, 4, 8)).astype("f4")
>>> full = crops.mean(axis=1)
>>> vectors = file_vectors("reference", full, crops)
>>> scores = score_trials(vectors, [0, 1], [1, 2])
>>> scores.shape
(2,)
"""

import dataclasses
import os

import numpy as np
import torch

from speechbrain_ext.dataio import lists
from speechbrain_ext.utils.io_utils import atomic_open

METHODS = ("reference", "cosine")


class MissingFilesError(FileNotFoundError):
    """Raised when audio files named by a trial or utterance list are absent."""


@dataclasses.dataclass
class Trials:
    """A parsed trial list.

    Arguments
    ---------
    labels : numpy.ndarray
        ``int8 [n]``, 1 for a target trial, 0 otherwise.
    enrol, test : list of str
        Relative audio paths of each trial's two sides.
    path : str
        Where the list was read from (for messages).

    Example
    -------
    >>> trials = Trials(np.array([1, 0], dtype="i1"), ["a", "a"], ["b", "c"])
    >>> trials.files
    ['a', 'b', 'c']
    >>> trials.indices(trials.files)
    (array([0, 0]), array([1, 2]))
    """

    labels: np.ndarray
    enrol: list
    test: list
    path: str = "<trials>"

    @property
    def files(self):
        """Sorted distinct files of the list."""
        return sorted(set(self.enrol) | set(self.test))

    def indices(self, keys):
        """Row indices of each trial's enrol and test files in ``keys``.

        Arguments
        ---------
        keys : list of str
            Must contain every file of the list.

        Returns
        -------
        enrol_index, test_index : numpy.ndarray
        """
        position = {key: i for i, key in enumerate(keys)}
        absent = [f for f in self.files if f not in position]
        if absent:
            raise KeyError(
                f"{self.path}: {len(absent)} file(s) have no embedding, "
                f"first {absent[0]!r}"
            )
        enrol = np.fromiter((position[f] for f in self.enrol), np.int64)
        test = np.fromiter((position[f] for f in self.test), np.int64)
        return enrol, test


def read_trials(path):
    """Read a trial list of ``LABEL ENROL TEST`` lines (veri_test2 format).

    Parsing and its checks are those of
    :func:`speechbrain_ext.dataio.lists.read_trials` (the one trial-list
    parser of the recipe); this returns them as arrays.

    Arguments
    ---------
    path : str or os.PathLike
        The list; ``LABEL`` is 1 (same speaker) or 0; paths are
        ``SPEAKER/VIDEO/UTT`` relative to the wav root.

    Returns
    -------
    Trials

    Raises
    ------
    FileNotFoundError
        If the list does not exist.
    speechbrain_ext.dataio.lists.TrialListError
        One line naming the file and line: wrong column count, bad label or
        path, or no trials.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> lines = "1 a/x/1.wav b/y/2.wav\\n0 a/x/1.wav c/z/3.wav\\n"
    >>> _ = open(path, "w").write(lines)
    >>> trials = read_trials(path)
    >>> trials.labels.tolist(), trials.files
    ([1, 0], ['a/x/1.wav', 'b/y/2.wav', 'c/z/3.wav'])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: trial list not found")
    rows = lists.read_trials(path)
    labels = np.array([label for label, _, _ in rows], dtype=np.int8)
    enrol = [e for _, e, _ in rows]
    test = [t for _, _, t in rows]
    return Trials(labels, enrol, test, path)


def check_files_exist(relpaths, data_folder, source, shown=10):
    """Raise one error listing every missing audio file (first ``shown``).

    Arguments
    ---------
    relpaths : iterable of str
        Paths relative to ``data_folder``.
    data_folder : str
        The wav root.
    source : str
        The list that names the files (for the message).
    shown : int
        How many missing paths to spell out.

    Raises
    ------
    MissingFilesError
        ``SOURCE: N of M audio file(s) missing under ROOT: a, b, ...``.

    Example
    -------
    >>> check_files_exist(["nope.wav"], "/tmp", "trials.txt")
    Traceback (most recent call last):
    ...
    speechbrain_ext.verification.scoring.MissingFilesError: trials.txt: 1 of 1 \
audio \
file(s) missing under /tmp: nope.wav
    """
    relpaths = list(relpaths)
    missing = [
        p for p in relpaths if not os.path.isfile(os.path.join(data_folder, p))
    ]
    if missing:
        listed = ", ".join(missing[:shown])
        more = (
            f" (+{len(missing) - shown} more)" if len(missing) > shown else ""
        )
        raise MissingFilesError(
            f"{source}: {len(missing)} of {len(relpaths)} audio file(s) "
            f"missing under {data_folder}: {listed}{more}"
        )


def normalise_rows(matrix):
    """L2-normalise the last axis (float32 numpy).

    Arguments
    ---------
    matrix : array-like
        ``[..., D]``.

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> normalise_rows([[3.0, 4.0]]).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    matrix = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
    return torch.nn.functional.normalize(matrix, dim=-1, eps=1e-12).numpy()


def file_vectors(method, full, crops=None):
    """One vector per file whose dot products are the method's scores.

    Arguments
    ---------
    method : str
        ``"reference"`` (needs ``crops``) or ``"cosine"``.
    full : array-like
        Full-utterance embeddings ``[N, D]``.
    crops : array-like, optional
        Crop embeddings ``[N, n_crops, D]``.

    Returns
    -------
    numpy.ndarray
        ``[N, 2D]`` for ``reference``, ``[N, D]`` for ``cosine``.

    Example
    -------
    >>> file_vectors("cosine", [[2.0, 0.0]]).tolist()
    [[1.0, 0.0]]
    """
    full = normalise_rows(full)
    if method == "cosine":
        return full
    if method == "reference":
        if crops is None:
            raise ValueError("the reference scoring needs crop embeddings")
        mean_crop = torch.from_numpy(normalise_rows(crops)).mean(dim=1)
        both = torch.cat([mean_crop, torch.from_numpy(full)], dim=1)
        return (both / np.sqrt(2)).numpy()
    raise ValueError(f"unknown scoring method {method!r}, known: {METHODS}")


def cohort_probes(method, vectors):
    """Per-file vectors whose dot product with a cohort embedding is the
    method's score against that cohort utterance.

    A cohort utterance has a single (normalised) embedding ``c``; it scores
    like a file whose crops and full utterance all embed to ``c``: for
    ``reference`` that is ``(m . c + f . c) / 2 = ((m + f) / 2) . c``, so
    cohort scores cost ``D``, not ``2D``, multiply-adds.

    Arguments
    ---------
    method : str
        ``"reference"`` or ``"cosine"``.
    vectors : numpy.ndarray
        File vectors from :func:`file_vectors`.

    Returns
    -------
    numpy.ndarray
        ``[N, D]``.

    Example
    -------
    >>> vectors = file_vectors("reference", [[1.0, 0.0]], [[[0.0, 1.0]]])
    >>> cohort_probes("reference", vectors).tolist()
    [[0.5, 0.5]]
    """
    if method == "reference":
        half = vectors.shape[1] // 2
        return (vectors[:, :half] + vectors[:, half:]) / np.float32(np.sqrt(2))
    return vectors


def score_trials(vectors, enrol_index, test_index, chunk_size=65536):
    """Dot products of the two sides of every trial.

    Arguments
    ---------
    vectors : numpy.ndarray
        ``[N, D]`` file vectors from :func:`file_vectors`.
    enrol_index, test_index : array-like
        Row of each trial's two files.
    chunk_size : int
        Trials per chunk (bounds memory).

    Returns
    -------
    numpy.ndarray
        float32 ``[n_trials]``.

    Example
    -------
    >>> score_trials(np.eye(2, dtype="f4"), [0, 0], [0, 1]).tolist()
    [1.0, 0.0]
    """
    vectors = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    enrol_index = torch.as_tensor(np.asarray(enrol_index), dtype=torch.long)
    test_index = torch.as_tensor(np.asarray(test_index), dtype=torch.long)
    scores = torch.empty(len(enrol_index))
    for start in range(0, len(enrol_index), chunk_size):
        stop = start + chunk_size
        scores[start:stop] = (
            vectors[enrol_index[start:stop]] * vectors[test_index[start:stop]]
        ).sum(dim=1)
    return scores.numpy()


def cohort_statistics(vectors, cohort, top_k=300, max_block=2**26):
    """Mean and std of each file's ``top_k`` highest cohort scores.

    Arguments
    ---------
    vectors : numpy.ndarray
        ``[N, D]`` file vectors.
    cohort : numpy.ndarray
        ``[M, D]`` normalised cohort embeddings (``vectors`` from
        :func:`cohort_probes`).
    top_k : int
        Scores kept per file (all of them if the cohort is smaller).
    max_block : int
        Bound on ``files x cohort`` scores held at once.

    Returns
    -------
    mean, std : numpy.ndarray
        ``[N]`` each.

    Example
    -------
    >>> mean, std = cohort_statistics(np.eye(2, dtype="f4"),
    ...                               np.eye(2, dtype="f4"), top_k=1)
    >>> mean.tolist(), std.tolist()
    ([1.0, 1.0], [0.0, 0.0])
    """
    vectors = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    cohort = torch.from_numpy(np.ascontiguousarray(cohort, np.float32))
    top_k = min(top_k, cohort.shape[0])
    rows = max(1, max_block // max(1, cohort.shape[0]))
    mean = torch.empty(vectors.shape[0])
    std = torch.empty(vectors.shape[0])
    for start in range(0, vectors.shape[0], rows):
        scores = vectors[start : start + rows] @ cohort.T
        best = scores.topk(top_k, dim=1, sorted=False).values
        mean[start : start + rows] = best.mean(dim=1)
        std[start : start + rows] = best.std(dim=1, unbiased=False)
    return mean.numpy(), std.numpy()


def as_norm(scores, enrol_index, test_index, mean, std, eps=1e-6):
    """Adaptive symmetric normalisation of trial scores.

    Arguments
    ---------
    scores : numpy.ndarray
        Raw trial scores.
    enrol_index, test_index : array-like
        File rows of each trial.
    mean, std : numpy.ndarray
        Per-file cohort statistics from :func:`cohort_statistics`.
    eps : float
        Added to the standard deviations.

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> as_norm(np.array([0.5]), [0], [1], np.array([0.1, 0.3]),
    ...         np.array([0.2, 0.1]), eps=0.0).round(6).tolist()
    [2.0]
    """
    enrol_index, test_index = np.asarray(enrol_index), np.asarray(test_index)
    enrol = (scores - mean[enrol_index]) / (std[enrol_index] + eps)
    test = (scores - mean[test_index]) / (std[test_index] + eps)
    return ((enrol + test) / 2).astype(np.float32)


def write_scores(path, scores, trials):
    """Write ``score label enrol test`` lines atomically.

    Arguments
    ---------
    path : str or os.PathLike
        The score file.
    scores : array-like
        One score per trial.
    trials : Trials
        The trial list the scores belong to.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> trials = Trials(np.array([1], dtype="i1"), ["a.wav"], ["b.wav"])
    >>> write_scores(path, [0.5], trials)
    >>> open(path).read()
    '0.500000 1 a.wav b.wav\\n'
    """
    with atomic_open(path) as f:
        f.writelines(
            f"{score:.6f} {label} {enrol} {test}\n"
            for score, label, enrol, test in zip(
                np.asarray(scores, dtype=np.float64),
                trials.labels,
                trials.enrol,
                trials.test,
            )
        )


def score_methods(
    trials, keys, full, crops=None, methods=METHODS, cohort=None, top_k=300
):
    """Scores of a trial list by every method (and AS-norm of each).

    Arguments
    ---------
    trials : Trials
        The trial list.
    keys : list of str
        Row names of ``full`` and ``crops``.
    full : numpy.ndarray
        ``[N, D]`` full-utterance embeddings.
    crops : numpy.ndarray, optional
        ``[N, n_crops, D]`` (needed by ``reference``).
    methods : sequence of str
        Among :data:`METHODS`.
    cohort : numpy.ndarray, optional
        ``[M, D]`` cohort embeddings; adds ``<method>_asnorm`` entries.
    top_k : int
        AS-norm cohort size per file.

    Returns
    -------
    dict
        ``method -> float32 scores [n_trials]``.

    Example
    -------
    >>> trials = Trials(np.array([1, 0], "i1"), ["a", "a"], ["b", "c"])
    >>> full = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]], "f4")
    >>> scores = score_methods(trials, ["a", "b", "c"], full,
    ...                        methods=["cosine"], cohort=full, top_k=2)
    >>> sorted(scores), [round(float(s), 3) for s in scores["cosine"]]
    (['cosine', 'cosine_asnorm'], [0.995, 0.0])
    """
    enrol, test = trials.indices(keys)
    if cohort is not None:
        cohort = normalise_rows(cohort)
    results = {}
    for method in methods:
        vectors = file_vectors(method, full, crops)
        scores = score_trials(vectors, enrol, test)
        results[method] = scores
        if cohort is not None:
            used = np.unique(np.concatenate([enrol, test]))
            mean = np.zeros(len(keys), np.float32)
            std = np.ones(len(keys), np.float32)
            mean[used], std[used] = cohort_statistics(
                cohort_probes(method, vectors[used]), cohort, top_k
            )
            results[f"{method}_asnorm"] = as_norm(
                scores, enrol, test, mean, std
            )
    return results


def method_label(method, n_crops, top_k=None):
    """A method name with what it scores, for plot legends and tables.

    Arguments
    ---------
    method : str
        A name of :data:`METHODS`, possibly with the ``_asnorm`` suffix.
    n_crops : int
        Crops per file (the ``reference`` method).
    top_k : int, optional
        AS-norm cohort size per file.

    Returns
    -------
    str

    Example
    -------
    >>> method_label("reference", 15)
    'reference (15x15 crops + full, cosine)'
    >>> method_label("cosine_asnorm", 15, 300)
    'cosine_asnorm (full utterance, cosine, AS-norm top 300)'
    """
    base, _, normalised = method.partition("_")
    what = {
        "reference": f"{n_crops}x{n_crops} crops + full, cosine",
        "cosine": "full utterance, cosine",
    }[base]
    if normalised:
        what += f", AS-norm top {top_k}"
    return f"{method} ({what})"
