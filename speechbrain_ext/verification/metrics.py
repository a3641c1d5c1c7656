"""Speaker verification metrics: EER, minDCF and the DET curve.

The definitions are SpeechBrain's (``speechbrain.utils.metric_stats.EER`` and
``minDCF``): candidate thresholds are the distinct scores and the midpoints
between neighbours; a target trial with score ``<= t`` is a miss, a
non-target trial with score ``> t`` a false alarm; the EER is
``(P_miss + P_fa) / 2`` at the threshold where they are closest. SpeechBrain's
functions loop over every threshold (EER) or build a ``thresholds x trials``
matrix (minDCF), which is quadratic: fine for a few thousand trials, hours or
hundreds of GB for VoxCeleb1-H's 550 k. The functions here compute the same
numbers from sorted scores in ``O(n log n)`` (the tests check them against
SpeechBrain's on small sets and against scikit-learn's ROC).

minDCF is reported normalised, as in the NIST SRE and VoxCeleb evaluations
and in the published results: ``min_t C_det(t) / min(C_miss P_target,
C_fa (1 - P_target))``; SpeechBrain's ``minDCF`` returns the unnormalised
``min_t C_det(t)``.

Example
-------
>>> scores = [0.9, 0.8, 0.3, 0.4, 0.1, 0.2]
>>> labels = [1, 1, 1, 0, 0, 0]
>>> result = verification_metrics(scores, labels)
>>> round(result["EER"], 2), round(result["minDCF_0.01"], 3)
(33.33, 0.333)
"""

import numpy as np

from speechbrain_ext.utils.io_utils import atomic_path

P_TARGETS = (0.05, 0.01)


class TrialLabelError(ValueError):
    """Raised when a trial list cannot give an EER (e.g. one class only)."""


def split_scores(scores, labels, source="trial list"):
    """Split scores into target and non-target arrays (float64).

    Arguments
    ---------
    scores : array-like
        One score per trial.
    labels : array-like
        ``1`` for a target trial (same speaker), ``0`` otherwise.
    source : str
        Named in error messages (e.g. the trial list's path).

    Returns
    -------
    positive, negative : numpy.ndarray
        Scores of target and of non-target trials.

    Raises
    ------
    TrialLabelError
        If lengths differ, labels are not 0/1, scores are not finite, or one
        class is absent (the EER is then undefined).

    Example
    -------
    >>> split_scores([0.5, 0.1], [1, 0])
    (array([0.5]), array([0.1]))
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise TrialLabelError(
            f"{source}: {scores.size} scores but {labels.size} labels"
        )
    if not np.isin(labels, (0, 1)).all():
        raise TrialLabelError(f"{source}: labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise TrialLabelError(f"{source}: scores contain NaN or infinity")
    positive, negative = scores[labels == 1], scores[labels == 0]
    if positive.size == 0 or negative.size == 0:
        missing = "target (1)" if positive.size == 0 else "non-target (0)"
        raise TrialLabelError(
            f"{source}: no {missing} trials among {labels.size}; EER and "
            "minDCF need both classes"
        )
    return positive, negative


def error_rates(positive, negative):
    """Miss and false-alarm rates at SpeechBrain's candidate thresholds.

    Arguments
    ---------
    positive : numpy.ndarray
        Target scores.
    negative : numpy.ndarray
        Non-target scores.

    Returns
    -------
    thresholds : numpy.ndarray
        Sorted distinct scores and the midpoints between neighbours.
    n_miss, n_fa : numpy.ndarray
        Number of targets ``<= t`` and of non-targets ``> t`` per threshold.

    Example
    -------
    >>> t, n_miss, n_fa = error_rates(np.array([2.0]), np.array([1.0]))
    >>> t.tolist(), n_miss.tolist(), n_fa.tolist()
    ([1.0, 1.5, 2.0], [0, 0, 1], [0, 0, 0])
    """
    unique = np.unique(np.concatenate([positive, negative]))
    thresholds = np.empty(2 * unique.size - 1)
    thresholds[0::2] = unique
    thresholds[1::2] = (unique[:-1] + unique[1:]) / 2
    n_miss = np.searchsorted(np.sort(positive), thresholds, side="right")
    n_fa = negative.size - np.searchsorted(
        np.sort(negative), thresholds, side="right"
    )
    return thresholds, n_miss, n_fa


def eer(positive, negative):
    """Equal error rate (a fraction) and its threshold.

    Arguments
    ---------
    positive : array-like
        Target scores.
    negative : array-like
        Non-target scores.

    Returns
    -------
    eer : float
        ``(P_miss + P_fa) / 2`` where ``|P_miss - P_fa|`` is smallest
        (first such threshold), as ``speechbrain.utils.metric_stats.EER``.
    threshold : float

    Example
    -------
    >>> eer([0.6, 0.7, 0.8, 0.5], [0.4, 0.3, 0.2, 0.1])
    (0.0, 0.4)
    """
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    thresholds, n_miss, n_fa = error_rates(positive, negative)
    # Exact integer comparison of |n_fa / N_neg - n_miss / N_pos|.
    gap = np.abs(n_fa * positive.size - n_miss * negative.size)
    best = int(np.argmin(gap))
    value = (n_miss[best] / positive.size + n_fa[best] / negative.size) / 2
    return float(value), float(thresholds[best])


def min_dcf(positive, negative, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Normalised minimum detection cost and its threshold.

    Arguments
    ---------
    positive : array-like
        Target scores.
    negative : array-like
        Non-target scores.
    p_target : float
        Prior probability of a target trial.
    c_miss : float
        Cost of a miss.
    c_fa : float
        Cost of a false alarm.

    Returns
    -------
    min_dcf : float
        ``min_t C_det(t) / min(c_miss p_target, c_fa (1 - p_target))``.
    threshold : float

    Example
    -------
    >>> min_dcf([0.6, 0.7, 0.8, 0.5], [0.4, 0.3, 0.2, 0.1])
    (0.0, 0.4)
    """
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    thresholds, n_miss, n_fa = error_rates(positive, negative)
    c_det = (
        c_miss * p_target * n_miss / positive.size
        + c_fa * (1 - p_target) * n_fa / negative.size
    )
    best = int(np.argmin(c_det))
    c_default = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_det[best] / c_default), float(thresholds[best])


def verification_metrics(scores, labels, source="trial list"):
    """EER (percent) and normalised minDCF at P_target 0.05 and 0.01.

    Arguments
    ---------
    scores : array-like
        One score per trial, higher meaning more likely the same speaker.
    labels : array-like
        ``1`` target, ``0`` non-target.
    source : str
        Named in error messages.

    Returns
    -------
    dict
        ``EER`` (percent), ``EER_threshold``, ``minDCF_0.05``,
        ``minDCF_0.01`` (normalised, C_miss = C_fa = 1), their thresholds
        (``minDCF_0.05_threshold`` ...), ``n_target``, ``n_nontarget``.

    Example
    -------
    >>> verification_metrics([0.9, 0.1], [1, 0])["EER"]
    0.0
    """
    positive, negative = split_scores(scores, labels, source)
    value, threshold = eer(positive, negative)
    result = {"EER": 100 * value, "EER_threshold": threshold}
    for p_target in P_TARGETS:
        cost, threshold = min_dcf(positive, negative, p_target)
        result[f"minDCF_{p_target}"] = cost
        result[f"minDCF_{p_target}_threshold"] = threshold
    result["n_target"] = int(positive.size)
    result["n_nontarget"] = int(negative.size)
    return result


def det_points(positive, negative):
    """Miss and false-alarm probabilities over all thresholds.

    Arguments
    ---------
    positive : array-like
        Target scores.
    negative : array-like
        Non-target scores.

    Returns
    -------
    p_miss, p_fa : numpy.ndarray
        One point per candidate threshold, ``p_miss`` increasing.

    Example
    -------
    >>> p_miss, p_fa = det_points([0.6, 0.9], [0.1, 0.7])
    >>> p_miss.tolist(), p_fa.tolist()
    ([0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0])
    """
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    _, n_miss, n_fa = error_rates(positive, negative)
    return n_miss / positive.size, n_fa / negative.size


def det_figure(curves, title="DET curve"):
    """DET curves on normal deviate axes, as a matplotlib figure.

    Arguments
    ---------
    curves : dict
        ``name -> (positive_scores, negative_scores)``; the EER is added to
        each legend entry.
    title : str
        The figure title (say which model, stage, trial list and scoring).

    Returns
    -------
    matplotlib.figure.Figure
        Close it with ``matplotlib.pyplot.close`` when done.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> figure = det_figure(
    ...     {"cosine": (rng.normal(1, 1, 50), rng.normal(0, 1, 50))}, "T")
    >>> axes = figure.axes[0]
    >>> axes.get_title(), axes.get_xlabel()
    ('T', 'False alarm probability (%)')
    >>> import matplotlib.pyplot as plt; plt.close(figure)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    ticks = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    clip = (1e-4, 1 - 1e-4)
    figure, axes = plt.subplots(figsize=(5.5, 5.5))
    worst_eer = 0.0
    for name, (positive, negative) in curves.items():
        p_miss, p_fa = det_points(positive, negative)
        value, _ = eer(positive, negative)
        worst_eer = max(worst_eer, value)
        axes.plot(
            norm.ppf(np.clip(p_fa, *clip)),
            norm.ppf(np.clip(p_miss, *clip)),
            label=f"{name}: EER {100 * value:.2f}%",
        )
    if worst_eer > 0.2:  # a weak system's curve runs beyond the usual 40 %
        ticks = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99]
    positions = norm.ppf(ticks)
    labels = [f"{100 * t:g}" for t in ticks]
    axes.set_xticks(positions, labels)
    axes.set_yticks(positions, labels)
    axes.set_xlim(positions[0], positions[-1])
    axes.set_ylim(positions[0], positions[-1])
    axes.set_xlabel("False alarm probability (%)")
    axes.set_ylabel("Miss probability (%)")
    axes.set_title(title, fontsize="medium")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def plot_det(curves, path, title="DET curve"):
    """Draw DET curves (see :func:`det_figure`) to a PNG file, atomically.

    Arguments
    ---------
    curves : dict
        ``name -> (positive_scores, negative_scores)``.
    path : str or os.PathLike
        The output PNG.
    title : str
        The figure title.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "det.png")
    >>> rng = np.random.default_rng(0)
    >>> plot_det({"a": (rng.normal(1, 1, 50), rng.normal(0, 1, 50))}, path)
    >>> os.path.getsize(path) > 0
    True
    """
    import matplotlib.pyplot as plt

    figure = det_figure(curves, title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


#: Cosine scores of a working speaker model spread over tenths (VoxCeleb:
#: non-targets around 0, targets around 0.6); when the 1st-99th percentile
#: range of a trial list's scores is narrower than this, every utterance
#: embeds in almost the same direction.
COLLAPSE_SPREAD = 0.05


def score_spread(scores):
    """Range of scores: extremes and the 1st-99th percentile width.

    Arguments
    ---------
    scores : array-like
        Cosine scores of a trial list.

    Returns
    -------
    dict
        ``min``, ``max``, ``p1``, ``p99`` and ``spread`` (``p99 - p1``).

    Example
    -------
    >>> score_spread(np.linspace(0.0, 1.0, 101))["spread"]
    0.98
    """
    scores = np.asarray(scores, dtype=np.float64)
    p1, p99 = np.percentile(scores, [1, 99])
    return {
        "min": float(scores.min()),
        "max": float(scores.max()),
        "p1": float(p1),
        "p99": float(p99),
        "spread": round(float(p99 - p1), 12),
    }


def collapse_warning(scores, source):
    """A warning when cosine scores are nearly collapsed, else None.

    Arguments
    ---------
    scores : array-like
        Cosine scores of a trial list.
    source : str
        What was scored (named in the message).

    Returns
    -------
    str or None
        One line with the score range, or None when the scores spread
        over at least :data:`COLLAPSE_SPREAD`.

    Example
    -------
    >>> print(collapse_warning(np.linspace(0.996, 0.99997, 100), "dev.txt"))
    ... # doctest: +NORMALIZE_WHITESPACE
    embeddings nearly collapsed: cosine scores on dev.txt lie in
    0.99600-0.99997 (1st-99th percentile 0.99604-0.99993, width 0.00389 <
    0.05): every utterance embeds in almost the same direction, so a fixed
    threshold is fragile
    >>> collapse_warning(np.linspace(-0.2, 0.9, 100), "dev.txt") is None
    True
    """
    spread = score_spread(scores)
    if spread["spread"] >= COLLAPSE_SPREAD:
        return None
    return (
        f"embeddings nearly collapsed: cosine scores on {source} lie in "
        f"{spread['min']:.5f}-{spread['max']:.5f} (1st-99th percentile "
        f"{spread['p1']:.5f}-{spread['p99']:.5f}, width "
        f"{spread['spread']:.5f} < {COLLAPSE_SPREAD}): every utterance "
        "embeds in almost the same direction, so a fixed threshold is "
        "fragile"
    )
