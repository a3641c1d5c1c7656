"""Audio reading errors and the cropping rules."""

import numpy as np
import pytest
import soundfile
import torch

from speechbrain_ext.dataio.audio import (
    AudioError,
    audio_frames,
    evenly_spaced_crops,
    random_crop,
    read_audio,
    wrap_pad,
)


def write(path, samples, sample_rate=16000, channels=1):
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (samples, channels))
    soundfile.write(path, data.astype("float32"), sample_rate)
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "missing.wav"), "file not found"),
        (lambda d: write(d / "a.wav", 100, sample_rate=8000), "8000 Hz"),
        (lambda d: write(d / "a.wav", 100, channels=2), "2 channels"),
        (lambda d: write(d / "a.wav", 0), "empty audio"),
    ],
)
def test_bad_audio_gets_one_line_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    for check in (read_audio, audio_frames):
        with pytest.raises(AudioError, match=message) as error:
            check(path)
        assert str(path) in str(error.value)
        assert "\n" not in str(error.value)


def test_corrupt_and_zero_byte_files(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage")
    empty = tmp_path / "zero.wav"
    empty.write_bytes(b"")
    for path in (corrupt, empty):
        with pytest.raises(AudioError, match="unreadable"):
            read_audio(str(path))


def test_read_audio_matches_the_file(tmp_path):
    path = write(tmp_path / "a.wav", 1000)
    audio = read_audio(path)
    expected, _ = soundfile.read(path, dtype="float32")
    assert torch.equal(audio, torch.from_numpy(expected))
    assert torch.equal(read_audio(path, start=10, stop=20), audio[10:20])


def test_wrap_pad_repeats_and_keeps_long_input():
    wav = torch.arange(4.0)
    assert torch.equal(wrap_pad(wav, 10)[4:8], wav)
    assert torch.equal(wrap_pad(wav, 3), wav)


def test_random_crop_is_a_window_of_the_audio():
    wav = torch.arange(100.0)
    generator = torch.Generator().manual_seed(0)
    crops = [random_crop(wav, 30, generator) for _ in range(20)]
    starts = {int(c[0]) for c in crops}
    assert len(starts) > 1
    for crop in crops:
        assert torch.equal(crop, torch.arange(crop[0], crop[0] + 30))


def test_evenly_spaced_crops_cover_the_utterance():
    crops = evenly_spaced_crops(torch.arange(100.0), 40, 15)
    assert crops.shape == (15, 40)
    assert crops[0, 0] == 0 and crops[-1, -1] == 99
    short = evenly_spaced_crops(torch.arange(10.0), 25, 3)
    assert torch.equal(short[0], wrap_pad(torch.arange(10.0), 25))
