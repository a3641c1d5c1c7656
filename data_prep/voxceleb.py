"""Manifests of a VoxCeleb-layout tree, and the official trial lists.

A VoxCeleb1 or VoxCeleb2 wav root holds ``SPEAKER/VIDEO/UTT.wav`` files.
:func:`prepare_voxceleb` scans it (durations from the file headers, never by
decoding; one process per CPU core) and writes:

- ``NAME.csv``: a SpeechBrain CSV manifest with columns
  ``ID,duration,wav,spk_id,video``. ``ID`` is the path relative to the data
  root (``id10001/1zcIwhmdeo4/00001.wav``, the key of the embeddings files),
  ``wav`` is ``$data_root/`` + that path, resolved by SpeechBrain's CSV
  loader (see :func:`manifest_dataset`), so the manifest survives a move of
  the data.
- ``NAME_list.txt``: ``SPEAKER RELPATH`` lines, the list format of the
  reference code.
- ``NAME_skipped.txt``: ``RELPATH<TAB>PROBLEM`` for every file left out:
  unreadable, empty (0 bytes), no samples, wrong sample rate, more than one
  channel, shorter than ``min_duration`` or than WavLM's 400-sample receptive
  field, NaN or infinite samples, or outside the layout. Each one is
  also logged on one line, followed by the count.
- a copy of each trial list given (``LABEL ENROL TEST`` lines, checked: every
  line well formed, every file present and usable).
- ``NAME_prepare.json``: the settings and a fingerprint of the inputs; a
  second run with the same settings on unchanged inputs does nothing (as
  SpeechBrain's ``voxceleb_prepare``), a changed data folder or trial list
  is prepared again.

Every output is written atomically.

Example
-------
>>> import tempfile, soundfile, numpy as np
>>> root = tempfile.mkdtemp()
>>> os.makedirs(os.path.join(root, "id1", "vid"))
>>> soundfile.write(os.path.join(root, "id1", "vid", "00001.wav"),
...                 np.zeros(16000, dtype="float32"), 16000)
>>> out = prepare_voxceleb(root, tempfile.mkdtemp(), n_jobs=1)
>>> print(open(out["csv"]).read().strip())
ID,duration,wav,spk_id,video
id1/vid/00001.wav,1.0,$data_root/id1/vid/00001.wav,id1,vid
"""

import speechbrain_ext.preflight  # noqa: F401

import argparse
import csv
import hashlib
import json
import logging
import multiprocessing
import os
import re

import soundfile
from speechbrain.utils.logger import get_logger

from speechbrain_ext.dataio.audio import WAVLM_MIN_SAMPLES, count_nonfinite
from speechbrain_ext.dataio.lists import TrialListError, read_trials

logger = get_logger(__name__)

LAYOUT_PROBLEM = "not in the SPEAKER/VIDEO/UTT.wav layout"
UNSAFE_NAME = re.compile(r"[\s$]")


def check_audio(
    path, sample_rate=16000, min_duration=0.0, min_samples=WAVLM_MIN_SAMPLES
):
    """Read an audio file's header and say what is wrong with it, if anything.

    Only float files are decoded, to find NaN or infinite samples (integer
    PCM cannot hold them).

    Arguments
    ---------
    path : str
        The file.
    sample_rate : int
        The expected sample rate.
    min_duration : float
        Shorter files are a problem (seconds).
    min_samples : int
        Fewer samples is a problem (default: WavLM's receptive field, 400).

    Returns
    -------
    duration : float or None
        Seconds, from the header (None when unreadable).
    problem : str or None
        None for a usable file, else a short description.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros((8000, 2), "float32"), 8000)
    >>> check_audio(path)
    (1.0, 'sample rate 8000 Hz, expected 16000')
    >>> check_audio(path, sample_rate=8000)
    (1.0, '2 channels, expected mono')
    """
    try:
        if os.stat(path).st_size == 0:
            return None, "empty file (0 bytes)"
        with soundfile.SoundFile(path) as f:
            frames, rate, channels = f.frames, f.samplerate, f.channels
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        message = str(error).strip().splitlines()[0] if str(error) else ""
        return None, f"unreadable ({type(error).__name__}: {message})"
    duration = frames / rate
    if frames == 0:
        return 0.0, "no samples"
    if rate != sample_rate:
        return duration, f"sample rate {rate} Hz, expected {sample_rate}"
    if channels != 1:
        return duration, f"{channels} channels, expected mono"
    if duration < min_duration:
        return duration, (
            f"duration {duration:.3f} s shorter than min_duration "
            f"{min_duration} s"
        )
    if frames < min_samples:
        return duration, (
            f"{frames} samples, fewer than {min_samples} (the receptive "
            "field of WavLM)"
        )
    try:
        nonfinite = count_nonfinite(path)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        message = str(error).strip().splitlines()[0] if str(error) else ""
        return duration, f"unreadable ({type(error).__name__}: {message})"
    if nonfinite:
        return duration, f"{nonfinite} samples are NaN or infinite"
    return duration, None


def _list_folder(path, relpath, bad):
    """The entries of a folder; an unreadable one is added to ``bad``."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError as error:
        bad.append((relpath + "/", f"unreadable folder ({error.strerror})"))
        return []


def _scan_speaker(task):
    """Check every ``VIDEO/UTT.wav`` of one speaker folder."""
    data_folder, speaker, sample_rate, min_duration, min_samples = task
    good, bad = [], []
    path = os.path.join(data_folder, speaker)
    for video in _list_folder(path, speaker, bad):
        if not video.is_dir():
            if video.name.endswith(".wav"):
                bad.append((f"{speaker}/{video.name}", LAYOUT_PROBLEM))
            continue
        prefix = f"{speaker}/{video.name}"
        for utt in _list_folder(video.path, prefix, bad):
            relpath = f"{prefix}/{utt.name}"
            if utt.is_dir():
                bad.append((relpath + "/", LAYOUT_PROBLEM))
            elif utt.name.endswith(".wav"):
                duration, problem = check_audio(
                    utt.path, sample_rate, min_duration, min_samples
                )
                if problem is None and UNSAFE_NAME.search(relpath):
                    problem = "name has whitespace or '$' (breaks the lists)"
                if problem is None:
                    good.append((relpath, duration))
                else:
                    bad.append((relpath, problem))
    return good, bad


def scan_folder(
    data_folder,
    sample_rate=16000,
    min_duration=0.0,
    n_jobs=None,
    min_samples=WAVLM_MIN_SAMPLES,
):
    """Find and check every ``SPEAKER/VIDEO/UTT.wav`` under a data root.

    Arguments
    ---------
    data_folder : str
        The wav root.
    sample_rate : int
        The expected sample rate.
    min_duration : float
        Shorter files are left out (seconds).
    n_jobs : int, optional
        Processes (default: the usable CPU cores).
    min_samples : int
        Files with fewer samples are left out.

    Returns
    -------
    good : list of tuple
        ``(relpath, duration)`` of usable files, sorted.
    bad : list of tuple
        ``(relpath, problem)`` of the others, sorted.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "id1", "video"))
    >>> open(os.path.join(root, "id1", "video", "00001.wav"), "w").close()
    >>> scan_folder(root, n_jobs=1)
    ([], [('id1/video/00001.wav', 'empty file (0 bytes)')])
    """
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(f"{data_folder}: data folder not found")
    good, bad = [], []
    tasks = []
    with os.scandir(data_folder) as speakers:
        for speaker in speakers:
            if speaker.is_dir():
                tasks.append(
                    (
                        data_folder,
                        speaker.name,
                        sample_rate,
                        min_duration,
                        min_samples,
                    )
                )
            elif speaker.name.endswith(".wav"):
                bad.append((speaker.name, LAYOUT_PROBLEM))
    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0))
    if n_jobs <= 1 or len(tasks) <= 1:
        results = map(_scan_speaker, tasks)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(n_jobs)
        results = pool.imap_unordered(_scan_speaker, tasks, chunksize=4)
    try:
        for speaker_good, speaker_bad in results:
            good.extend(speaker_good)
            bad.extend(speaker_bad)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return sorted(good), sorted(bad)


def check_trial_files(trials, path, data_folder, usable, skipped=None):
    """Raise if a trial names a file that is missing or was skipped.

    Arguments
    ---------
    trials : list of tuple
        From :func:`read_trials`.
    path : str
        The trial list (for the message).
    data_folder : str
        The wav root (for the message).
    usable : set of str
        Relative paths of the usable files.
    skipped : dict, optional
        ``{relpath: problem}`` of files present but left out.

    Raises
    ------
    TrialListError
        With the count and the first ten missing files.

    Example
    -------
    >>> trials = [(1, "a/b/1.wav", "a/c/2.wav")]
    >>> check_trial_files(trials, "t.txt", "/data", {"a/b/1.wav"})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    speechbrain_ext.dataio.lists.TrialListError: t.txt: 1 of 2 ...(missing)
    """
    skipped = skipped or {}
    files = sorted({name for _, a, b in trials for name in (a, b)})
    missing = [name for name in files if name not in usable]
    if missing:
        shown = ", ".join(
            f"{name} ({skipped.get(name, 'missing')})" for name in missing[:10]
        )
        more = ", ..." if len(missing) > 10 else ""
        raise TrialListError(
            f"{path}: {len(missing)} of {len(files)} files named in the "
            f"trials are not usable in {data_folder}: {shown}{more}"
        )


def manifest_dataset(csv_path, data_folder):
    """Load a manifest as a SpeechBrain ``DynamicItemDataset``.

    Arguments
    ---------
    csv_path : str
        A manifest written by :func:`prepare_voxceleb`.
    data_folder : str
        The wav root that replaces ``$data_root``.

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> _ = open(path, "w").write("ID,duration,wav,spk_id,video\\n"
    ...     "s/v/1.wav,1.0,$data_root/s/v/1.wav,s,v\\n")
    >>> data = manifest_dataset(path, "/data")
    >>> data.set_output_keys(["id", "wav"])
    >>> data[0]
    {'id': 's/v/1.wav', 'wav': '/data/s/v/1.wav'}
    """
    # Imported here (as atomic_open below): scanning workers skip torch.
    from speechbrain.dataio.dataset import DynamicItemDataset

    return DynamicItemDataset.from_csv(
        csv_path, replacements={"data_root": os.path.abspath(data_folder)}
    )


def _outputs(output_folder, name, trial_lists):
    """The paths prepare_voxceleb writes."""
    return {
        "csv": os.path.join(output_folder, f"{name}.csv"),
        "list": os.path.join(output_folder, f"{name}_list.txt"),
        "skipped": os.path.join(output_folder, f"{name}_skipped.txt"),
        "trials": {
            os.path.basename(path): os.path.join(
                output_folder, os.path.basename(path)
            )
            for path in trial_lists
        },
    }


def tree_fingerprint(data_folder):
    """A digest of every ``SPEAKER/VIDEO/*.wav``: names, sizes, mtimes.

    Adding, removing, renaming, replacing or rewriting a file changes it;
    nothing is decoded (one ``stat`` per file).

    Arguments
    ---------
    data_folder : str
        The wav root.

    Returns
    -------
    str
        Hex SHA-256 with the number of files, e.g. ``"3:1f0c..."``.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "id1", "vid"))
    >>> before = tree_fingerprint(root)
    >>> open(os.path.join(root, "id1", "vid", "1.wav"), "w").close()
    >>> tree_fingerprint(root) == before, tree_fingerprint(root)[:2]
    (False, '1:')
    """
    digest = hashlib.sha256()
    count = 0
    stack = [(data_folder, "")]
    while stack:
        folder, relative = stack.pop()
        try:
            with os.scandir(folder) as entries:
                entries = sorted(entries, key=lambda entry: entry.name)
        except OSError:
            digest.update(f"unreadable {relative}\n".encode())
            continue
        for entry in entries:
            relpath = f"{relative}{entry.name}"
            if entry.is_dir() and relative.count("/") < 2:
                stack.append((entry.path, relpath + "/"))
            elif entry.name.endswith(".wav"):
                stat = entry.stat()
                digest.update(
                    f"{relpath} {stat.st_size} {stat.st_mtime_ns}\n".encode()
                )
                count += 1
    return f"{count}:{digest.hexdigest()}"


def prepare_voxceleb(
    data_folder,
    output_folder,
    name="train",
    trial_lists=(),
    min_duration=0.0,
    sample_rate=16000,
    n_jobs=None,
    min_samples=WAVLM_MIN_SAMPLES,
):
    """Write the manifest, list and checked trial lists of a VoxCeleb tree.

    Meant to be called with ``speechbrain.utils.distributed.run_on_main``.
    Skipped when a previous run with the same settings on the same inputs
    completed: the settings, a fingerprint of the wav tree (names, sizes and
    modification times of its files, :func:`tree_fingerprint`) and of the
    trial lists are compared, so a changed data folder is prepared again.

    Arguments
    ---------
    data_folder : str
        The wav root (``SPEAKER/VIDEO/UTT.wav``).
    output_folder : str
        Where to write.
    name : str
        Prefix of the outputs (``NAME.csv``, ``NAME_list.txt``, ...).
    trial_lists : list of str
        Trial lists on files of this tree, checked and copied.
    min_duration : float
        Shorter files are left out (seconds).
    sample_rate : int
        The expected sample rate.
    n_jobs : int, optional
        Scanning processes (default: the usable CPU cores).
    min_samples : int
        Files with fewer samples are left out (default: WavLM's receptive
        field).

    Returns
    -------
    dict
        ``csv``, ``list``, ``skipped`` and ``trials`` (``{basename: path}``).

    Raises
    ------
    TrialListError
        A trial list is malformed or names missing / unusable files; nothing
        is written then.
    """
    from speechbrain_ext.utils.io_utils import atomic_open

    trial_lists = [os.path.abspath(path) for path in trial_lists]
    outputs = _outputs(output_folder, name, trial_lists)
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(f"{data_folder}: data folder not found")
    settings = {
        "data_folder": os.path.abspath(data_folder),
        "tree": tree_fingerprint(data_folder),
        "trial_lists": {
            path: [os.stat(path).st_size, os.stat(path).st_mtime_ns]
            for path in trial_lists
            if os.path.exists(path)
        },
        "min_duration": min_duration,
        "min_samples": min_samples,
        "sample_rate": sample_rate,
    }
    marker = os.path.join(output_folder, f"{name}_prepare.json")
    done = _already_done(marker, settings, outputs)
    if done is True:
        logger.info(
            "%s: already prepared with these settings and inputs, skipping",
            marker,
        )
        return outputs
    if done:
        logger.info("%s: %s; preparing again", marker, done)
    trials = {path: read_trials(path) for path in trial_lists}
    good, bad = scan_folder(
        data_folder, sample_rate, min_duration, n_jobs, min_samples
    )
    for relpath, problem in bad:
        logger.warning(
            "%s: %s, skipped", os.path.join(data_folder, relpath), problem
        )
    usable = {relpath for relpath, _ in good}
    for path, rows in trials.items():
        check_trial_files(rows, path, data_folder, usable, dict(bad))

    os.makedirs(output_folder, exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)
    with atomic_open(outputs["csv"], newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ID", "duration", "wav", "spk_id", "video"])
        for relpath, duration in good:
            speaker, video, _ = relpath.split("/")
            writer.writerow(
                [relpath, duration, f"$data_root/{relpath}", speaker, video]
            )
    with atomic_open(outputs["list"]) as f:
        f.writelines(
            f"{relpath.split('/')[0]} {relpath}\n" for relpath, _ in good
        )
    with atomic_open(outputs["skipped"]) as f:
        f.writelines(f"{relpath}\t{problem}\n" for relpath, problem in bad)
    for path, rows in trials.items():
        with atomic_open(outputs["trials"][os.path.basename(path)]) as f:
            f.writelines(f"{label} {a} {b}\n" for label, a, b in rows)
    with atomic_open(marker) as f:
        json.dump(
            {"settings": settings, "files": len(good), "skipped": len(bad)},
            f,
            indent=1,
        )
    hours = sum(duration for _, duration in good) / 3600
    logger.info(
        "%s: %d files (%.1f h) in %s; %d skipped%s",
        data_folder,
        len(good),
        hours,
        outputs["csv"],
        len(bad),
        f" (listed in {outputs['skipped']})" if bad else "",
    )
    return outputs


def _already_done(marker, settings, outputs):
    """True when the marker holds these settings and every output exists.

    Otherwise False (nothing prepared yet) or a string saying what changed.
    """
    paths = [outputs["csv"], outputs["list"], outputs["skipped"]]
    paths += list(outputs["trials"].values())
    if not os.path.isfile(marker):
        return False
    if not all(os.path.isfile(path) for path in paths):
        return "an output is missing"
    try:
        with open(marker, encoding="utf-8") as f:
            previous = json.load(f).get("settings") or {}
    except (OSError, ValueError):
        return "unreadable marker"
    changed = [key for key in settings if previous.get(key) != settings[key]]
    if not changed:
        return True
    names = {"tree": "the files of the data folder"}
    return "changed since the last preparation: " + ", ".join(
        names.get(key, key) for key in changed
    )


def main(argv=None):
    """Command line: ``python -m data_prep.voxceleb --data_folder ROOT
    --output_folder OUT [--trials veri_test2.txt ...]``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0, or 1 with one error line.

    Example
    -------
    >>> import tempfile
    >>> main(["--data_folder", tempfile.mkdtemp() + "/missing",
    ...       "--output_folder", tempfile.mkdtemp()])
    1
    """
    parser = argparse.ArgumentParser(
        description="Write the manifests of a VoxCeleb-layout wav tree."
    )
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--name", default="train")
    parser.add_argument("--trials", nargs="*", default=[])
    parser.add_argument("--min_duration", type=float, default=0.0)
    parser.add_argument(
        "--min_samples",
        type=int,
        default=WAVLM_MIN_SAMPLES,
        help="files with fewer samples are left out (WavLM needs 400)",
    )
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--n_jobs", type=int, default=None)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare_voxceleb(
            args.data_folder,
            args.output_folder,
            name=args.name,
            trial_lists=args.trials,
            min_duration=args.min_duration,
            sample_rate=args.sample_rate,
            n_jobs=args.n_jobs,
            min_samples=args.min_samples,
        )
    except (TrialListError, OSError) as error:
        logger.error("error: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
