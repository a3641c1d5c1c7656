"""EER / minDCF against SpeechBrain's functions, scikit-learn's ROC and
score sets whose EER is known exactly."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve
from speechbrain.utils.metric_stats import EER as sb_eer
from speechbrain.utils.metric_stats import minDCF as sb_min_dcf

from speechbrain_ext.verification.metrics import (
    COLLAPSE_SPREAD,
    TrialLabelError,
    collapse_warning,
    det_figure,
    det_points,
    eer,
    min_dcf,
    plot_det,
    verification_metrics,
)


def roc_operating_points(positive, negative):
    """(P_miss, P_fa) at every operating point, from scikit-learn's ROC."""
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    scores = np.r_[positive, negative]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    # Drop the "accept everything" point, which SpeechBrain's threshold set
    # (no threshold below the lowest score) does not contain.
    keep = ~((fpr == 1) & (tpr == 1))
    return 1 - tpr[keep], fpr[keep]


def independent_eer(positive, negative):
    p_miss, p_fa = roc_operating_points(positive, negative)
    gap = np.abs(p_miss - p_fa)
    best = np.flatnonzero(np.isclose(gap, gap.min(), rtol=0, atol=1e-12))
    # SpeechBrain's tie rule: the lowest threshold, i.e. the largest p_fa.
    index = best[np.argmax(p_fa[best])]
    return (p_miss[index] + p_fa[index]) / 2


def independent_min_dcf(positive, negative, p_target):
    p_miss, p_fa = roc_operating_points(positive, negative)
    cost = p_target * p_miss + (1 - p_target) * p_fa
    return cost.min() / min(p_target, 1 - p_target)


def random_sets():
    rng = np.random.default_rng(1234)
    yield rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 700)
    yield rng.normal(2.0, 0.5, 50), rng.normal(0.0, 1.0, 2000)
    # Heavily tied, quantised scores.
    yield (
        np.round(rng.normal(0.5, 1, 400), 1),
        np.round(rng.normal(0, 1, 400), 1),
    )
    yield rng.uniform(0, 1, 17), rng.uniform(0.2, 1.2, 31)


@pytest.mark.parametrize("index", range(4))
def test_matches_sklearn_roc_and_speechbrain(index):
    positive, negative = list(random_sets())[index]
    value, threshold = eer(positive, negative)
    assert value == pytest.approx(independent_eer(positive, negative), 1e-12)
    reference, reference_threshold = sb_eer(
        torch.from_numpy(positive), torch.from_numpy(negative)
    )
    assert value == pytest.approx(reference, abs=1e-7)
    assert threshold == pytest.approx(reference_threshold, abs=1e-12)
    for p_target in (0.05, 0.01):
        cost, _ = min_dcf(positive, negative, p_target)
        expected = independent_min_dcf(positive, negative, p_target)
        assert cost == pytest.approx(expected, abs=1e-12)
        unnormalised, _ = sb_min_dcf(
            torch.from_numpy(positive),
            torch.from_numpy(negative),
            p_target=p_target,
        )
        assert cost * p_target == pytest.approx(unnormalised, abs=1e-7)


@pytest.mark.parametrize(
    "positive, negative, expected",
    [
        # Separable: no error.
        ([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], 0.0),
        # Identical distributions: 50 %.
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], 0.5),
        # Completely inverted: every trial is an error.
        ([0.0, 1.0], [2.0, 3.0], 1.0),
        # Overlap of one target and one non-target out of ten each.
        (np.arange(10.0) + 3, np.arange(10.0) - 5, 0.1),
        # 1 of 4 targets below 2 of 8 non-targets: 25 % on both sides.
        (
            [0.15, 0.6, 0.7, 0.8],
            [0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.9, 0.95],
            0.25,
        ),
    ],
)
def test_crafted_sets_with_known_eer(positive, negative, expected):
    value, _ = eer(positive, negative)
    assert value == expected
    assert independent_eer(np.asarray(positive), np.asarray(negative)) == (
        pytest.approx(expected)
    )


def test_crafted_min_dcf():
    # Rejecting the low target costs 0.01 * 1/4 (normalised: 0.25); any
    # threshold below it accepts at least 1 % of non-targets, 0.99 * 0.01.
    positive = [0.1, 0.8, 0.9, 1.0]
    negative = np.linspace(-1, 0.5, 100)
    cost, threshold = min_dcf(positive, negative, p_target=0.01)
    assert cost == pytest.approx(0.25)
    assert 0.5 <= threshold < 0.8


def test_verification_metrics_keys_and_units():
    result = verification_metrics(
        [0.9, 0.8, 0.3, 0.4, 0.1, 0.2], [1, 1, 1, 0, 0, 0]
    )
    assert result["EER"] == pytest.approx(100 / 3)
    assert {"minDCF_0.05", "minDCF_0.01", "EER_threshold"} <= set(result)
    assert result["n_target"] == 3 and result["n_nontarget"] == 3


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_one_class_is_a_clear_error(labels):
    with pytest.raises(TrialLabelError, match="trials.txt: no .* trials"):
        verification_metrics([0.1, 0.2, 0.3], labels, source="trials.txt")


def test_bad_labels_and_scores():
    with pytest.raises(TrialLabelError, match="labels must be 0 or 1"):
        verification_metrics([0.1, 0.2], [1, 2])
    with pytest.raises(TrialLabelError, match="NaN"):
        verification_metrics([0.1, float("nan")], [1, 0])
    with pytest.raises(TrialLabelError, match="2 scores but 3 labels"):
        verification_metrics([0.1, 0.2], [1, 0, 1])


def test_det_points_monotonic_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(1, 1, 200), rng.normal(0, 1, 300)
    p_miss, p_fa = det_points(positive, negative)
    assert np.all(np.diff(p_miss) >= 0) and np.all(np.diff(p_fa) <= 0)
    path = tmp_path / "det.png"
    plot_det({"a": (positive, negative), "b": (positive + 1, negative)}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]


def test_det_figure_names_its_axes_curves_and_title():
    import matplotlib.pyplot as plt

    positive = np.array([0.9, 0.8, 0.3])
    negative = np.array([0.4, 0.1, 0.2])
    figure = det_figure(
        {"cosine (full-utterance cosine)": (positive, negative)},
        "round1: WavLM + MHFA\ntrials.txt: 6 trials",
    )
    axes = figure.axes[0]
    assert axes.get_title() == "round1: WavLM + MHFA\ntrials.txt: 6 trials"
    assert axes.get_xlabel() == "False alarm probability (%)"
    assert axes.get_ylabel() == "Miss probability (%)"
    # One target (0.3) of three below the best threshold, no false alarm
    # above it, or the reverse: EER 1/3.
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["cosine (full-utterance cosine): EER 33.33%"]
    plt.close(figure)


def test_collapse_warning_gives_the_score_range():
    # The demo's exported model: every score in 0.996-0.99997.
    scores = np.linspace(0.996, 0.99997, 200)
    warning = collapse_warning(scores, "dev_trials.txt")
    p1, p99 = np.percentile(scores, [1, 99])
    assert warning.startswith("embeddings nearly collapsed")
    assert "dev_trials.txt" in warning
    assert "0.99600-0.99997" in warning
    assert f"{p1:.5f}-{p99:.5f}" in warning
    assert f"width {p99 - p1:.5f} < {COLLAPSE_SPREAD}" in warning
    # A working model's scores (non-targets near 0, targets near 0.6).
    rng = np.random.default_rng(0)
    healthy = np.concatenate(
        [rng.normal(0, 0.1, 100), rng.normal(0.6, 0.1, 100)]
    )
    assert collapse_warning(healthy, "trials.txt") is None


def test_scales_to_voxceleb1_h():
    rng = np.random.default_rng(0)
    positive = rng.normal(1, 1, 275_000)
    negative = rng.normal(-1, 1, 275_000)
    value, threshold = eer(positive, negative)
    # Two unit-variance Gaussians 2 apart: EER = Phi(-1) = 15.87 %.
    assert value == pytest.approx(0.1587, abs=0.003)
    assert threshold == pytest.approx(0.0, abs=0.02)
