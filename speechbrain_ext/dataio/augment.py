"""The augmented view of the reference: one of six equally likely choices.

Per utterance: none; reverberation with a simulated room impulse response
(SpeechBrain's ``reverberate``); MUSAN music at 5-15 dB SNR; babble, 3-8 MUSAN
speech files each added at its own SNR drawn in 13-20 dB (so the babble as a
whole is at 6-14 dB, as in the reference); MUSAN noise at 0-15 dB; babble +
music. Music and noise are mixed by SpeechBrain's ``AddNoise`` (SNR drawn
per utterance); its ``noise_funct`` draws the noise files here, and
:class:`RandomFileReverb` draws the RIR file, so that every random choice
follows the caller's random seed and nothing depends on what was augmented
before (SpeechBrain's ``AddReverb`` walks an internal data loader over the
RIRs, a position no checkpoint holds, so a resumed run would draw other
RIRs). ``AddNoise`` mixes one
noise signal at one SNR, so babble, whose files each have their own SNR, is
mixed by :class:`Babble`. The reference meant babble + music but applied
music only; ``music_only_for_babble_music=True`` reproduces that.

The files come from the CSVs of :mod:`data_prep.augmentation` (MUSAN
``music``, ``speech``, ``noise`` and the simulated RIRs).

Not in the reference, off by default: :class:`RandomChannel` passes the
chosen view through a random recording channel (high-pass, EQ bands, a
telephone band), which the demo uses (see the README).
"""

import csv
import math
import os

import numpy as np
import scipy.signal
import soundfile
import torch
from speechbrain.augment.time_domain import AddNoise
from speechbrain.processing.signal_processing import reverberate
from speechbrain.utils.logger import get_logger
from torch import nn

from speechbrain_ext.dataio.audio import read_audio, wrap_pad

logger = get_logger(__name__)

CHOICES = ("none", "reverb", "music", "babble", "noise", "babble_music")


class RandomFileNoise:
    """Noise made of a random crop of a random file (an ``AddNoise`` source).

    Arguments
    ---------
    files : list of str
        Audio files (16 kHz mono).
    sample_rate : int
        Expected sample rate.

    Example
    -------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "n.wav")
    >>> soundfile.write(path, np.random.randn(800).astype("float32"), 16000)
    >>> RandomFileNoise([path])(torch.zeros(2, 1000)).shape
    torch.Size([2, 1000])
    """

    def __init__(self, files, sample_rate=16000):
        self.files = list(files)
        self.sample_rate = sample_rate
        self._frames = {}

    def crop(self, path, length):
        """A random ``length``-sample crop of ``path``, unit RMS.

        Arguments
        ---------
        path : str
            Audio file (wrap-padded when shorter than ``length``).
        length : int
            Samples.

        Returns
        -------
        torch.Tensor
            ``[length]``.
        """
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
            pick = int(torch.randint(0, len(self.files), ()).item())
            rows.append(self.crop(self.files[pick], waveforms.shape[1]))
        return torch.stack(rows).to(waveforms)


def mix_at_snrs(clean, noises, snrs):
    """Add each noise to ``clean`` at its own SNR (relative to ``clean``).

    Noise ``i`` is scaled so that ``10 log10(P_clean / P_noise_i)`` equals
    ``snrs[i]`` (``P``: mean power), then all are added to the unscaled
    clean signal, as the reference mixes babble.

    Arguments
    ---------
    clean : torch.Tensor
        ``[samples]``.
    noises : torch.Tensor
        ``[n, samples]``.
    snrs : torch.Tensor
        ``[n]`` in dB.

    Returns
    -------
    torch.Tensor
        ``[samples]``.

    Example
    -------
    >>> clean = torch.ones(4)
    >>> mix_at_snrs(clean, torch.ones(2, 4), torch.tensor([0.0, 20.0]))
    tensor([2.1000, 2.1000, 2.1000, 2.1000])
    """
    clean_power = clean.pow(2).mean()
    noise_power = noises.pow(2).mean(dim=1).clamp_min(1e-20)
    gains = torch.sqrt(clean_power / noise_power * 10 ** (-snrs / 10))
    return clean + (gains[:, None] * noises).sum(0)


class Babble(nn.Module):
    """Babble as in the reference: several speech files, each at its own SNR.

    For each utterance, ``n_speakers`` (uniform in an inclusive range)
    different files are drawn, a random crop of each, and each crop is added
    at an SNR drawn apart in ``snr`` (:func:`mix_at_snrs`), so the babble as
    a whole is louder than any one of them (3-8 files at 13-20 dB each:
    6.1-14.3 dB, 9.0 dB on average). SpeechBrain's ``AddNoise`` mixes one
    signal at one SNR, hence this module.

    Arguments
    ---------
    files : list of str
        MUSAN speech files (16 kHz mono).
    snr : tuple of float
        Range of each file's SNR in dB.
    n_speakers : tuple of int
        Inclusive range of the number of files.

    Example
    -------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "s.wav")
    >>> soundfile.write(path, np.random.randn(800).astype("float32"), 16000)
    >>> Babble([path])(torch.randn(2, 1000), torch.ones(2)).shape
    torch.Size([2, 1000])
    """

    def __init__(self, files, snr=(13.0, 20.0), n_speakers=(3, 8)):
        super().__init__()
        self.source = RandomFileNoise(files)
        self.snr = snr
        self.n_speakers = n_speakers

    def forward(self, waveforms, lengths=None):
        """Add babble to each row.

        Arguments
        ---------
        waveforms : torch.Tensor
            ``[batch, samples]``.
        lengths : torch.Tensor, optional
            Unused (every row is a full crop); ``AddNoise``'s signature.

        Returns
        -------
        torch.Tensor
            ``[batch, samples]``.
        """
        del lengths
        files = self.source.files
        rows = []
        for clean in waveforms:
            low, high = self.n_speakers
            n = int(torch.randint(low, high + 1, ()).item())
            # Distinct files (random.sample in the reference) when there are
            # enough of them.
            if len(files) >= n:
                picks = torch.randperm(len(files))[:n].tolist()
            else:
                picks = torch.randint(0, len(files), (n,)).tolist()
            noises = torch.stack(
                [self.source.crop(files[i], clean.shape[-1]) for i in picks]
            ).to(clean)
            snrs = torch.empty(n).uniform_(*self.snr).to(clean)
            rows.append(mix_at_snrs(clean, noises, snrs))
        return torch.stack(rows)


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


def peaking_eq_section(centre, gain_db, q, sample_rate):
    """A peaking-EQ biquad of the Audio EQ Cookbook as an ``sos`` row.

    Written out because scipy designs no peaking EQ; torchaudio's
    ``equalizer_biquad`` filters but does not return its coefficients, and
    its biquads run a channel several times slower than ``sosfilt``
    (``benchmarks/bench_channel.py``).

    Arguments
    ---------
    centre : float
        Centre frequency (Hz).
    gain_db : float
        Gain at the centre (dB).
    q : float
        Quality factor.
    sample_rate : int
        Of the audio.

    Returns
    -------
    numpy.ndarray
        ``[1, 6]``: ``b0, b1, b2, 1, a1, a2``.

    Example
    -------
    >>> section = peaking_eq_section(1000.0, 6.0, 1.0, 16000)
    >>> _, response = scipy.signal.sosfreqz(section, [1000.0], fs=16000)
    >>> round(20 * math.log10(abs(response[0])), 6)
    6.0
    """
    amplitude = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * centre / sample_rate
    alpha = math.sin(w0) / (2.0 * q)
    b = [1.0 + alpha * amplitude, -2.0 * math.cos(w0), 1.0 - alpha * amplitude]
    a = [1.0 + alpha / amplitude, -2.0 * math.cos(w0), 1.0 - alpha / amplitude]
    return np.array([[*(v / a[0] for v in b), *(v / a[0] for v in a)]])


class RandomChannel(nn.Module):
    """Pass an utterance through a random recording channel.

    A microphone / transmission colouring that neither MUSAN noise nor room
    impulse responses simulate: a second-order Butterworth high-pass at
    ``highpass`` Hz, a few peaking-EQ bands (centres drawn log-uniformly in
    ``peak_freq``, gains ``N(0, peak_gain_db)`` dB, Q in ``peak_q``) and,
    with probability ``telephone_prob``, a fourth-order Butterworth
    low-pass at ``lowpass`` Hz (a telephone band). An utterance goes
    through a channel with probability ``prob``. The cascade runs as
    second-order sections in float64 (``scipy.signal.sosfilt``). Not part
    of the reference: see the README's demo settings for why the demo uses
    it.

    Arguments
    ---------
    prob : float
        Chance that an utterance goes through a channel at all.
    sample_rate : int
        Of the audio.
    highpass : sequence of float
        Range (Hz) of the high-pass cut-off.
    n_peaks : sequence of int
        Inclusive range of the number of EQ bands.
    peak_freq : sequence of float
        Range (Hz, drawn log-uniformly) of the EQ centres.
    peak_gain_db : float
        Standard deviation (dB) of an EQ band's gain.
    peak_q : sequence of float
        Range of the EQ bands' Q.
    telephone_prob : float
        Chance of a telephone-band low-pass.
    lowpass : sequence of float
        Range (Hz) of that low-pass cut-off.

    Example
    -------
    >>> channel = RandomChannel()
    >>> channel(torch.randn(2, 16000)).shape
    torch.Size([2, 16000])
    """

    def __init__(
        self,
        prob=1.0,
        sample_rate=16000,
        highpass=(50.0, 300.0),
        n_peaks=(2, 4),
        peak_freq=(100.0, 6000.0),
        peak_gain_db=6.0,
        peak_q=(0.5, 2.0),
        telephone_prob=0.3,
        lowpass=(3400.0, 4500.0),
    ):
        super().__init__()
        for name, value in (("prob", prob), ("telephone_prob", telephone_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"RandomChannel: {name} must be in [0, 1], got {value}"
                )
        self.prob = prob
        self.sample_rate = sample_rate
        self.highpass = tuple(highpass)
        self.n_peaks = tuple(n_peaks)
        self.peak_freq = tuple(peak_freq)
        self.peak_gain_db = peak_gain_db
        self.peak_q = tuple(peak_q)
        self.telephone_prob = telephone_prob
        self.lowpass = tuple(lowpass)

    @staticmethod
    def _uniform(low, high):
        return low + (high - low) * float(torch.rand(()))

    def draw(self):
        """Draw one channel (from torch's random generator).

        Returns
        -------
        dict or None
            None (no channel) or ``highpass`` (Hz), ``peaks`` (list of
            ``(centre Hz, gain dB, Q)``) and ``lowpass`` (Hz, or None).

        Example
        -------
        >>> sorted(RandomChannel().draw())
        ['highpass', 'lowpass', 'peaks']
        """
        if float(torch.rand(())) >= self.prob:
            return None
        highpass = self._uniform(*self.highpass)
        log_low, log_high = (math.log(f) for f in self.peak_freq)
        peaks = [
            (
                math.exp(self._uniform(log_low, log_high)),
                self.peak_gain_db * float(torch.randn(())),
                self._uniform(*self.peak_q),
            )
            for _ in range(
                int(torch.randint(self.n_peaks[0], self.n_peaks[1] + 1, ()))
            )
        ]
        lowpass = None
        if float(torch.rand(())) < self.telephone_prob:
            lowpass = self._uniform(*self.lowpass)
        return {"highpass": highpass, "peaks": peaks, "lowpass": lowpass}

    def sections(self, channel):
        """The second-order sections of a drawn channel.

        Arguments
        ---------
        channel : dict
            From :meth:`draw`.

        Returns
        -------
        numpy.ndarray
            ``[n_sections, 6]`` (scipy's ``sos`` layout).
        """
        rate = self.sample_rate
        sections = [
            scipy.signal.butter(
                2, channel["highpass"], "highpass", fs=rate, output="sos"
            )
        ]
        sections += [
            peaking_eq_section(centre, gain, q, rate)
            for centre, gain, q in channel["peaks"]
        ]
        if channel["lowpass"] is not None:
            sections.append(
                scipy.signal.butter(
                    4, channel["lowpass"], "lowpass", fs=rate, output="sos"
                )
            )
        return np.concatenate(sections)

    def apply(self, wav, channel):
        """Filter audio through a given channel.

        Arguments
        ---------
        wav : torch.Tensor
            ``[..., samples]``.
        channel : dict or None
            From :meth:`draw` (None: unchanged).

        Returns
        -------
        torch.Tensor
            ``[..., samples]``.
        """
        if channel is None:
            return wav
        filtered = scipy.signal.sosfilt(
            self.sections(channel), wav.detach().cpu().double().numpy()
        )
        return torch.from_numpy(filtered).to(wav)

    def forward(self, wav):
        """Filter each row through its own random channel.

        Arguments
        ---------
        wav : torch.Tensor
            ``[batch, samples]``.

        Returns
        -------
        torch.Tensor
            ``[batch, samples]``.
        """
        return torch.stack([self.apply(row, self.draw()) for row in wav])


class SixWayAugment(nn.Module):
    """Apply one of the six reference augmentations to each utterance.

    Built in the hparams (``!new:``) with the CSVs that
    :func:`data_prep.augmentation.prepare_augmentation` writes: the script
    prepares them first, and the files are read on first use (as
    SpeechBrain's ``AddNoise`` reads its ``csv_file``). A CSV that is not
    given or does not exist leaves its choice clean. An optional ``channel``
    (:class:`RandomChannel`, not in the reference) then filters the result.
    With no data and no channel the module is the identity and ``enabled``
    is False.

    Arguments
    ---------
    music_csv, speech_csv, noise_csv, rir_csv : str, optional
        SpeechBrain CSVs (column ``wav``) of MUSAN music, speech (babble),
        noise, and of room impulse responses.
    music_snr, babble_snr, noise_snr : sequence of float
        SNR ranges in dB.
    babble_speakers : sequence of int
        Number of speech files in a babble, inclusive range (each file gets
        its own SNR drawn in ``babble_snr``).
    music_only_for_babble_music : bool
        Reproduce the reference's bug: "babble + music" applies music only.
    channel : RandomChannel, optional
        Applied after the choice (None, or ``prob`` 0: the reference).

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
        music_csv=None,
        speech_csv=None,
        noise_csv=None,
        rir_csv=None,
        music_snr=(5.0, 15.0),
        babble_snr=(13.0, 20.0),
        noise_snr=(0.0, 15.0),
        babble_speakers=(3, 8),
        music_only_for_babble_music=False,
        channel=None,
    ):
        super().__init__()
        self.channel = channel
        self.csv_files = {
            "music": music_csv,
            "speech": speech_csv,
            "noise": noise_csv,
            "rir": rir_csv,
        }
        self.music_snr = tuple(music_snr)
        self.babble_snr = tuple(babble_snr)
        self.noise_snr = tuple(noise_snr)
        self.babble_speakers = tuple(babble_speakers)
        self.music_only_for_babble_music = music_only_for_babble_music
        self.ops = None

    def available_files(self):
        """The files of each kind whose CSV exists.

        Returns
        -------
        dict
            ``music``, ``speech``, ``noise``, ``rir`` -> list of str (empty
            when the CSV is not given or not there).
        """
        return {
            kind: read_csv_files(path) if path and os.path.isfile(path) else []
            for kind, path in self.csv_files.items()
        }

    def load(self):
        """Read the CSVs (done on first use; call it to log the coverage).

        Returns
        -------
        dict
            Choice name -> the module applying it (those with data).
        """
        if self.ops is not None:
            return self.ops
        files = self.available_files()
        self.ops = {}
        if files["music"]:
            self.ops["music"] = self._add_noise(files["music"], self.music_snr)
        if files["speech"]:
            self.ops["babble"] = Babble(
                files["speech"], self.babble_snr, self.babble_speakers
            )
        if files["noise"]:
            self.ops["noise"] = self._add_noise(files["noise"], self.noise_snr)
        if files["rir"]:
            self.ops["reverb"] = RandomFileReverb(files["rir"])
        return self.ops

    @property
    def uses_channel(self):
        """Whether a random channel filters some of the utterances."""
        return self.channel is not None and self.channel.prob > 0

    @property
    def enabled(self):
        """Whether any augmentation data was found or a channel is used."""
        return bool(self.load()) or self.uses_channel

    def log_coverage(self):
        """Log what the augmentation uses, loudly when it has nothing."""
        files = self.available_files()
        if self.uses_channel:
            logger.info(
                "Random recording channel on %.0f%% of the utterances",
                100 * self.channel.prob,
            )
        if not self.enabled:
            logger.warning(
                "NO DATA AUGMENTATION: no MUSAN or RIR files were given "
                "(noise_folder / rir_folder); training on clean crops only"
            )
            return
        missing = [
            name
            for name in ("music", "babble", "noise", "reverb")
            if name not in self.ops
        ]
        logger.info(
            "Augmentation: %d music, %d speech, %d noise, %d RIR files%s",
            len(files["music"]),
            len(files["speech"]),
            len(files["noise"]),
            len(files["rir"]),
            f"; missing (left clean): {missing}" if missing else "",
        )

    @staticmethod
    def _add_noise(files, snr):
        return AddNoise(
            snr_low=snr[0],
            snr_high=snr[1],
            noise_funct=RandomFileNoise(files),
        )

    def _apply(self, name, wav):
        ops = self.load()
        if name == "none" or name not in ops:
            return wav
        if name == "reverb":
            return ops[name](wav)
        return ops[name](wav, torch.ones(wav.shape[0]))

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
        if self.channel is not None:
            out = self.channel(out)
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
