"""CSV manifests of MUSAN and RIR files for SpeechBrain's augmentation.

SpeechBrain's ``AddNoise(csv_file=...)`` and ``AddReverb(csv_file=...)`` read
an extended CSV with columns ``ID,duration,wav,wav_format,wav_opts``
(``speechbrain.dataio.legacy``). This module writes them:

- from a MUSAN tree (``music/``, ``speech/``, ``noise/``, each holding
  ``GROUP/FILE.wav``), one CSV per category: ``music.csv``, ``speech.csv``
  (the source of babble) and ``noise.csv``;
- from a tree of simulated room impulse responses in the reference layout
  ``TYPE/ROOM/FILE.wav``: ``rirs.csv``;
- from CSVs that SpeechBrain's own preparation wrote (its noise and RIR
  CSVs): the same CSV, checked.

Paths are written absolute. Files that cannot be used (unreadable, empty,
wrong sample rate, more than one channel) are left out with one line each
and a count; a CSV row in a format other than audio (e.g. ``pkl``, which
would be unpickled) is refused.

Example
-------
>>> import tempfile, numpy as np, soundfile
>>> root = tempfile.mkdtemp()
>>> os.makedirs(os.path.join(root, "smallroom", "Room001"))
>>> soundfile.write(os.path.join(root, "smallroom", "Room001", "r1.wav"),
...                 np.r_[1.0, np.zeros(799)], 16000)
>>> out = prepare_augmentation(tempfile.mkdtemp(), rir_folder=root)
>>> print(open(out["rir"]).read().splitlines()[0])
ID,duration,wav,wav_format,wav_opts
"""

import speechbrain_ext.preflight  # noqa: F401

import argparse
import csv
import logging
import os

from speechbrain.utils.logger import get_logger

from data_prep.voxceleb import check_audio

logger = get_logger(__name__)

# File name of each kind of augmentation CSV in an output folder.
CSV_NAMES = {
    "music": "music.csv",
    "speech": "speech.csv",
    "noise": "noise.csv",
    "rir": "rirs.csv",
}

MUSAN_CATEGORIES = ("music", "speech", "noise")
AUDIO_FORMATS = ("wav", "flac", "ogg")
HEADER = ["ID", "duration", "wav", "wav_format", "wav_opts"]


class AugmentationDataError(ValueError):
    """An augmentation folder or CSV cannot be used."""


def _nested_wavs(folder, depth):
    """Relative paths of the ``.wav`` files exactly ``depth`` folders down."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if depth == 0:
                if entry.name.endswith(".wav") and entry.is_file():
                    found.append(entry.name)
            elif entry.is_dir():
                found.extend(
                    f"{entry.name}/{relpath}"
                    for relpath in _nested_wavs(entry.path, depth - 1)
                )
    return sorted(found)


def write_audio_csv(paths, csv_path, sample_rate=16000, ids=None):
    """Write an ``AddNoise``/``AddReverb`` CSV of the usable files.

    Arguments
    ---------
    paths : list of str
        Audio files.
    csv_path : str
        The CSV to write (atomically).
    sample_rate : int
        The expected sample rate.
    ids : list of str, optional
        One unique ID per file (default: derived from the paths).

    Returns
    -------
    int
        Number of rows written (usable files).

    Raises
    ------
    AugmentationDataError
        When no file is usable.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> good = os.path.join(folder, "good.wav")
    >>> soundfile.write(good, np.zeros(1600, "float32"), 16000)
    >>> empty = os.path.join(folder, "empty.wav")
    >>> open(empty, "w").close()
    >>> write_audio_csv([good, empty], os.path.join(folder, "n.csv"))
    1
    """
    from speechbrain_ext.utils.io_utils import atomic_open

    if ids is None:
        ids = [
            os.path.splitext(os.path.abspath(p))[0].lstrip("/") for p in paths
        ]
    rows, n_bad = [], 0
    for data_id, path in zip(ids, paths):
        duration, problem = check_audio(path, sample_rate)
        if problem is not None:
            logger.warning("%s: %s, skipped", path, problem)
            n_bad += 1
            continue
        extension = os.path.splitext(path)[1].lstrip(".").lower()
        rows.append([data_id, duration, os.path.abspath(path), extension, ""])
    if n_bad:
        logger.warning(
            "%s: %d of %d files skipped", csv_path, n_bad, len(paths)
        )
    if not rows:
        raise AugmentationDataError(f"{csv_path}: no usable audio file")
    with atomic_open(csv_path, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    return len(rows)


def prepare_musan(musan_folder, output_folder, sample_rate=16000):
    """One CSV per MUSAN category (``music``, ``speech``, ``noise``).

    Arguments
    ---------
    musan_folder : str
        Holds ``music/``, ``speech/`` and ``noise/``, each with
        ``GROUP/FILE.wav`` files.
    output_folder : str
        Where to write ``music.csv``, ``speech.csv``, ``noise.csv``.
    sample_rate : int
        The expected sample rate.

    Returns
    -------
    dict
        ``{category: csv_path}``.

    Raises
    ------
    AugmentationDataError
        When a category folder is missing or has no usable file.
    """
    found = {}
    for category in MUSAN_CATEGORIES:
        folder = os.path.join(musan_folder, category)
        if not os.path.isdir(folder):
            raise AugmentationDataError(
                f"{folder}: MUSAN category folder not found (expected "
                f"{', '.join(MUSAN_CATEGORIES)} under {musan_folder})"
            )
        found[category] = _nested_wavs(folder, 1)
        if not found[category]:
            raise AugmentationDataError(
                f"{folder}: no GROUP/FILE.wav files in this MUSAN category"
            )
    outputs = {}
    for category, relpaths in found.items():
        folder = os.path.join(musan_folder, category)
        outputs[category] = os.path.join(output_folder, CSV_NAMES[category])
        write_audio_csv(
            [os.path.join(folder, r) for r in relpaths],
            outputs[category],
            sample_rate,
            ids=[f"{category}/{os.path.splitext(r)[0]}" for r in relpaths],
        )
    return outputs


def prepare_rirs(rir_folder, csv_path, sample_rate=16000):
    """A CSV of the ``TYPE/ROOM/FILE.wav`` impulse responses of a folder.

    Arguments
    ---------
    rir_folder : str
        The RIR tree (e.g. ``simulated_rirs``).
    csv_path : str
        The CSV to write.
    sample_rate : int
        The expected sample rate.

    Returns
    -------
    str
        ``csv_path``.

    Raises
    ------
    AugmentationDataError
        When there is no usable ``TYPE/ROOM/FILE.wav`` file.
    """
    relpaths = _nested_wavs(rir_folder, 2)
    if not relpaths:
        raise AugmentationDataError(
            f"{rir_folder}: no TYPE/ROOM/FILE.wav impulse responses"
        )
    write_audio_csv(
        [os.path.join(rir_folder, r) for r in relpaths],
        csv_path,
        sample_rate,
        ids=[os.path.splitext(r)[0] for r in relpaths],
    )
    return csv_path


def check_speechbrain_csv(
    csv_path, output_path, sample_rate=16000, replacements=None
):
    """Check a SpeechBrain noise/RIR CSV and write its usable rows.

    Arguments
    ---------
    csv_path : str
        A CSV with ``ID,duration,wav,wav_format,wav_opts`` (as written by
        ``speechbrain.augment.preparation``).
    output_path : str
        Where to write the checked CSV (absolute paths).
    sample_rate : int
        The expected sample rate.
    replacements : dict, optional
        ``$key`` substitutions in the ``wav`` column.

    Returns
    -------
    str
        ``output_path``.

    Raises
    ------
    AugmentationDataError
        ``FILE:LINE: problem`` for a malformed CSV or a non-audio format.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "rir.csv")
    >>> _ = open(path, "w").write("ID,duration,wav,wav_format,wav_opts\\n"
    ...                           "r1,1.0,x.pkl,pkl,\\n")
    >>> check_speechbrain_csv(path, os.path.join(folder, "out.csv"))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    data_prep.augmentation.AugmentationDataError: ...rir.csv:2: format 'pkl'...
    """
    replacements = replacements or {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = next(reader, [])
        if header[:3] != HEADER[:3]:
            raise AugmentationDataError(
                f"{csv_path}:1: expected columns starting with "
                f"{','.join(HEADER[:3])}, got {','.join(header)}"
            )
        ids, paths = [], []
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 4:
                raise AugmentationDataError(
                    f"{csv_path}:{number}: expected "
                    f"{','.join(HEADER)}, got {len(row)} fields"
                )
            data_id, _, path, audio_format = row[:4]
            if audio_format.lower() not in AUDIO_FORMATS:
                raise AugmentationDataError(
                    f"{csv_path}:{number}: format {audio_format!r} is not "
                    f"audio ({', '.join(AUDIO_FORMATS)})"
                )
            for key, value in replacements.items():
                path = path.replace(f"${key}", value)
            if "$" in path:
                raise AugmentationDataError(
                    f"{csv_path}:{number}: {path!r} needs a replacement "
                    "that was not given"
                )
            if not os.path.isabs(path):
                path = os.path.join(os.path.dirname(csv_path), path)
            ids.append(data_id)
            paths.append(path)
    if len(set(ids)) != len(ids):
        raise AugmentationDataError(f"{csv_path}: duplicate IDs")
    write_audio_csv(paths, output_path, sample_rate, ids=ids)
    return output_path


def augmentation_csvs(folder):
    """The augmentation CSVs that :func:`prepare_augmentation` left in
    ``folder`` (every process can read them after a ``run_on_main``).

    Arguments
    ---------
    folder : str
        The ``output_folder`` of :func:`prepare_augmentation`.

    Returns
    -------
    dict
        CSV paths under the keys ``music``, ``speech``, ``noise``, ``rir``
        (those present).

    Example
    -------
    >>> import tempfile
    >>> augmentation_csvs(tempfile.mkdtemp())
    {}
    """
    paths = {
        kind: os.path.join(folder, name) for kind, name in CSV_NAMES.items()
    }
    return {kind: path for kind, path in paths.items() if os.path.isfile(path)}


def prepare_augmentation(
    output_folder, noise_folder=None, rir_folder=None, sample_rate=16000
):
    """Write every augmentation CSV the inputs allow.

    Arguments
    ---------
    output_folder : str
        Where to write the CSVs.
    noise_folder : str, optional
        A MUSAN tree (-> ``music``, ``speech``, ``noise`` CSVs) or a
        SpeechBrain noise CSV (-> ``noise``).
    rir_folder : str, optional
        A ``TYPE/ROOM/FILE.wav`` tree or a SpeechBrain RIR CSV (-> ``rir``).
    sample_rate : int
        The expected sample rate.

    Returns
    -------
    dict
        CSV paths under the keys ``music``, ``speech``, ``noise``, ``rir``
        (those available). CSVs of a kind these inputs do not give, left
        by an earlier call, are removed.
    """
    outputs = {}
    if noise_folder is not None:
        if os.path.isfile(noise_folder):
            outputs["noise"] = check_speechbrain_csv(
                noise_folder,
                os.path.join(output_folder, CSV_NAMES["noise"]),
                sample_rate,
            )
        elif os.path.isdir(noise_folder):
            outputs.update(
                prepare_musan(noise_folder, output_folder, sample_rate)
            )
        else:
            raise AugmentationDataError(f"{noise_folder}: not found")
    if rir_folder is not None:
        csv_path = os.path.join(output_folder, CSV_NAMES["rir"])
        if os.path.isfile(rir_folder):
            outputs["rir"] = check_speechbrain_csv(
                rir_folder, csv_path, sample_rate
            )
        elif os.path.isdir(rir_folder):
            outputs["rir"] = prepare_rirs(rir_folder, csv_path, sample_rate)
        else:
            raise AugmentationDataError(f"{rir_folder}: not found")
    for kind, path in augmentation_csvs(output_folder).items():
        if kind not in outputs:
            os.remove(path)
    return outputs


def main(argv=None):
    """Command line: ``python -m data_prep.augmentation --output_folder OUT
    [--noise_folder MUSAN] [--rir_folder RIRS]``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0, or 1 with one error line.
    """
    parser = argparse.ArgumentParser(
        description="Write the AddNoise/AddReverb CSVs of MUSAN and RIRs."
    )
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--noise_folder", default=None)
    parser.add_argument("--rir_folder", default=None)
    parser.add_argument("--sample_rate", type=int, default=16000)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        outputs = prepare_augmentation(
            args.output_folder,
            args.noise_folder,
            args.rir_folder,
            args.sample_rate,
        )
    except (AugmentationDataError, OSError) as error:
        logger.error("error: %s", error)
        return 1
    for key, path in outputs.items():
        logger.info("%s: %s", key, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
