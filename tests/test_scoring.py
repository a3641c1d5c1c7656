"""Trial lists, vectorised scoring against brute-force loops, AS-norm."""

import time

import numpy as np
import pytest
from float32_bounds import gamma

from speechbrain_ext.dataio.lists import TrialListError
from speechbrain_ext.verification.scoring import (
    MissingFilesError,
    Trials,
    as_norm,
    check_files_exist,
    cohort_probes,
    cohort_statistics,
    file_vectors,
    normalise_rows,
    read_trials,
    score_methods,
    score_trials,
    write_scores,
)


def cos(a, b):
    """Cosine in float64, so the reference adds no rounding of its own."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def embeddings():
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(6, 5, 8)).astype(np.float32)
    full = rng.normal(size=(6, 8)).astype(np.float32)
    return crops, full


def test_reference_score_is_mean_of_crop_pairs_and_full(embeddings):
    crops, full = embeddings
    vectors = file_vectors("reference", full, crops)
    enrol, test = np.array([0, 1, 2, 5]), np.array([3, 4, 5, 5])
    scores = score_trials(vectors, enrol, test)
    for score, e, t in zip(scores, enrol, test):
        crop_mean = np.mean(
            [cos(a, b) for a in crops[e] for b in crops[t]], dtype=np.float64
        )
        expected = (crop_mean + cos(full[e], full[t])) / 2
        # float32 path: L2 normalisation of D = 8 values (gamma(D + 2) per
        # component, on each side), the mean of 5 crops (gamma(5), each
        # side), the 1/sqrt(2) scaling (one rounding, each side) and a dot
        # product of 2D = 16 terms (gamma(16)); both sides have norm <= 1,
        # so the sum of |products| is <= 1 and the bounds add up.
        bound = gamma(16) + 2 * (gamma(8 + 2) + gamma(5) + gamma(1))
        assert score == pytest.approx(expected, abs=bound)


def test_cosine_and_chunking(embeddings):
    _, full = embeddings
    vectors = file_vectors("cosine", full)
    enrol = np.arange(6).repeat(6)
    test = np.tile(np.arange(6), 6)
    chunked = score_trials(vectors, enrol, test, chunk_size=7)
    # Normalisation of D = 8 values on each side, then a dot product of D.
    bound = gamma(8) + 2 * gamma(8 + 2)
    for score, e, t in zip(chunked, enrol, test):
        assert score == pytest.approx(cos(full[e], full[t]), abs=bound)


def test_as_norm_matches_brute_force(embeddings):
    crops, full = embeddings
    rng = np.random.default_rng(1)
    cohort = rng.normal(size=(20, 8)).astype(np.float32)
    trials = Trials(np.array([1, 0, 1], "i1"), ["a", "b", "c"], ["d", "e", "f"])
    keys = ["a", "b", "c", "d", "e", "f"]
    scores = score_methods(
        trials,
        keys,
        full,
        crops,
        methods=["reference"],
        cohort=cohort,
        top_k=4,
    )
    for i, (e, t) in enumerate([(0, 3), (1, 4), (2, 5)]):

        def side(f):
            against = [
                (np.mean([cos(c, k) for c in crops[f]]) + cos(full[f], k)) / 2
                for k in cohort
            ]
            best = np.sort(against)[-4:]
            return best.mean(), best.std()

        raw = scores["reference"][i]
        (me, se), (mt, st) = side(e), side(t)
        expected = ((raw - me) / (se + 1e-6) + (raw - mt) / (st + 1e-6)) / 2
        assert scores["reference_asnorm"][i] == pytest.approx(
            expected, rel=1e-4
        )


def test_cohort_statistics_blocks_agree():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(30, 4)).astype(np.float32)
    cohort = normalise_rows(rng.normal(size=(50, 4)))
    whole = cohort_statistics(vectors, cohort, top_k=5)
    blocked = cohort_statistics(vectors, cohort, top_k=5, max_block=60)
    # The blocks change only how the float32 products are grouped (one
    # matrix product vs one row at a time), so each cohort score v . c
    # (D = 4 products, |c| = 1) may differ by 2 gamma(D) |v| between the
    # two; the mean of the top k = 5 adds gamma(k) |v| of rounding on each
    # side, and the standard deviation is 1-Lipschitz in the scores plus
    # gamma(k + 4) |v| of its own rounding (centre, square, mean, sqrt).
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bound = 2 * (gamma(4) + gamma(5 + 4)) * norms
    for statistic_whole, statistic_blocked in zip(whole, blocked):
        difference = np.abs(statistic_whole - statistic_blocked)
        assert np.all(difference <= bound), (difference / norms).max()


def test_reference_cohort_probe():
    rng = np.random.default_rng(3)
    crops = rng.normal(size=(4, 3, 6)).astype(np.float32)
    full = rng.normal(size=(4, 6)).astype(np.float32)
    cohort = normalise_rows(rng.normal(size=(5, 6)))
    vectors = file_vectors("reference", full, crops)
    # A cohort utterance scores like a file whose every embedding is c.
    as_files = file_vectors(
        "reference", cohort, np.repeat(cohort[:, None], 3, 1)
    )
    # Left: one addition and one scaling of the probe (gamma(2)), a dot
    # product of D = 6 (gamma(6)). Right: re-normalising c (gamma(D + 2)),
    # the mean of 3 equal crops (gamma(3)), the 1/sqrt(2) scaling
    # (gamma(1)), a dot product of 2D = 12 (gamma(12)). Every vector has
    # norm <= 1, so the sums of |products| are <= 1.
    bound = gamma(2) + gamma(6) + gamma(8) + gamma(3) + gamma(1) + gamma(12)
    np.testing.assert_allclose(
        cohort_probes("reference", vectors) @ cohort.T,
        vectors @ as_files.T,
        atol=bound,
        rtol=0,
    )


def test_as_norm_standardises_each_side():
    # (0.5 - 0.1) / 0.2 = 2 and (0.5 - 0.3) / 0.1 = 2 -> 2.
    mean, std = np.array([0.1, 0.3]), np.array([0.2, 0.1])
    normed = as_norm(np.array([0.5]), [0], [1], mean, std, eps=0.0)
    assert normed[0] == pytest.approx(2.0)


def test_read_trials_and_errors(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 s/v/a.wav s/v/b.wav\n\n0 s/v/a.wav s/v/c.wav\n")
    trials = read_trials(path)
    assert trials.labels.tolist() == [1, 0]
    order = ["s/v/c.wav", "s/v/b.wav", "s/v/a.wav"]
    assert trials.indices(order)[1].tolist() == [1, 0]
    path.write_text("1 s/v/a.wav s/v/b.wav\n2 s/v/a.wav s/v/c.wav\n")
    with pytest.raises(TrialListError, match=r"trials.txt:2: label"):
        read_trials(path)
    path.write_text("1 s/v/a.wav\n")
    with pytest.raises(TrialListError, match=r"trials.txt:1: expected"):
        read_trials(path)
    path.write_text("\n")
    with pytest.raises(TrialListError, match="no trials"):
        read_trials(path)
    with pytest.raises(FileNotFoundError, match="trial list not found"):
        read_trials(tmp_path / "absent.txt")


def test_missing_files_listed_with_count(tmp_path):
    (tmp_path / "here.wav").write_bytes(b"")
    names = ["here.wav"] + [f"gone{i}.wav" for i in range(12)]
    with pytest.raises(MissingFilesError) as error:
        check_files_exist(names, str(tmp_path), "trials.txt", shown=3)
    message = str(error.value)
    assert message.startswith("trials.txt: 12 of 13 audio file(s) missing")
    assert "gone0.wav, gone1.wav, gone2.wav (+9 more)" in message
    check_files_exist(["here.wav"], str(tmp_path), "trials.txt")


def test_score_file_format(tmp_path):
    trials = Trials(np.array([1, 0], "i1"), ["a", "a"], ["b", "c"])
    write_scores(tmp_path / "s.txt", np.array([0.25, -0.5]), trials)
    assert (tmp_path / "s.txt").read_text().splitlines() == [
        "0.250000 1 a b",
        "-0.500000 0 a c",
    ]


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown scoring method"):
        file_vectors("plda", np.ones((1, 2)))


def test_voxceleb1_h_size_scores_in_seconds():
    rng = np.random.default_rng(0)
    n_files, n_trials = 20_000, 550_000
    vectors = file_vectors(
        "reference",
        rng.normal(size=(n_files, 256)).astype(np.float32),
        rng.normal(size=(n_files, 2, 256)).astype(np.float32),
    )
    enrol = rng.integers(0, n_files, n_trials)
    test = rng.integers(0, n_files, n_trials)
    start = time.perf_counter()
    scores = score_trials(vectors, enrol, test)
    assert time.perf_counter() - start < 20
    assert scores.shape == (n_trials,) and np.isfinite(scores).all()
