"""A built-in synthetic multi-speaker corpus in the VoxCeleb layout.

The corpus is the default data of the demo and of the tests: no download, and
deterministic from a seed. Each speaker has a voice of their own: fundamental
frequency (F0) and its range, vocal-tract length (formant scale) plus personal
vowel formants, spectral tilt, glottal open quotient, speaking rate and voice
quality (breathiness, jitter, shimmer). Utterances are sequences of syllables
(an optional fricative followed by a vowel whose formants move towards the
next one) grouped in words separated by pauses; the voiced source is a train
of glottal pulses shaped by the formant filters, the unvoiced one noise
through fricative-like band-pass filters. Each session ("video") has its own
channel: a microphone colouring filter, a band limit, background noise at a
random SNR and a recording level, so that speaker and session are different
things. Utterances also vary around the speaker's voice (F0, rate, effort).

Layout (see ``/work/shared/DESIGN.md``)::

    DIR/wav/<SPK>/<VIDEO>/<UTT>.wav   16 kHz mono; train speakers id0NNNN,
                                      test speakers id1NNNN, development
                                      speakers id2NNNN
    DIR/train_list.txt                SPEAKER RELPATH (relative to DIR/wav)
    DIR/trials.txt                    LABEL ENROL TEST on the test speakers
    DIR/dev_trials.txt                LABEL ENROL TEST on the development
                                      speakers (to calibrate a threshold)
    DIR/musan/{music,speech,noise}/synth/*.wav
    DIR/rirs/{smallroom,mediumroom,largeroom}/RoomNNN/*.wav
    DIR/corpus.json                   completion marker with the settings
    DIR/.generation_in_progress       present only while generating

Spectral shaping is done on a short-time Fourier transform (STFT) grid, one
frame every 8 ms, which keeps the generation vectorised and fast.

Example
-------
>>> sorted(TINY_SIZES) == sorted(DEFAULT_SIZES)
True
"""

import speechbrain_ext.preflight  # noqa: F401

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import string
import time

import numpy as np
import soundfile
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

SAMPLE_RATE = 16000
N_FFT = 512
HOP = N_FFT // 4
FRAME_RATE = SAMPLE_RATE / HOP
FREQS = np.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE)
WINDOW = np.hanning(N_FFT + 1)[:-1]
MARKER = "corpus.json"
IN_PROGRESS = ".generation_in_progress"
FORMAT_VERSION = 1

DEFAULT_SIZES = {
    "n_train_speakers": 40,
    "n_test_speakers": 20,
    "n_videos": 3,
    "n_utterances": 4,
    "min_duration": 2.0,
    "max_duration": 12.0,
    "n_trials": 1000,
    "n_dev_speakers": 10,
    "n_dev_trials": 400,
    "n_musan": 6,
    "musan_duration": 8.0,
    "n_rir_rooms": 2,
    "n_rirs": 3,
}
"""Sizes of the default (demo) corpus."""

TINY_SIZES = {
    "n_train_speakers": 8,
    "n_test_speakers": 6,
    "n_videos": 2,
    "n_utterances": 3,
    "min_duration": 2.0,
    "max_duration": 4.0,
    "n_trials": 40,
    "n_dev_speakers": 3,
    "n_dev_trials": 20,
    "n_musan": 2,
    "musan_duration": 3.0,
    "n_rir_rooms": 1,
    "n_rirs": 2,
}
"""Sizes of the tiny corpus used by the tests (a few seconds to generate)."""

DEFAULT_VARIABILITY = {
    "speaker_spread": 1.0,
    "channel_spread": 1.0,
    "accent": 0.0,
    "min_snr": 0.0,
}
"""How far voices differ and how far session channels depart from a clean
one: ``speaker_spread`` scales the between-speaker standard deviations of
:func:`speaker_voice`, ``channel_spread`` the session effects of
:func:`session_channel`, ``accent`` gives each speaker their own use of the
vowels and fricatives (0: everyone uses all alike), ``min_snr`` (dB) raises
every session's background-noise SNR to at least that (60: the background
is practically gone; nothing else changes). The defaults are the corpus of
the tests."""

# F1, F2, F3 of eight vowels of an adult male voice (Hz).
VOWELS = np.array(
    [
        [280, 2250, 2900],
        [400, 2000, 2600],
        [550, 1800, 2500],
        [750, 1300, 2500],
        [570, 850, 2400],
        [450, 800, 2350],
        [320, 900, 2250],
        [500, 1500, 2500],
    ],
    dtype=float,
)
HIGH_FORMANTS = np.array([3500.0, 4500.0])
# Centre (Hz) and width (octaves) of fricative-like noise bands.
FRICATIVES = np.array([[6000, 0.5], [3000, 0.5], [4500, 1.2], [1500, 0.8]])
ROOM_TYPES = {
    "smallroom": (0.15, 0.35),
    "mediumroom": (0.35, 0.7),
    "largeroom": (0.7, 1.2),
}
VIDEO_ALPHABET = np.array(list(string.ascii_letters + string.digits + "-_"))


def _rng(seed, *key):
    """A generator that depends only on the seed and a key (never on order)."""
    return np.random.default_rng([seed, *key])


def speaker_voice(rng, spread=1.0, accent=0.0):
    """Draw the parameters of one speaker's voice.

    Arguments
    ---------
    rng : numpy.random.Generator
        Source of randomness.
    spread : float
        Scales the between-speaker standard deviations (F0 and formant
        scale within a sex, personal formants, fricative bands, effort);
        the same ``rng`` state gives voices whose deviations from the
        population means are exactly ``spread`` times those of 1.0.
    accent : float
        Above 0, the speaker uses the vowels and fricatives with their own
        frequencies (``vowel_use``, ``fricative_use``: Dirichlet draws of
        concentration ``1 / accent``, drawn after everything else, so the
        other parameters do not depend on it); 0: all alike.

    Returns
    -------
    dict
        ``f0`` (Hz), ``f0_range`` (semitones), ``vowels`` ([8, 5] formants,
        Hz), ``bandwidth`` (scale of formant bandwidths), ``tilt`` (dB per
        octave), ``open_quotient``, ``breathiness``, ``jitter``, ``shimmer``,
        ``rate`` (syllables/s), ``fricatives`` ([4, 2]), ``effort`` (dB),
        and with ``accent`` ``vowel_use`` ([8]) and ``fricative_use``
        ([4]).

    Example
    -------
    >>> voice = speaker_voice(np.random.default_rng(0))
    >>> voice["vowels"].shape
    (8, 5)
    """
    female = rng.random() < 0.5
    f0 = np.exp(rng.normal(np.log(210.0 if female else 115.0), 0.12 * spread))
    scale = rng.normal(1.16 if female else 1.0, 0.045 * spread)
    formants = np.concatenate(
        [VOWELS, np.broadcast_to(HIGH_FORMANTS, (len(VOWELS), 2))], axis=1
    )
    personal = np.exp(rng.normal(0.0, 0.06 * spread, formants.shape))
    vowels = np.sort(formants * scale * personal, axis=1)
    fricatives = FRICATIVES * [np.exp(rng.normal(0.0, 0.12 * spread)), 1.0]
    voice = {
        "f0": f0,
        "f0_range": rng.uniform(0.8, 3.5),
        "vowels": vowels,
        "bandwidth": rng.uniform(0.7, 1.8),
        "tilt": rng.uniform(-4.0, 1.0),
        "open_quotient": rng.uniform(0.35, 0.8),
        "breathiness": rng.uniform(0.01, 0.3),
        "jitter": rng.uniform(0.002, 0.02),
        "shimmer": rng.uniform(0.02, 0.15),
        "rate": rng.uniform(3.0, 6.5),
        "fricatives": fricatives,
        "effort": rng.normal(0.0, 2.0 * spread),
    }
    if accent > 0:
        voice["vowel_use"] = rng.dirichlet(np.full(len(VOWELS), 1 / accent))
        voice["fricative_use"] = rng.dirichlet(
            np.full(len(fricatives), 1 / accent)
        )
    return voice


def session_channel(rng, spread=1.0, min_snr=0.0):
    """Draw the channel of one session: microphone, noise and level.

    Arguments
    ---------
    rng : numpy.random.Generator
        Source of randomness.
    spread : float
        Scales how far the session departs from a clean flat channel: the
        colouring gains (dB), the tilt, the high-pass range above 50 Hz,
        the chance of a telephone band and the SNR range below 30 dB.
    min_snr : float
        The SNR (dB) is at least this; the draws do not depend on it.

    Returns
    -------
    dict
        ``response`` (linear gain per STFT bin), ``noise_colour`` (linear
        gain per bin), ``snr`` (dB), ``level`` (dBFS of the speech).

    Example
    -------
    >>> channel = session_channel(np.random.default_rng(0))
    >>> channel["response"].shape
    (257,)
    """
    octaves = np.log2(np.maximum(FREQS, 20.0) / 1000.0)
    gain_db = np.zeros_like(FREQS)
    for _ in range(rng.integers(2, 5)):
        centre = rng.uniform(-3.0, 2.5)
        width = rng.uniform(0.3, 1.2)
        gain_db += rng.normal(0.0, 5.0 * spread) * np.exp(
            -0.5 * ((octaves - centre) / width) ** 2
        )
    gain_db += rng.uniform(-2.0, 2.0) * spread * octaves
    highpass = rng.uniform(50.0, 50.0 + 250.0 * spread)
    narrow = min(0.3 * spread, 1.0)
    lowpass = rng.choice(
        [rng.uniform(3400.0, 4500.0), 7900.0], p=[narrow, 1.0 - narrow]
    )
    band = 1.0 / (1.0 + (highpass / np.maximum(FREQS, 1.0)) ** 4)
    band /= 1.0 + (FREQS / lowpass) ** 12
    response = 10.0 ** (gain_db / 20.0) * band
    noise_db = rng.uniform(-10.0, -3.0) * octaves
    hum = rng.choice([50.0, 60.0])
    if rng.random() < 0.3:
        for harmonic in hum * np.arange(1, 6):
            noise_db += 25.0 * np.exp(-0.5 * ((FREQS - harmonic) / 15.0) ** 2)
    snr = rng.uniform(max(30.0 - 22.0 * spread, 0.0), 30.0)
    return {
        "response": response,
        "noise_colour": 10.0 ** (noise_db / 20.0),
        "snr": max(snr, min_snr),
        "level": rng.uniform(-32.0, -16.0),
    }


def _smooth(track, width):
    """Moving average along the first axis, edges held."""
    if width <= 1:
        return track
    kernel = np.ones(width) / width
    pad = width // 2
    padded = np.pad(
        track,
        [(pad, width - 1 - pad)] + [(0, 0)] * (track.ndim - 1),
        mode="edge",
    )
    if track.ndim == 1:
        return np.convolve(padded, kernel, mode="valid")
    return np.stack(
        [
            np.convolve(padded[:, i], kernel, mode="valid")
            for i in range(track.shape[1])
        ],
        axis=1,
    )


def _phone(rng, voice, kind, size=None):
    """Index of a vowel or fricative: by the speaker's own frequencies
    (``<kind>_use``) when the voice has them, else uniformly."""
    use = voice.get(f"{kind}_use")
    if use is None:
        count = len(VOWELS) if kind == "vowel" else len(voice["fricatives"])
        return rng.integers(count, size=size)
    return rng.choice(len(use), size=size, p=use)


def _plan(voice, n_frames, rate, rng):
    """Frame tracks of an utterance: gains, formants, fricative band, F0."""
    voiced = np.zeros(n_frames)
    unvoiced = np.zeros(n_frames)
    formants = np.zeros((n_frames, 5))
    fricative = np.tile(voice["fricatives"][0], (n_frames, 1))
    accent = np.zeros(n_frames)
    vowel_frames = []
    frame = int(rng.uniform(0.05, 0.3) * FRAME_RATE)
    while frame < n_frames:
        for _ in range(rng.integers(1, 5)):
            length = int(FRAME_RATE / rate * np.exp(rng.normal(0.0, 0.3)))
            length = max(length, 6)
            if rng.random() < 0.6:
                kind = _phone(rng, voice, "fricative")
                cons = int(length * rng.uniform(0.2, 0.45))
                unvoiced[frame : frame + cons] = rng.uniform(0.3, 1.0)
                fricative[frame : frame + cons] = voice["fricatives"][kind]
                frame += cons
                length -= cons
            start_vowel, end_vowel = _phone(rng, voice, "vowel", 2)
            if rng.random() < 0.6:
                end_vowel = start_vowel
            stop = min(frame + length, n_frames)
            if stop > frame:
                weight = np.linspace(0.0, 1.0, stop - frame)[:, None]
                start, end = voice["vowels"][[start_vowel, end_vowel]]
                formants[frame:stop] = (1 - weight) * start + weight * end
                voiced[frame:stop] = rng.uniform(0.5, 1.0)
                vowel_frames.append((frame, stop))
            frame = max(frame, stop)
        centre = frame - int(length / 2)
        if 0 <= centre < n_frames:
            accent[centre] = rng.uniform(-0.5, 1.0)
        frame += int(
            FRAME_RATE
            * (
                rng.uniform(0.15, 0.6)
                if rng.random() < 0.35
                else rng.uniform(0.02, 0.08)
            )
        )
    # Consonants and pauses take the formants of the nearest vowel, and the
    # smoothing then makes the formant transitions (coarticulation).
    has_vowel = np.zeros(n_frames, bool)
    for start, stop in vowel_frames:
        has_vowel[start:stop] = True
    if has_vowel.any():
        index = np.where(has_vowel, np.arange(n_frames), -1)
        index = np.maximum.accumulate(index)
        first = np.argmax(has_vowel)
        index[index < 0] = first
        formants = formants[index]
    else:
        formants[:] = voice["vowels"].mean(axis=0)
    formants = _smooth(formants, 7)
    voiced = _smooth(voiced, 3)
    unvoiced = _smooth(unvoiced, 2)
    time_axis = np.linspace(0.0, 1.0, n_frames)
    contour = 0.8 - 1.3 * time_axis
    contour += _smooth(accent, 25) * 12.0
    contour += _smooth(rng.normal(0.0, 1.0, n_frames), 31) * 3.0
    return voiced, unvoiced, formants, fricative, contour


def _stft(signal):
    """STFT frames (no centring) of a signal of (n + 3) * HOP samples."""
    frames = np.lib.stride_tricks.sliding_window_view(signal, N_FFT)[::HOP]
    return np.fft.rfft(frames * WINDOW, axis=1)


def _istft(spectrum):
    """Overlap-add inverse of :func:`_stft`, complete frames only."""
    frames = np.fft.irfft(spectrum, n=N_FFT, axis=1) * WINDOW
    n_frames = frames.shape[0]
    out = np.zeros((n_frames + 3, HOP))
    for part in range(4):
        out[part : part + n_frames] += frames[:, part * HOP : (part + 1) * HOP]
    return out[3:n_frames].reshape(-1) / 1.5


def _resonances(formants, bandwidths):
    """Magnitude response of cascaded formant resonators, [frames, bins]."""
    f = FREQS[None, None, :].astype(np.float32)
    centre = formants[:, :, None].astype(np.float32)
    half = bandwidths[:, :, None].astype(np.float32) / 2
    gain = (centre**2 + half**2) / np.sqrt(
        ((f - centre) ** 2 + half**2) * ((f + centre) ** 2 + half**2)
    )
    return np.prod(gain, axis=1)


def _complex_noise(rng, shape):
    """Complex Gaussian STFT-domain noise."""
    noise = rng.standard_normal((*shape, 2), dtype=np.float32)
    return noise.view(np.complex64)[..., 0]


def synthesise_speech(voice, duration, rng, channel=None):
    """Synthesise one utterance of a speaker, optionally through a channel.

    Arguments
    ---------
    voice : dict
        From :func:`speaker_voice`.
    duration : float
        Seconds.
    rng : numpy.random.Generator
        Source of randomness.
    channel : dict, optional
        From :func:`session_channel`; without it, clean speech at -20 dBFS.

    Returns
    -------
    numpy.ndarray
        float32 ``[round(duration * FRAME_RATE) * HOP]`` in [-1, 1].

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> wav = synthesise_speech(speaker_voice(rng), 1.0, rng)
    >>> wav.shape, wav.dtype
    ((16000,), dtype('float32'))
    """
    n_out = int(round(duration * FRAME_RATE))
    n_frames = n_out + 3
    f0_utt = voice["f0"] * 2.0 ** (rng.normal(0.0, 0.8) / 12.0)
    rate = voice["rate"] * np.exp(rng.normal(0.0, 0.1))
    voiced, unvoiced, formants, fricative, contour = _plan(
        voice, n_frames, rate, rng
    )
    formants = formants * (1.0 + rng.normal(0.0, 0.01))
    f0_frames = f0_utt * 2.0 ** (voice["f0_range"] * contour / 12.0)

    # Glottal source: pulses with jitter and shimmer, one per F0 period.
    n_samples = (n_frames + 3) * HOP
    centres = np.arange(n_frames) * HOP + N_FFT / 2
    f0 = np.interp(np.arange(n_samples), centres, f0_frames)
    cycle = np.floor(np.cumsum(f0 / SAMPLE_RATE)).astype(int)
    n_cycles = int(cycle[-1] * 1.2) + 10
    f0 = f0 * (1.0 + voice["jitter"] * rng.standard_normal(n_cycles))[cycle]
    phase = np.cumsum(f0 / SAMPLE_RATE)
    cycle = np.minimum(np.floor(phase).astype(int), n_cycles - 1)
    fraction = phase - cycle
    oq = voice["open_quotient"]
    rise = 0.7 * oq
    flow = np.where(
        fraction < rise,
        0.5 - 0.5 * np.cos(np.pi * fraction / rise),
        np.cos(0.5 * np.pi * (fraction - rise) / (oq - rise)),
    )
    flow[fraction >= oq] = 0.0
    flow *= (1.0 + voice["shimmer"] * rng.standard_normal(n_cycles))[cycle]
    source = np.diff(flow, prepend=0.0) * (SAMPLE_RATE / f0_utt) / 4.0
    aspiration = rng.standard_normal(n_samples) * (0.3 + flow)
    source += voice["breathiness"] * aspiration
    voiced_spec = _stft(source)

    octaves = np.log2(np.maximum(FREQS, 100.0) / 1000.0)
    tilt = 10.0 ** ((voice["tilt"] + rng.normal(0.0, 1.0)) * octaves / 20.0)
    bandwidths = voice["bandwidth"] * (50.0 + 0.05 * formants)
    envelope = _resonances(formants, bandwidths) * tilt
    speech = voiced_spec * envelope * voiced[:, None]

    band = np.log2(np.maximum(FREQS, 50.0)[None, :] / fricative[:, :1])
    fric_env = np.exp(-0.5 * (band / fricative[:, 1:]) ** 2)
    noise = _complex_noise(rng, speech.shape)
    speech += 0.15 * noise * fric_env * unvoiced[:, None]

    active = (voiced + unvoiced) > 0.2
    active = np.repeat(active[1 : 1 + n_out] | active[2 : 2 + n_out], HOP)
    if channel is not None:
        speech = speech * channel["response"]
    wav = _istft(speech)
    level = -20.0 if channel is None else channel["level"]
    gain = 10.0 ** ((level + voice["effort"] + rng.normal(0.0, 1.5)) / 20.0)
    wav *= gain / _rms(wav[active] if active.any() else wav)
    if channel is not None:
        background = _istft(
            _complex_noise(rng, speech.shape) * channel["noise_colour"]
        )
        wav += background * (
            _rms(wav) / _rms(background) / 10.0 ** (channel["snr"] / 20.0)
        )
    return _limit(wav)


def _rms(wav):
    """Root mean square, never zero."""
    return np.sqrt(np.mean(np.square(wav)) + 1e-12)


def _limit(wav):
    """Scale down to a peak of 0.99 when louder, as float32."""
    peak = np.max(np.abs(wav)) if wav.size else 0.0
    if peak > 0.99:
        wav = wav * (0.99 / peak)
    return wav.astype(np.float32)


def synthesise_music(duration, rng):
    """A music-like signal: notes of harmonic tones, chords and percussion.

    Arguments
    ---------
    duration : float
        Seconds.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        float32 ``[int(duration * SAMPLE_RATE)]``.

    Example
    -------
    >>> synthesise_music(0.5, np.random.default_rng(0)).shape
    (8000,)
    """
    n = int(duration * SAMPLE_RATE)
    wav = np.zeros(n)
    tempo = rng.uniform(0.15, 0.5)
    key = rng.uniform(110.0, 330.0)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    harmonics = np.arange(1, 9)
    brightness = rng.uniform(0.5, 1.5)
    onset = 0.0
    while onset < duration:
        length = tempo * rng.choice([1, 2, 4])
        start = int(onset * SAMPLE_RATE)
        t = np.arange(min(int(length * SAMPLE_RATE), n - start)) / SAMPLE_RATE
        envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t * rng.uniform(1, 6))
        for degree in rng.choice(scale, size=rng.integers(1, 4)):
            f0 = key * 2.0 ** ((degree + 12 * rng.integers(-1, 2)) / 12.0)
            amps = harmonics ** (-brightness) * (harmonics * f0 < 7500)
            tone = amps @ np.sin(2 * np.pi * f0 * harmonics[:, None] * t)
            wav[start : start + t.size] += tone * envelope
        if rng.random() < 0.5:
            hit = rng.standard_normal(t.size) * np.exp(-t * 40.0)
            wav[start : start + t.size] += 0.3 * hit
        onset += length
    return _limit(wav * 0.1 / _rms(wav))


def synthesise_noise(duration, rng):
    """A noise recording: coloured, hum, fan-like band or bursts.

    Arguments
    ---------
    duration : float
        Seconds.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        float32 ``[round(duration * FRAME_RATE) * HOP]``.

    Example
    -------
    >>> synthesise_noise(0.5, np.random.default_rng(0)).shape
    (7936,)
    """
    n_out = int(round(duration * FRAME_RATE))
    octaves = np.log2(np.maximum(FREQS, 20.0) / 1000.0)
    colour_db = rng.uniform(-9.0, 3.0) * octaves
    kind = rng.integers(4)
    if kind == 1:
        for harmonic in rng.choice([50.0, 60.0]) * np.arange(1, 8):
            colour_db += 30.0 * np.exp(-0.5 * ((FREQS - harmonic) / 12.0) ** 2)
    elif kind == 2:
        centre = rng.uniform(-2.0, 2.0)
        colour_db += 25.0 * np.exp(-0.5 * ((octaves - centre) / 0.4) ** 2)
    gain = np.ones(n_out + 3)
    if kind == 3:
        gain = _smooth(rng.random(n_out + 3) < 0.05, 5) * 5.0 + 0.1
    spectrum = _complex_noise(rng, (n_out + 3, FREQS.size))
    wav = _istft(spectrum * 10.0 ** (colour_db / 20.0) * gain[:, None])
    return _limit(wav * 0.05 / _rms(wav))


def simulate_rir(rt60, rng):
    """A simulated room impulse response with early and late reflections.

    Arguments
    ---------
    rt60 : float
        Reverberation time (seconds).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        float32, peak 1 at the direct path.

    Example
    -------
    >>> rir = simulate_rir(0.3, np.random.default_rng(0))
    >>> float(abs(rir).max())
    1.0
    """
    n = int(min(1.2 * rt60, 1.0) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    delay = rng.uniform(0.001, 0.005)
    decay = np.exp(-6.9 * t / rt60)
    late = rng.standard_normal(n) * decay * (t > delay + 0.01)
    late = np.convolve(late, np.ones(3) / 3, mode="same")
    rir = rng.uniform(0.1, 0.4) * late
    for _ in range(8):
        at = int((delay + rng.uniform(0.002, 0.04)) * SAMPLE_RATE)
        rir[min(at, n - 1)] += rng.uniform(-0.6, 0.6) * decay[min(at, n - 1)]
    rir[int(delay * SAMPLE_RATE)] = 1.0
    return (rir / np.max(np.abs(rir))).astype(np.float32)


def _video_id(rng):
    """An 11-character YouTube-like id."""
    return "".join(rng.choice(VIDEO_ALPHABET, size=11))


def _speaker_job(task):
    """Write all utterances of one speaker; return (relpath, seconds) rows."""
    root, speaker, seed, key, sizes, variability = task
    rng = _rng(seed, *key)
    voice = speaker_voice(
        rng, variability["speaker_spread"], variability["accent"]
    )
    rows = []
    for _ in range(sizes["n_videos"]):
        video = _video_id(rng)
        channel = session_channel(
            rng, variability["channel_spread"], variability["min_snr"]
        )
        os.makedirs(os.path.join(root, speaker, video), exist_ok=True)
        for utt in range(1, sizes["n_utterances"] + 1):
            duration = rng.uniform(sizes["min_duration"], sizes["max_duration"])
            wav = synthesise_speech(voice, duration, rng, channel)
            relpath = f"{speaker}/{video}/{utt:05d}.wav"
            soundfile.write(os.path.join(root, relpath), wav, SAMPLE_RATE)
            rows.append((relpath, wav.size / SAMPLE_RATE))
    return rows


def _musan_job(task):
    """Write one MUSAN-like file (music, noise or clean speech)."""
    path, category, seed, key, duration = task
    rng = _rng(seed, *key)
    if category == "music":
        wav = synthesise_music(duration, rng)
    elif category == "noise":
        wav = synthesise_noise(duration, rng)
    else:
        wav = synthesise_speech(speaker_voice(rng), duration, rng)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, wav, SAMPLE_RATE)
    return path


def _rir_job(task):
    """Write one simulated RIR."""
    path, seed, key, rt60_range = task
    rng = _rng(seed, *key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(
        path, simulate_rir(rng.uniform(*rt60_range), rng), SAMPLE_RATE
    )
    return path


def make_trials(utterances, n_trials, rng):
    """Balanced target / non-target trials, targets across sessions.

    Arguments
    ---------
    utterances : list of str
        Relative paths ``SPK/VIDEO/UTT.wav`` of the test speakers.
    n_trials : int
        Number of trials (half target, half non-target); fewer when there
        are not enough distinct pairs.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    list of tuple
        ``(label, enrol, test)``, label 1 for the same speaker.

    Example
    -------
    >>> utts = [f"id1000{s}/v{v}/0000{u}.wav" for s in range(3)
    ...         for v in range(2) for u in range(2)]
    >>> trials = make_trials(utts, 10, np.random.default_rng(0))
    >>> len(trials), sum(label for label, _, _ in trials)
    (10, 5)
    """
    parts = [u.split("/") for u in utterances]
    targets, nontargets = [], []
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            if parts[i][0] != parts[j][0]:
                nontargets.append((i, j))
            elif parts[i][1] != parts[j][1]:
                targets.append((i, j))
    half = min(n_trials // 2, len(targets), len(nontargets))
    chosen = [
        (1, targets[k]) for k in rng.choice(len(targets), half, replace=False)
    ] + [
        (0, nontargets[k])
        for k in rng.choice(len(nontargets), half, replace=False)
    ]
    order = rng.permutation(len(chosen))
    trials = []
    for k in order:
        label, (i, j) = chosen[k]
        if rng.random() < 0.5:
            i, j = j, i
        trials.append((label, utterances[i], utterances[j]))
    return trials


def _outputs(folder, with_dev_trials):
    """The paths generate_corpus returns (``dev_trials`` None without)."""
    return {
        "data_folder": os.path.join(folder, "wav"),
        "train_list": os.path.join(folder, "train_list.txt"),
        "trials": os.path.join(folder, "trials.txt"),
        "dev_trials": os.path.join(folder, "dev_trials.txt")
        if with_dev_trials
        else None,
        "noise_folder": os.path.join(folder, "musan"),
        "rir_folder": os.path.join(folder, "rirs"),
    }


def _run(function, tasks, n_jobs):
    """Map ``function`` over ``tasks`` in order, in processes if n_jobs > 1."""
    if n_jobs <= 1 or len(tasks) <= 1:
        return [function(task) for task in tasks]
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(n_jobs, len(tasks))) as pool:
        return pool.map(function, tasks, chunksize=1)


def generate_corpus(
    output_folder, seed=0, n_jobs=None, variability=None, **sizes
):
    """Generate the synthetic corpus (skipped when already complete).

    A completion marker ``corpus.json`` holding the settings is written last;
    when it exists with the same settings nothing is done. Otherwise the
    generated parts (``wav/``, ``musan/``, ``rirs/``) left by a run with
    other settings or by a killed run (recognised by its in-progress
    sentinel) are removed and written again. Folders of those names that
    this generator did not write are never removed: that is an error.

    Arguments
    ---------
    output_folder : str
        Where to write the corpus.
    seed : int
        Everything is a deterministic function of the seed and the sizes
        (not of ``n_jobs``).
    n_jobs : int, optional
        Worker processes; default: the number of usable CPU cores.
    variability : dict, optional
        Overrides of :data:`DEFAULT_VARIABILITY` (unknown keys are an
        error).
    **sizes
        Overrides of :data:`DEFAULT_SIZES` (unknown keys are an error).

    Returns
    -------
    dict
        ``data_folder`` (DIR/wav), ``train_list``, ``trials``,
        ``dev_trials`` (None without development speakers),
        ``noise_folder`` (DIR/musan), ``rir_folder`` (DIR/rirs).

    Example
    -------
    >>> import tempfile
    >>> sizes = dict(n_train_speakers=2, n_test_speakers=2, n_videos=2,
    ...              n_utterances=1, min_duration=0.5, max_duration=0.5,
    ...              n_trials=4, n_dev_speakers=2, n_dev_trials=2,
    ...              n_musan=1, musan_duration=0.5, n_rir_rooms=1, n_rirs=1)
    >>> out = generate_corpus(tempfile.mkdtemp(), n_jobs=1, **sizes)
    >>> sorted(out)  # doctest: +NORMALIZE_WHITESPACE
    ['data_folder', 'dev_trials', 'noise_folder', 'rir_folder',
     'train_list', 'trials']
    >>> open(out["train_list"]).readline().split()[0]
    'id00000'
    >>> len(open(out["trials"]).readlines())
    4
    >>> open(out["dev_trials"]).readline().split()[1][:3]
    'id2'
    """
    # Imported here so that the worker processes do not import torch.
    from speechbrain_ext.utils.io_utils import atomic_open

    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise TypeError(f"generate_corpus: unknown sizes {unknown}")
    sizes = {**DEFAULT_SIZES, **sizes}
    variability = dict(variability or {})
    unknown = sorted(set(variability) - set(DEFAULT_VARIABILITY))
    if unknown:
        raise TypeError(f"generate_corpus: unknown variability {unknown}")
    variability = {**DEFAULT_VARIABILITY, **variability}
    if min(variability.values()) < 0:
        raise ValueError("generate_corpus: variability must be >= 0")
    if not 0 < sizes["min_duration"] <= sizes["max_duration"]:
        raise ValueError(
            "generate_corpus: need 0 < min_duration <= max_duration"
        )
    settings = {"format": FORMAT_VERSION, "seed": seed, **sizes}
    if variability != DEFAULT_VARIABILITY:
        settings["variability"] = variability
    outputs = _outputs(output_folder, sizes["n_dev_speakers"] > 0)
    marker = os.path.join(output_folder, MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                done = json.load(f).get("settings")
        except (OSError, ValueError):
            done = None
        if done == settings:
            logger.info(
                "Synthetic corpus in %s already complete", output_folder
            )
            return outputs
    sentinel = os.path.join(output_folder, IN_PROGRESS)
    ours = os.path.isfile(marker) or os.path.isfile(sentinel)
    for name in ("data_folder", "noise_folder", "rir_folder"):
        if (
            not ours
            and os.path.exists(outputs[name])
            and os.listdir(outputs[name])
        ):
            raise FileExistsError(
                f"{outputs[name]}: exists and was not written by the "
                "synthetic corpus generator; choose another output_folder"
            )
    os.makedirs(output_folder, exist_ok=True)
    open(sentinel, "w").close()
    if os.path.isfile(marker):
        os.remove(marker)
    for name in ("data_folder", "noise_folder", "rir_folder"):
        shutil.rmtree(outputs[name], ignore_errors=True)
    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0))
    start = time.time()
    root = outputs["data_folder"]
    tasks = (
        [
            (root, f"id0{i:04d}", seed, (1, i), sizes, variability)
            for i in range(sizes["n_train_speakers"])
        ]
        + [
            (root, f"id1{i:04d}", seed, (2, i), sizes, variability)
            for i in range(sizes["n_test_speakers"])
        ]
        + [
            (root, f"id2{i:04d}", seed, (6, i), sizes, variability)
            for i in range(sizes["n_dev_speakers"])
        ]
    )
    musan_tasks = [
        (
            os.path.join(
                outputs["noise_folder"],
                category,
                "synth",
                f"{category}-synth-{i:04d}.wav",
            ),
            category,
            seed,
            (3, c, i),
            sizes["musan_duration"],
        )
        for c, category in enumerate(("music", "speech", "noise"))
        for i in range(sizes["n_musan"])
    ]
    rir_tasks = [
        (
            os.path.join(
                outputs["rir_folder"],
                room_type,
                f"Room{room + 1:03d}",
                f"Room{room + 1:03d}-{i + 1:05d}.wav",
            ),
            seed,
            (4, t, room, i),
            rt60_range,
        )
        for t, (room_type, rt60_range) in enumerate(ROOM_TYPES.items())
        for room in range(sizes["n_rir_rooms"])
        for i in range(sizes["n_rirs"])
    ]
    rows = _run(_speaker_job, tasks, n_jobs)
    _run(_musan_job, musan_tasks, n_jobs)
    _run(_rir_job, rir_tasks, n_jobs)
    n_train = sizes["n_train_speakers"]
    n_test = n_train + sizes["n_test_speakers"]
    with atomic_open(outputs["train_list"]) as f:
        for (_, speaker, *_), speaker_rows in zip(tasks[:n_train], rows):
            for relpath, _ in speaker_rows:
                f.write(f"{speaker} {relpath}\n")
    for name, part, n_trials, key in (
        ("trials", rows[n_train:n_test], sizes["n_trials"], 5),
        ("dev_trials", rows[n_test:], sizes["n_dev_trials"], 7),
    ):
        if outputs[name] is None:
            continue
        utterances = [relpath for r in part for relpath, _ in r]
        with atomic_open(outputs[name]) as f:
            for label, enrol, test_file in make_trials(
                utterances, n_trials, _rng(seed, key)
            ):
                f.write(f"{label} {enrol} {test_file}\n")
    seconds = sum(d for speaker_rows in rows for _, d in speaker_rows)
    with atomic_open(marker) as f:
        json.dump(
            {
                "settings": settings,
                "utterances": sum(len(r) for r in rows),
                "hours": round(seconds / 3600, 3),
                "generation_s": round(time.time() - start, 2),
            },
            f,
            indent=1,
        )
    os.remove(sentinel)
    logger.info(
        "Synthetic corpus written to %s (%.1f min of speech, %.1f s)",
        output_folder,
        seconds / 60,
        time.time() - start,
    )
    return outputs


def main(argv=None):
    """Command line: ``python -m data_prep.synthetic --output_folder DIR``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Example
    -------
    >>> import tempfile
    >>> main(["--output_folder", tempfile.mkdtemp(), "--tiny",
    ...       "--n_train_speakers", "1", "--n_test_speakers", "2",
    ...       "--max_duration", "2.0", "--n_jobs", "1"])
    """
    parser = argparse.ArgumentParser(
        description="Write the built-in synthetic speaker corpus."
    )
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_jobs", type=int, default=None)
    parser.add_argument(
        "--tiny", action="store_true", help="start from the tiny test sizes"
    )
    for key, value in {**DEFAULT_SIZES, **DEFAULT_VARIABILITY}.items():
        parser.add_argument(f"--{key}", type=type(value), default=None)
    args = parser.parse_args(argv)
    sizes = dict(TINY_SIZES if args.tiny else DEFAULT_SIZES)
    sizes.update(
        {
            k: getattr(args, k)
            for k in DEFAULT_SIZES
            if getattr(args, k) is not None
        }
    )
    variability = {
        k: getattr(args, k)
        for k in DEFAULT_VARIABILITY
        if getattr(args, k) is not None
    }
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate_corpus(
        args.output_folder,
        seed=args.seed,
        n_jobs=args.n_jobs,
        variability=variability,
        **sizes,
    )


if __name__ == "__main__":
    main()
