"""The augmented view of the reference: one of six equally likely choices.

Per utterance: none; reverberation with a simulated room impulse response
(SpeechBrain's ``reverberate``); MUSAN music at 5-15 dB SNR; babble, the sum
of 3-8 MUSAN speech files, at 13-20 dB; MUSAN noise at 0-15 dB; babble +
music. Noise is mixed by SpeechBrain's ``AddNoise`` (SNR drawn per
utterance); its ``noise_funct`` draws the noise files here, and
:class:`RandomFileReverb` draws the RIR file, so that every random choice
follows the caller's random seed and nothing depends on what was augmented
before (SpeechBrain's ``AddReverb`` walks an internal data loader over the
RIRs, a position no checkpoint holds, so a resumed run would draw other
RIRs). Babble files are each scaled to unit RMS
before summing, and the sum is mixed at the babble SNR (the reference mixes
every babble file at its own SNR). The reference meant babble + music but
applied music only; ``music_only_for_babble_music=True`` reproduces that.

The files come from the CSVs of :mod:`data_prep.augmentation` (MUSAN
``music``, ``speech``, ``noise`` and the simulated RIRs).
"""

import csv
import logging

import soundfile
import torch
from speechbrain.augment.time_domain import AddNoise
from speechbrain.processing.signal_processing import reverberate
from torch import nn

from speechbrain_ext.audio import read_audio, wrap_pad

logger = logging.getLogger(__name__)

CHOICES = ("none", "reverb", "music", "babble", "noise", "babble_music")


class RandomFileNoise:
    """Noise made of random crops of random files (an ``AddNoise`` source).

    Arguments
    ---------
    files : list of str
        Audio files (16 kHz mono).
    n_min, n_max : int
        Each utterance gets the sum of ``n_min``..``n_max`` files (drawn
        uniformly), each crop scaled to unit RMS.
    sample_rate : int
        Expected sample rate.

    Example
    -------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "n.wav")
    >>> soundfile.write(path, np.random.randn(800).astype("float32"), 16000)
    >>> RandomFileNoise([path], 3, 8)(torch.zeros(2, 1000)).shape
    torch.Size([2, 1000])
    """

    def __init__(self, files, n_min=1, n_max=1, sample_rate=16000):
        self.files = list(files)
        self.n_min = n_min
        self.n_max = n_max
        self.sample_rate = sample_rate
        self._frames = {}

    def _crop(self, path, length):
        if path not in self._frames:
            self._frames[path] = soundfile.info(path).frames
        frames = self._frames[path]
        start = int(torch.randint(0, max(1, frames - length + 1), ()).item())
        wav = read_audio(path, self.sample_rate, start, start + length)
        wav = wrap_pad(wav, length)
        return wav / wav.pow(2).mean().sqrt().clamp_min(1e-8)

    def __call__(self, waveforms):
        """Noise shaped like ``waveforms``.

        Arguments
        ---------
        waveforms : torch.Tensor
            ``[batch, samples]``.

        Returns
        -------
        torch.Tensor
            ``[batch, samples]``.
        """
        rows = []
        for _ in range(waveforms.shape[0]):
            n = int(torch.randint(self.n_min, self.n_max + 1, ()).item())
            picks = torch.randint(0, len(self.files), (n,)).tolist()
            crops = [
                self._crop(self.files[i], waveforms.shape[1]) for i in picks
            ]
            rows.append(torch.stack(crops).sum(0))
        return torch.stack(rows).to(waveforms)


class RandomFileReverb(nn.Module):
    """Reverberation with a random RIR file per utterance.

    SpeechBrain's ``reverberate`` convolves (keeping the direct path
    aligned and the average amplitude, as ``AddReverb`` does); the RIR is
    drawn with torch's random generator, so a seeded caller gets the same
    RIR whatever came before.

    Arguments
    ---------
    files : list of str
        RIR audio files.
    sample_rate : int
        Expected sample rate.

    Example
    -------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "rir.wav")
    >>> rir = np.zeros(400, "float32"); rir[[10, 200]] = [1.0, 0.3]
    >>> soundfile.write(path, rir, 16000)
    >>> RandomFileReverb([path])(torch.randn(2, 1000)).shape
    torch.Size([2, 1000])
    """

    def __init__(self, files, sample_rate=16000):
        super().__init__()
        self.files = list(files)
        self.sample_rate = sample_rate

    def forward(self, waveforms):
        """Reverberate each row with its own random RIR.

        Arguments
        ---------
        waveforms : torch.Tensor
            ``[batch, samples]``.

        Returns
        -------
        torch.Tensor
            ``[batch, samples]``.
        """
        rows = []
        for row in waveforms:
            pick = int(torch.randint(0, len(self.files), ()).item())
            rir = read_audio(self.files[pick], self.sample_rate).to(row)
            rows.append(
                reverberate(row[None, :, None], rir[None, :, None], "avg")
            )
        return torch.cat(rows).squeeze(-1)


class SixWayAugment(nn.Module):
    """Apply one of the six reference augmentations to each utterance.

    A choice whose data is missing (no RIR csv, no music files, ...) leaves
    the utterance clean; with no data at all the module is the identity and
    ``enabled`` is False.

    Arguments
    ---------
    music_files, speech_files, noise_files : list of str
        MUSAN files of each kind.
    rir_csv : str or None
        A SpeechBrain CSV of RIR files.
    music_snr, babble_snr, noise_snr : tuple of float
        SNR ranges in dB.
    babble_speakers : tuple of int
        Number of speech files in a babble, inclusive range.
    music_only_for_babble_music : bool
        Reproduce the reference's bug: "babble + music" applies music only.

    Example
    -------
    >>> augment = SixWayAugment()
    >>> augment.enabled
    False
    >>> wav = torch.randn(16000)
    >>> torch.equal(augment(wav)[0], wav)
    True
    """

    def __init__(
        self,
        music_files=(),
        speech_files=(),
        noise_files=(),
        rir_csv=None,
        music_snr=(5.0, 15.0),
        babble_snr=(13.0, 20.0),
        noise_snr=(0.0, 15.0),
        babble_speakers=(3, 8),
        music_only_for_babble_music=False,
    ):
        super().__init__()
        self.music_only_for_babble_music = music_only_for_babble_music
        self.ops = {}
        if music_files:
            self.ops["music"] = self._add_noise(music_files, music_snr)
        if speech_files:
            self.ops["babble"] = self._add_noise(
                speech_files, babble_snr, *babble_speakers
            )
        if noise_files:
            self.ops["noise"] = self._add_noise(noise_files, noise_snr)
        if rir_csv:
            self.ops["reverb"] = RandomFileReverb(read_csv_files(rir_csv))
        self.enabled = bool(self.ops)

    @staticmethod
    def _add_noise(files, snr, n_min=1, n_max=1):
        return AddNoise(
            snr_low=snr[0],
            snr_high=snr[1],
            noise_funct=RandomFileNoise(files, n_min, n_max),
        )

    def _apply(self, name, wav):
        if name == "none" or name not in self.ops:
            return wav
        if name == "reverb":
            return self.ops[name](wav)
        return self.ops[name](wav, torch.ones(wav.shape[0]))

    def forward(self, wav):
        """Augment one utterance with a randomly chosen augmentation.

        Arguments
        ---------
        wav : torch.Tensor
            ``[samples]``.

        Returns
        -------
        augmented : torch.Tensor
            ``[samples]``.
        choice : str
            One of :data:`CHOICES`.
        """
        choice = CHOICES[int(torch.randint(0, len(CHOICES), ()).item())]
        return self.apply_choice(wav, choice), choice

    def apply_choice(self, wav, choice):
        """Apply one given augmentation.

        Arguments
        ---------
        wav : torch.Tensor
            ``[samples]``.
        choice : str
            One of :data:`CHOICES`.

        Returns
        -------
        torch.Tensor
            ``[samples]``.
        """
        out = wav.unsqueeze(0)
        if choice == "babble_music":
            if not self.music_only_for_babble_music:
                out = self._apply("babble", out)
            out = self._apply("music", out)
        else:
            out = self._apply(choice, out)
        return out.squeeze(0)


def read_csv_files(csv_path):
    """The ``wav`` column of a SpeechBrain noise/RIR CSV.

    Arguments
    ---------
    csv_path : str or None
        CSV with columns ``ID,duration,wav,...``; None gives an empty list.

    Returns
    -------
    list of str

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "n.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("ID,duration,wav,wav_format,wav_opts\\n")
    ...     _ = f.write("a,1.0,/x/a.wav,wav,\\n")
    >>> read_csv_files(path)
    ['/x/a.wav']
    """
    if not csv_path:
        return []
    with open(csv_path, encoding="utf-8", newline="") as f:
        return [row["wav"] for row in csv.DictReader(f)]


def build_augmenter(csv_files=None, music_only_for_babble_music=False):
    """A :class:`SixWayAugment` from augmentation CSVs, logging coverage.

    Arguments
    ---------
    csv_files : dict, optional
        CSV paths under ``music``, ``speech``, ``noise``, ``rir`` (those
        available), as written by
        :func:`data_prep.augmentation.prepare_augmentation`.
    music_only_for_babble_music : bool
        See :class:`SixWayAugment`.

    Returns
    -------
    SixWayAugment

    Example
    -------
    >>> build_augmenter({}).enabled
    False
    """
    csv_files = csv_files or {}
    kinds = {
        kind: read_csv_files(csv_files.get(kind))
        for kind in ("music", "speech", "noise")
    }
    augmenter = SixWayAugment(
        kinds["music"],
        kinds["speech"],
        kinds["noise"],
        csv_files.get("rir"),
        music_only_for_babble_music=music_only_for_babble_music,
    )
    if not augmenter.enabled:
        logger.warning(
            "NO DATA AUGMENTATION: no MUSAN or RIR files were given "
            "(noise_folder / rir_folder); training on clean crops only"
        )
    else:
        missing = [
            name
            for name in ("music", "babble", "noise", "reverb")
            if name not in augmenter.ops
        ]
        logger.info(
            "Augmentation: %d music, %d speech, %d noise files, RIRs %s%s",
            len(kinds["music"]),
            len(kinds["speech"]),
            len(kinds["noise"]),
            csv_files.get("rir"),
            f"; missing (left clean): {missing}" if missing else "",
        )
    return augmenter
