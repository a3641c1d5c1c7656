"""A second corpus for measurements: text-to-speech voices of espeak-ng.

A measurement tool, not a dependency: it needs the ``espeak-ng`` program
(``apt-get install espeak-ng``) and says so in one line when it is missing;
no test needs it. It writes a corpus in the layout of
:mod:`data_prep.synthetic` (``wav/SPK/VIDEO/UTT.wav``, ``train_list.txt``,
``trials.txt``, ``musan/``, ``rirs/``) whose voices are unlike the built-in
corpus's: each speaker is an espeak-ng voice variant (``+m3``, ``+f2``,
``+klatt``... ~90 of them) speaking an English accent or another language,
with a pitch and speed of their own; each utterance reads a
new random sentence. Each session ("video") passes the speech through its
own channel (microphone colouring, band limit, background noise, level:
:func:`data_prep.synthetic.session_channel`), so speaker and session are
different things. Train and test speakers are disjoint; MUSAN-like babble
is made of other espeak-ng voices, music, noise and RIRs come from the
synthetic generator. Deterministic from the seed (given the same espeak-ng).

To run::

    python -m data_prep.espeak_corpus --output_folder DIR [--seed 1] \\
        [--n_train_speakers 64 --n_test_speakers 24 ...]
"""

import speechbrain_ext.preflight  # noqa: F401

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile
from scipy.signal import resample_poly
from speechbrain.utils.logger import get_logger

from data_prep import synthetic

logger = get_logger(__name__)

ESPEAK = "espeak-ng"
MARKER = "corpus.json"
SIZES = {
    "n_train_speakers": 64,
    "n_test_speakers": 24,
    "n_videos": 2,
    "n_utterances": 4,
    "n_trials": 1500,
    "n_musan": 6,
    "musan_duration": 8.0,
    "n_rir_rooms": 2,
    "n_rirs": 3,
}
"""Default sizes: 512 training utterances of 64 speakers (the built-in
corpus: 480 of 40), 24 test speakers."""

# Accents and languages a speaker may speak (espeak-ng voice names).
LANGUAGES = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "fr",
    "de",
    "es",
    "it",
    "nl",
    "pt",
    "pl",
    "sv",
)
WORDS = (
    "the a one two little big old new good long great small right high "
    "time year people way day man woman child world life hand part place "
    "week case point number group problem fact house water room mother "
    "father night home story money music river city garden window morning "
    "evening table letter paper answer question country village market "
    "make take come give look think know find tell ask work seem feel try "
    "leave call keep start show hear play run move live believe bring "
    "write stand lose pay meet include continue learn change follow stop "
    "speak read spend grow open walk offer remember love consider appear "
    "buy wait serve send expect build stay fall reach remain suggest raise "
    "quickly slowly never always often together later again almost soon "
    "yellow green orange silver quiet bright heavy simple strong gentle"
).split()


class EspeakMissingError(RuntimeError):
    """Raised when the espeak-ng program cannot be run."""


def espeak_variants():
    """The voice variants espeak-ng offers (``m1``, ``f3``, ``klatt``...).

    Returns
    -------
    list of str
        Sorted names.

    Raises
    ------
    EspeakMissingError
        When espeak-ng is not installed.
    """
    try:
        out = subprocess.run(
            [ESPEAK, "--voices=variant"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise EspeakMissingError(
            f"{ESPEAK} is needed to generate this corpus and could not be "
            f"run ({error}); install it with: apt-get install espeak-ng"
        ) from error
    return sorted(set(re.findall(r"!v/(\S+)\s", out)))


def speak(text, voice, variant, pitch, speed):
    """One utterance from espeak-ng, as 16 kHz float64 samples.

    Arguments
    ---------
    text : str
        What to say.
    voice : str
        Language / accent voice (e.g. ``en-us``).
    variant : str
        Voice variant (e.g. ``m3``).
    pitch, speed : int
        espeak-ng's ``-p`` (0-99) and ``-s`` (words per minute).

    Returns
    -------
    numpy.ndarray
    """
    command = [
        ESPEAK,
        "-v",
        f"{voice}+{variant}",
        "-p",
        str(pitch),
        "-s",
        str(speed),
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "utterance.wav")
        subprocess.run(
            [*command, "-w", path, text], capture_output=True, check=True
        )
        if not os.path.isfile(path) or os.path.getsize(path) <= 44:
            raise RuntimeError(f"{ESPEAK} wrote no audio for {command}")
        wav, rate = soundfile.read(path, dtype="float64")
    if rate != synthetic.SAMPLE_RATE:
        divisor = np.gcd(rate, synthetic.SAMPLE_RATE)
        wav = resample_poly(
            wav, synthetic.SAMPLE_RATE // divisor, rate // divisor
        )
    return wav


def through_channel(wav, channel, rng):
    """Colour, band-limit and add background noise as a session would.

    Arguments
    ---------
    wav : numpy.ndarray
        Clean speech.
    channel : dict
        From :func:`data_prep.synthetic.session_channel`.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        float32, up to 6 STFT hops shorter (whole frames only).
    """
    hop = synthetic.HOP
    n_frames = max(1, len(wav) // hop - 3)
    padded = np.zeros((n_frames + 3) * hop)
    padded[: min(len(wav), len(padded))] = wav[: len(padded)]
    spectrum = synthetic._stft(padded) * channel["response"]
    out = synthetic._istft(spectrum)
    gain = 10.0 ** ((channel["level"] + rng.normal(0.0, 1.5)) / 20.0)
    voiced = np.abs(out) > 0.05 * np.abs(out).max()
    out *= gain / synthetic._rms(out[voiced] if voiced.any() else out)
    background = synthetic._istft(
        synthetic._complex_noise(rng, spectrum.shape) * channel["noise_colour"]
    )
    out += background * (
        synthetic._rms(out)
        / synthetic._rms(background)
        / 10.0 ** (channel["snr"] / 20.0)
    )
    return synthetic._limit(out)


def draw_speakers(n, variants, rng):
    """Distinct (variant, language, pitch, speed) speakers."""
    speakers, seen = [], set()
    while len(speakers) < n:
        voice = {
            "variant": str(rng.choice(variants)),
            "language": str(rng.choice(LANGUAGES)),
            "pitch": int(rng.integers(15, 86)),
            "speed": int(rng.integers(125, 200)),
        }
        key = (voice["variant"], voice["language"], voice["pitch"] // 10)
        if key not in seen:
            seen.add(key)
            speakers.append(voice)
    return speakers


def sentence(rng, n_words):
    """A random sentence of ``n_words`` words."""
    return " ".join(rng.choice(WORDS, size=n_words)) + "."


def _speaker_job(task):
    """Write one speaker's utterances; return their relative paths."""
    root, name, voice, seed, key, sizes = task
    rng = np.random.default_rng([seed, *key])
    rows = []
    for _ in range(sizes["n_videos"]):
        video = synthetic._video_id(rng)
        channel = synthetic.session_channel(rng)
        os.makedirs(os.path.join(root, name, video), exist_ok=True)
        for utt in range(1, sizes["n_utterances"] + 1):
            wav = speak(
                sentence(rng, int(rng.integers(6, 22))),
                voice["language"],
                voice["variant"],
                int(np.clip(voice["pitch"] + rng.integers(-4, 5), 0, 99)),
                int(voice["speed"] * np.exp(rng.normal(0.0, 0.05))),
            )
            relpath = f"{name}/{video}/{utt:05d}.wav"
            soundfile.write(
                os.path.join(root, relpath),
                through_channel(wav, channel, rng),
                synthetic.SAMPLE_RATE,
            )
            rows.append(relpath)
    return rows


def _babble_job(task):
    """Write one MUSAN-like speech file: one voice reading sentences."""
    path, voice, seed, key, duration = task
    rng = np.random.default_rng([seed, *key])
    parts, total = [], 0
    while total < duration * synthetic.SAMPLE_RATE:
        wav = speak(
            sentence(rng, 12),
            voice["language"],
            voice["variant"],
            voice["pitch"],
            voice["speed"],
        )
        parts.append(wav)
        total += len(wav)
    wav = np.concatenate(parts)[: int(duration * synthetic.SAMPLE_RATE)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(
        path,
        synthetic._limit(wav * 0.1 / synthetic._rms(wav)),
        synthetic.SAMPLE_RATE,
    )


def generate(output_folder, seed=1, n_jobs=None, **sizes):
    """Write the corpus (skipped when complete with the same settings).

    Arguments
    ---------
    output_folder : str
    seed : int
    n_jobs : int, optional
        Worker processes (default: usable cores).
    **sizes
        Overrides of :data:`SIZES`.

    Returns
    -------
    dict
        ``data_folder``, ``train_list``, ``trials``, ``noise_folder``,
        ``rir_folder``.
    """
    from speechbrain_ext.utils.io_utils import atomic_open

    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise TypeError(f"unknown sizes {unknown}")
    sizes = {**SIZES, **sizes}
    variants = espeak_variants()
    settings = {"seed": seed, **sizes, "variants": variants}
    outputs = synthetic._outputs(output_folder, with_dev_trials=False)
    marker = os.path.join(output_folder, MARKER)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f).get("settings") == settings:
                logger.info("espeak-ng corpus in %s complete", output_folder)
                return outputs
        os.remove(marker)
    for name in ("data_folder", "noise_folder", "rir_folder"):
        shutil.rmtree(outputs[name], ignore_errors=True)
    start = time.time()
    rng = np.random.default_rng([seed, 0])
    n_train, n_test = sizes["n_train_speakers"], sizes["n_test_speakers"]
    n_babble = sizes["n_musan"]
    voices = draw_speakers(n_train + n_test + n_babble, variants, rng)
    names = [f"id0{i:04d}" for i in range(n_train)] + [
        f"id1{i:04d}" for i in range(n_test)
    ]
    tasks = [
        (outputs["data_folder"], name, voice, seed, (1, i), sizes)
        for i, (name, voice) in enumerate(zip(names, voices))
    ]
    n_jobs = n_jobs or len(os.sched_getaffinity(0))
    rows = synthetic._run(_speaker_job, tasks, n_jobs)
    babble = [
        (
            os.path.join(
                outputs["noise_folder"],
                "speech",
                "espeak",
                f"speech-{i:04d}.wav",
            ),
            voice,
            seed,
            (2, i),
            sizes["musan_duration"],
        )
        for i, voice in enumerate(voices[n_train + n_test :])
    ]
    synthetic._run(_babble_job, babble, n_jobs)
    other = [
        (
            os.path.join(
                outputs["noise_folder"], kind, "synth", f"{kind}-{i:04d}.wav"
            ),
            kind,
            seed,
            (3, c, i),
            sizes["musan_duration"],
        )
        for c, kind in enumerate(("music", "noise"))
        for i in range(sizes["n_musan"])
    ]
    synthetic._run(synthetic._musan_job, other, n_jobs)
    rirs = [
        (
            os.path.join(
                outputs["rir_folder"],
                room_type,
                f"Room{room + 1:03d}",
                f"Room{room + 1:03d}-{i + 1:05d}.wav",
            ),
            seed,
            (4, t, room, i),
            rt60,
        )
        for t, (room_type, rt60) in enumerate(synthetic.ROOM_TYPES.items())
        for room in range(sizes["n_rir_rooms"])
        for i in range(sizes["n_rirs"])
    ]
    synthetic._run(synthetic._rir_job, rirs, n_jobs)
    with atomic_open(outputs["train_list"]) as f:
        for name, speaker_rows in zip(names[:n_train], rows[:n_train]):
            f.writelines(f"{name} {relpath}\n" for relpath in speaker_rows)
    test = [
        relpath for speaker_rows in rows[n_train:] for relpath in speaker_rows
    ]
    trials = synthetic.make_trials(
        test, sizes["n_trials"], np.random.default_rng([seed, 5])
    )
    with atomic_open(outputs["trials"]) as f:
        f.writelines(f"{label} {a} {b}\n" for label, a, b in trials)
    with atomic_open(marker) as f:
        json.dump(
            {
                "settings": settings,
                "speakers": dict(zip(names, voices)),
                "generation_s": round(time.time() - start, 1),
            },
            f,
            indent=1,
        )
    logger.info(
        "espeak-ng corpus: %d train, %d test speakers in %s (%.0f s)",
        n_train,
        n_test,
        output_folder,
        time.time() - start,
    )
    return outputs


def main(argv=None):
    """Command line: ``python -m data_prep.espeak_corpus --output_folder DIR``.

    Arguments
    ---------
    argv : list of str, optional
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n_jobs", type=int, default=None)
    for key, value in SIZES.items():
        parser.add_argument(f"--{key}", type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate(
            args.output_folder,
            seed=args.seed,
            n_jobs=args.n_jobs,
            **{key: getattr(args, key) for key in SIZES},
        )
    except EspeakMissingError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
