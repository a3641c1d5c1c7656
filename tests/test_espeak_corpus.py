"""The espeak-ng corpus tool (one test needs espeak-ng, skipped without it)."""

import shutil

import numpy as np
import pytest

from data_prep import espeak_corpus, synthetic


def test_missing_espeak_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setattr(espeak_corpus, "ESPEAK", "no-such-espeak-program")
    with pytest.raises(espeak_corpus.EspeakMissingError) as error:
        espeak_corpus.espeak_variants()
    message = str(error.value)
    assert "\n" not in message and "apt-get install espeak-ng" in message
    with pytest.raises(SystemExit, match="apt-get install espeak-ng"):
        espeak_corpus.main(["--output_folder", "unused"])


def test_speakers_are_distinct_and_sessions_change_the_channel():
    rng = np.random.default_rng(0)
    speakers = espeak_corpus.draw_speakers(30, ["m1", "f2", "klatt"], rng)
    keys = {(s["variant"], s["language"], s["pitch"] // 10) for s in speakers}
    assert len(keys) == 30
    clean = np.sin(np.arange(16000) * 0.07) * 0.3
    outs = [
        espeak_corpus.through_channel(
            clean, synthetic.session_channel(rng), rng
        )
        for _ in range(2)
    ]
    for out in outs:
        # The STFT keeps whole frames: up to 6 hops shorter.
        assert out.dtype == np.float32
        assert 16000 - 6 * synthetic.HOP <= len(out) <= 16000
        assert np.abs(out).max() <= 0.99
    n = min(len(o) for o in outs)
    assert not np.allclose(outs[0][:n], outs[1][:n])


@pytest.mark.skipif(
    shutil.which(espeak_corpus.ESPEAK) is None, reason="needs espeak-ng"
)
def test_generate_writes_a_tiny_corpus(tmp_path):
    outputs = espeak_corpus.generate(
        str(tmp_path / "corpus"),
        n_jobs=1,
        n_train_speakers=2,
        n_test_speakers=3,
        n_videos=2,
        n_utterances=1,
        n_trials=6,
        n_musan=1,
        musan_duration=1.0,
        n_rir_rooms=1,
        n_rirs=1,
    )
    assert outputs["dev_trials"] is None  # no development speakers
    lines = open(outputs["train_list"], encoding="utf-8").read().splitlines()
    assert len(lines) == 4
    for line in lines:
        speaker, path = line.split()
        assert (tmp_path / "corpus" / "wav" / path).is_file()
    trials = open(outputs["trials"], encoding="utf-8").read().splitlines()
    assert {line.split()[0] for line in trials} == {"0", "1"}
    for line in trials:
        for path in line.split()[1:]:
            assert (tmp_path / "corpus" / "wav" / path).is_file()
