"""Audio reading with clear errors, and the cropping rules of the recipe.

Training takes a random crop of each utterance and wrap-pads audio that is
shorter than the crop (the audio is repeated, as in the reference); evaluation
takes evenly spaced crops of the same kind.
"""

import os

import numpy as np
import soundfile
import torch

#: Fewest samples WavLM's convolutional encoder takes (its receptive field).
WAVLM_MIN_SAMPLES = 400

#: Sample formats that can hold NaN or infinity (integer PCM cannot).
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


class AudioError(RuntimeError):
    """Raised when an audio file is missing, unreadable or not as expected."""


def count_nonfinite(path, block_size=960_000):
    """Number of NaN or infinite samples of a file.

    Only float files can hold them: integer PCM is not decoded (0 at once).

    Arguments
    ---------
    path : str
        An audio file soundfile can read.
    block_size : int
        Samples decoded at a time.

    Returns
    -------
    int

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "nan.wav")
    >>> nan = np.full(100, np.nan, "float32")
    >>> soundfile.write(path, nan, 16000, subtype="FLOAT")
    >>> count_nonfinite(path)
    100
    """
    if soundfile.info(path).subtype not in FLOAT_SUBTYPES:
        return 0
    return sum(
        int(np.count_nonzero(~np.isfinite(block)))
        for block in soundfile.blocks(
            path, blocksize=block_size, dtype="float32"
        )
    )


def audio_frames(path, sample_rate=16000, min_samples=1, check_values=False):
    """Number of samples of a mono file, from its header.

    Nothing is decoded, unless ``check_values`` asks for the samples of a
    float file to be checked (see :func:`count_nonfinite`).

    Arguments
    ---------
    path : str
        The audio file.
    sample_rate : int or None
        The expected sample rate; ``None`` accepts any.
    min_samples : int
        Fewer samples is a problem (e.g. :data:`WAVLM_MIN_SAMPLES`).
    check_values : bool
        Refuse float files holding NaN or infinite samples.

    Returns
    -------
    int
        Samples in the file (at least ``min_samples``).

    Raises
    ------
    AudioError
        One line naming the file and the problem: missing, unreadable,
        empty, too short, wrong sample rate, more than one channel,
        non-finite samples.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros(1600, dtype="float32"), 16000)
    >>> audio_frames(path)
    1600
    >>> audio_frames(path, min_samples=2000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    speechbrain_ext.dataio.audio.AudioError: ...a.wav: 1600 samples, fewer \
than 2000
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
    if info.frames < min_samples:
        raise AudioError(
            f"{path}: {info.frames} samples, fewer than {min_samples}"
            + (
                " (the receptive field of WavLM)"
                if min_samples == WAVLM_MIN_SAMPLES
                else ""
            )
        )
    if check_values:
        try:
            bad = count_nonfinite(path)
        except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
            raise AudioError(f"{path}: unreadable audio ({error})") from None
        if bad:
            raise AudioError(_nonfinite_message(path, bad))
    return info.frames


def _nonfinite_message(path, count):
    return f"{path}: {count} samples are NaN or infinite"


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
        empty, wrong sample rate, more than one channel, NaN or infinite
        samples (in the part read).

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
    finite = np.isfinite(audio)
    if not finite.all():
        raise AudioError(
            _nonfinite_message(path, int(np.count_nonzero(~finite)))
        )
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
