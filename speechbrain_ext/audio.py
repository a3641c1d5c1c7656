"""Audio reading with clear errors, and the cropping rules of the recipe.

Training takes a random crop of each utterance and wrap-pads audio that is
shorter than the crop (the audio is repeated, as in the reference); evaluation
takes evenly spaced crops of the same kind.
"""

import os

import numpy as np
import soundfile
import torch


class AudioError(RuntimeError):
    """Raised when an audio file is missing, unreadable or not as expected."""


def audio_frames(path, sample_rate=16000):
    """Number of samples of a mono file, from its header (nothing decoded).

    Arguments
    ---------
    path : str
        The audio file.
    sample_rate : int or None
        The expected sample rate; ``None`` accepts any.

    Returns
    -------
    int
        Samples in the file (at least one).

    Raises
    ------
    AudioError
        One line naming the file and the problem: missing, unreadable,
        empty, wrong sample rate, more than one channel.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros(1600, dtype="float32"), 16000)
    >>> audio_frames(path)
    1600
    """
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    try:
        info = soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: unreadable audio ({error})") from None
    if sample_rate is not None and info.samplerate != sample_rate:
        raise AudioError(
            f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate}"
        )
    if info.channels != 1:
        raise AudioError(f"{path}: {info.channels} channels, expected mono")
    if info.frames == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    return info.frames


def read_audio(path, sample_rate=16000, start=0, stop=None):
    """Read a mono 16 kHz (by default) file as a float32 tensor.

    Arguments
    ---------
    path : str
        The audio file.
    sample_rate : int or None
        The expected sample rate; ``None`` accepts any.
    start : int
        First sample to read.
    stop : int or None
        One past the last sample to read; ``None`` reads to the end.

    Returns
    -------
    torch.Tensor
        ``[samples]`` float32 in [-1, 1].

    Raises
    ------
    AudioError
        One line naming the file and the problem: missing, unreadable,
        empty, wrong sample rate, more than one channel.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros(1600, dtype="float32"), 16000)
    >>> read_audio(path).shape
    torch.Size([1600])
    """
    audio_frames(path, sample_rate)
    try:
        audio, _ = soundfile.read(
            path, start=start, stop=stop, dtype="float32", always_2d=False
        )
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: unreadable audio ({error})") from None
    if audio.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    return torch.from_numpy(np.ascontiguousarray(audio))


def wrap_pad(wav, length):
    """Repeat ``wav`` along its last axis until it has ``length`` samples.

    Arguments
    ---------
    wav : torch.Tensor
        ``[..., samples]``, at least one sample.
    length : int
        The wanted length; longer input is returned unchanged.

    Returns
    -------
    torch.Tensor
        ``[..., max(samples, length)]``.

    Example
    -------
    >>> wrap_pad(torch.tensor([1.0, 2.0, 3.0]), 7)
    tensor([1., 2., 3., 1., 2., 3., 1.])
    """
    samples = wav.shape[-1]
    if samples >= length:
        return wav
    repeats = -(-length // samples)
    return wav.repeat(*([1] * (wav.dim() - 1)), repeats)[..., :length]


def random_crop(wav, length, generator=None):
    """A random ``length``-sample crop of ``wav``, wrap-padded if too short.

    Arguments
    ---------
    wav : torch.Tensor
        ``[samples]``.
    length : int
        Crop length in samples.
    generator : torch.Generator, optional
        Source of randomness (for reproducible crops).

    Returns
    -------
    torch.Tensor
        ``[length]``.

    Example
    -------
    >>> random_crop(torch.arange(10.0), 4).shape
    torch.Size([4])
    >>> random_crop(torch.arange(3.0), 5)
    tensor([0., 1., 2., 0., 1.])
    """
    wav = wrap_pad(wav, length)
    start = torch.randint(
        0, wav.shape[-1] - length + 1, (1,), generator=generator
    ).item()
    return wav[..., start : start + length]


def evenly_spaced_crops(wav, length, n_crops):
    """``n_crops`` crops of ``length`` samples with evenly spaced starts.

    As in the reference, audio of at most ``length`` samples is first
    wrap-padded to ``length + 1`` samples (so the last crop starts one
    sample later), and each start is rounded down.

    Arguments
    ---------
    wav : torch.Tensor
        ``[samples]``.
    length : int
        Crop length in samples.
    n_crops : int
        Number of crops; the first starts at 0, the last ends at the end.

    Returns
    -------
    torch.Tensor
        ``[n_crops, length]``.

    Example
    -------
    >>> evenly_spaced_crops(torch.arange(10.0), 4, 3)
    tensor([[0., 1., 2., 3.],
            [3., 4., 5., 6.],
            [6., 7., 8., 9.]])
    """
    if wav.shape[-1] <= length:
        wav = wrap_pad(wav, length + 1)
    starts = np.linspace(0, wav.shape[-1] - length, num=n_crops)
    return torch.stack([wav[int(s) : int(s) + length] for s in starts])
