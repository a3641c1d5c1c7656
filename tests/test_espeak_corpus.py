"""The espeak-ng corpus tool: parts that do not need espeak-ng."""

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
