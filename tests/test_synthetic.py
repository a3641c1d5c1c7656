"""The built-in synthetic corpus: layout, determinism, skip/regenerate, task."""

import filecmp
import json
import os
import re

import numpy as np
import pytest
import soundfile

from data_prep import synthetic
from data_prep.baseline import baseline_eer
from data_prep.synthetic import (
    IN_PROGRESS,
    MARKER,
    generate_corpus,
    make_trials,
    session_channel,
    speaker_voice,
    synthesise_speech,
)

MICRO = dict(
    n_train_speakers=2,
    n_test_speakers=2,
    n_videos=2,
    n_utterances=1,
    min_duration=0.5,
    max_duration=1.0,
    n_trials=2,
    n_dev_speakers=2,
    n_dev_trials=2,
    n_musan=1,
    musan_duration=0.5,
    n_rir_rooms=1,
    n_rirs=1,
)
UTTERANCE = re.compile(r"^id[012]\d{4}/[A-Za-z0-9_-]{11}/\d{5}\.wav$")


def wav_files(folder):
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
    )


def test_layout_formats_and_durations(tiny_corpus):
    wavs = wav_files(tiny_corpus["data_folder"])
    assert all(UTTERANCE.match(path) for path in wavs), wavs[:3]
    speakers = {path.split("/")[0] for path in wavs}
    train = {s for s in speakers if s.startswith("id0")}
    test = {s for s in speakers if s.startswith("id1")}
    dev = {s for s in speakers if s.startswith("id2")}
    assert (len(train), len(test), len(dev)) == (8, 6, 3)
    assert len(wavs) == (8 + 6 + 3) * 2 * 3
    videos = {path.rsplit("/", 1)[0] for path in wavs}
    assert len(videos) == (8 + 6 + 3) * 2
    for path in wavs:
        info = soundfile.info(os.path.join(tiny_corpus["data_folder"], path))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert 2.0 - 0.01 <= info.duration <= 4.0 + 0.01

    with open(tiny_corpus["train_list"]) as f:
        rows = [line.split() for line in f]
    assert all(
        len(row) == 2 and row[1].startswith(row[0] + "/") for row in rows
    )
    assert sorted(row[1] for row in rows) == [
        w for w in wavs if w.startswith("id0")
    ]

    with open(tiny_corpus["trials"]) as f:
        trials = [line.split() for line in f]
    assert len(trials) == 40
    labels = [int(label) for label, _, _ in trials]
    assert sum(labels) == 20
    for label, enrol, test_file in trials:
        assert enrol.startswith("id1") and test_file.startswith("id1")
        assert enrol in wavs and test_file in wavs
        same = enrol.split("/")[0] == test_file.split("/")[0]
        assert same == (label == "1")

    # The development trials: other speakers than train and test ones.
    with open(tiny_corpus["dev_trials"]) as f:
        dev_trials = [line.split() for line in f]
    assert len(dev_trials) == 20
    assert sum(int(label) for label, _, _ in dev_trials) == 10
    for label, enrol, test_file in dev_trials:
        assert enrol in wavs and test_file in wavs
        assert enrol.split("/")[0] in dev and test_file.split("/")[0] in dev
        same = enrol.split("/")[0] == test_file.split("/")[0]
        assert same == (label == "1")
        if same:
            assert enrol.split("/")[1] != test_file.split("/")[1]


def test_augmentation_trees(tiny_corpus):
    musan = wav_files(tiny_corpus["noise_folder"])
    for category in ("music", "speech", "noise"):
        found = [p for p in musan if p.split("/")[0] == category]
        assert len(found) == 2 and all(p.count("/") == 2 for p in found)
    rirs = wav_files(tiny_corpus["rir_folder"])
    assert len(rirs) == 3 * 1 * 2 and all(p.count("/") == 2 for p in rirs)
    for path in musan + rirs:
        folder = (
            tiny_corpus["noise_folder"]
            if path in musan
            else tiny_corpus["rir_folder"]
        )
        audio, rate = soundfile.read(os.path.join(folder, path))
        assert rate == 16000 and audio.ndim == 1 and np.abs(audio).max() > 0


def test_deterministic_from_the_seed(tmp_path):
    first = generate_corpus(str(tmp_path / "a"), seed=3, n_jobs=1, **MICRO)
    second = generate_corpus(str(tmp_path / "b"), seed=3, n_jobs=2, **MICRO)
    other = generate_corpus(str(tmp_path / "c"), seed=4, n_jobs=1, **MICRO)
    for key in ("data_folder", "noise_folder", "rir_folder"):
        files = wav_files(first[key])
        assert files == wav_files(second[key])
        match, mismatch, errors = filecmp.cmpfiles(
            first[key], second[key], files, shallow=False
        )
        assert (mismatch, errors) == ([], [])
    for key in ("train_list", "trials", "dev_trials"):
        assert filecmp.cmp(first[key], second[key], shallow=False)
    assert wav_files(first["data_folder"]) != wav_files(other["data_folder"])


def test_skips_when_complete_and_regenerates_otherwise(tmp_path):
    folder = str(tmp_path / "corpus")
    out = generate_corpus(folder, n_jobs=1, **MICRO)
    marker = os.path.join(folder, MARKER)
    with open(marker) as f:
        assert json.load(f)["settings"]["n_train_speakers"] == 2
    before = os.stat(out["train_list"]).st_mtime_ns
    generate_corpus(folder, n_jobs=1, **MICRO)
    assert os.stat(out["train_list"]).st_mtime_ns == before

    generate_corpus(folder, n_jobs=1, **{**MICRO, "n_train_speakers": 1})
    speakers = os.listdir(out["data_folder"])
    assert sorted(s for s in speakers if s.startswith("id0")) == ["id00000"]

    # A killed run leaves its in-progress sentinel and no marker: everything
    # is written again, and a stray file of the killed run does not survive.
    os.remove(marker)
    open(os.path.join(folder, IN_PROGRESS), "w").close()
    stray = os.path.join(out["data_folder"], "id09999")
    os.makedirs(stray)
    generate_corpus(folder, n_jobs=1, **MICRO)
    assert os.path.isfile(marker) and not os.path.exists(stray)
    assert not os.path.exists(os.path.join(folder, IN_PROGRESS))


def test_killed_generation_is_not_taken_as_complete(tmp_path, monkeypatch):
    folder = str(tmp_path / "corpus")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "make_trials", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(folder, n_jobs=1, **MICRO)
    assert not os.path.exists(os.path.join(folder, MARKER))
    assert os.path.exists(os.path.join(folder, IN_PROGRESS))
    monkeypatch.undo()
    out = generate_corpus(folder, n_jobs=1, **MICRO)
    assert len(open(out["trials"]).readlines()) == 2


def test_data_not_written_by_the_generator_is_never_removed(tmp_path):
    folder = tmp_path / "corpus"
    own = folder / "wav" / "id00000" / "video" / "00001.wav"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"someone's data")
    with pytest.raises(FileExistsError, match="not written by"):
        generate_corpus(str(folder), n_jobs=1, **MICRO)
    assert own.read_bytes() == b"someone's data"


def test_unknown_size_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="n_speakers"):
        generate_corpus(str(tmp_path), n_speakers=3)


def test_unknown_or_negative_variability_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="channel_sprad"):
        generate_corpus(str(tmp_path), variability={"channel_sprad": 0.5})
    with pytest.raises(ValueError, match=">= 0"):
        generate_corpus(str(tmp_path), variability={"speaker_spread": -1.0})


def test_speaker_spread_scales_between_speaker_deviations():
    # Same generator state: every normal draw is mean + sd * z with the same
    # z, so the deviations from the population means scale by the spread
    # (float64 rounding of mean + sd * z: 1e-12 relative is ample).
    for seed in range(10):
        base = speaker_voice(np.random.default_rng(seed))
        wide = speaker_voice(np.random.default_rng(seed), spread=2.5)
        female = np.random.default_rng(seed).random() < 0.5  # first draw
        mean = np.log(210.0 if female else 115.0)
        np.testing.assert_allclose(
            np.log(wide["f0"]) - mean,
            2.5 * (np.log(base["f0"]) - mean),
            rtol=1e-12,
        )
        np.testing.assert_allclose(wide["effort"], 2.5 * base["effort"])
        assert wide["rate"] == base["rate"]


def test_channel_spread_zero_is_a_clean_flat_channel():
    for seed in range(10):
        clean = session_channel(np.random.default_rng(seed), spread=0.0)
        # No colouring, no tilt, no telephone band: only the 50 Hz
        # high-pass and the 7.9 kHz band edge shape the response.
        band = 1.0 / (1.0 + (50.0 / np.maximum(synthetic.FREQS, 1.0)) ** 4)
        band /= 1.0 + (synthetic.FREQS / 7900.0) ** 12
        np.testing.assert_allclose(clean["response"], band, rtol=1e-12)
        assert clean["snr"] == 30.0
        default = session_channel(np.random.default_rng(seed))
        assert 8.0 <= default["snr"] <= 30.0


def test_min_snr_raises_only_the_snr():
    for seed in range(10):
        default = session_channel(np.random.default_rng(seed))
        quiet = session_channel(np.random.default_rng(seed), min_snr=20.0)
        assert quiet["snr"] == max(default["snr"], 20.0)
        for key in ("response", "noise_colour", "level"):
            np.testing.assert_array_equal(quiet[key], default[key])
    assert session_channel(np.random.default_rng(0), min_snr=60.0)["snr"] == 60


def test_variability_is_recorded_and_default_corpus_unchanged(tmp_path):
    plain = generate_corpus(str(tmp_path / "a"), seed=3, n_jobs=1, **MICRO)
    same = generate_corpus(
        str(tmp_path / "b"),
        seed=3,
        n_jobs=1,
        variability={"speaker_spread": 1.0, "channel_spread": 1.0},
        **MICRO,
    )
    other = generate_corpus(
        str(tmp_path / "c"),
        seed=3,
        n_jobs=1,
        variability={"channel_spread": 0.5},
        **MICRO,
    )
    wavs = wav_files(plain["data_folder"])
    assert wavs == wav_files(other["data_folder"])
    _, mismatch, _ = filecmp.cmpfiles(
        plain["data_folder"], same["data_folder"], wavs, shallow=False
    )
    assert mismatch == []
    _, mismatch, _ = filecmp.cmpfiles(
        plain["data_folder"], other["data_folder"], wavs, shallow=False
    )
    assert len(mismatch) == len(wavs)
    with open(tmp_path / "a" / MARKER, encoding="utf-8") as f:
        assert "variability" not in json.load(f)["settings"]
    with open(tmp_path / "c" / MARKER, encoding="utf-8") as f:
        assert json.load(f)["settings"]["variability"] == {
            "speaker_spread": 1.0,
            "channel_spread": 0.5,
            "accent": 0.0,
            "min_snr": 0.0,
        }


def test_accent_gives_each_speaker_their_own_phone_use():
    for seed in range(5):
        plain = speaker_voice(np.random.default_rng(seed))
        accented = speaker_voice(np.random.default_rng(seed), accent=1.0)
        assert "vowel_use" not in plain
        # Drawn last: the rest of the voice is the same.
        for key, value in plain.items():
            np.testing.assert_array_equal(accented[key], value)
        assert accented["vowel_use"].shape == (len(synthetic.VOWELS),)
        assert accented["vowel_use"].sum() == pytest.approx(1.0)
        assert accented["fricative_use"].sum() == pytest.approx(1.0)
    # Only vowel 3 and fricative 1: every draw is that phone; without a
    # phone use, the draws cover all of them.
    voice = dict(plain, vowel_use=np.eye(8)[3], fricative_use=np.eye(4)[1])
    rng = np.random.default_rng(0)
    assert set(synthetic._phone(rng, voice, "vowel", 200).tolist()) == {3}
    assert {
        int(synthetic._phone(rng, voice, "fricative")) for _ in range(50)
    } == {1}
    assert set(synthetic._phone(rng, plain, "vowel", 200).tolist()) == set(
        range(8)
    )


def test_speakers_differ_and_utterances_are_speech_like():
    rng = np.random.default_rng(0)
    voices = [speaker_voice(rng) for _ in range(20)]
    for key in ("f0", "rate", "tilt", "breathiness", "jitter", "shimmer"):
        values = np.array([voice[key] for voice in voices])
        assert values.std() > 0.1 * np.abs(values).mean(), key
    formant_scale = [voice["vowels"][:, 1].mean() for voice in voices]
    assert max(formant_scale) / min(formant_scale) > 1.1
    wav = synthesise_speech(voices[0], 4.0, rng)
    frames = wav[: wav.size // 160 * 160].reshape(-1, 160)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    # Pauses: some 10 ms frames are far quieter than the loud ones.
    assert np.percentile(energy_db, 95) - energy_db.min() > 30


def test_trials_are_balanced_and_cross_session():
    utts = [
        f"id1{s:04d}/video{v:06d}/{u:05d}.wav"
        for s in range(4)
        for v in range(3)
        for u in range(3)
    ]
    trials = make_trials(utts, 100, np.random.default_rng(0))
    assert len(trials) == 100 and sum(t[0] for t in trials) == 50
    assert len(set(trials)) == 100
    for label, enrol, test in trials:
        assert (enrol.split("/")[0] == test.split("/")[0]) == (label == 1)
        assert enrol.split("/")[1] != test.split("/")[1] or label == 0
    # 4 speakers x 3 utterances in 3 videos: 4 x 3 cross-video target pairs.
    few = [u for u in utts if u.endswith("00000.wav")]
    trials = make_trials(few, 100, np.random.default_rng(0))
    assert len(trials) == 24 and sum(t[0] for t in trials) == 12


@pytest.mark.slow
def test_default_corpus_baseline_is_a_real_task(tmp_path):
    out = generate_corpus(str(tmp_path / "corpus"), seed=0)
    result = baseline_eer(out["data_folder"], out["trials"])
    assert result["n_trials"] == 1000
    assert 5.0 < result["EER"] < 40.0, result
