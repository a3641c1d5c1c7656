"""Convert VoxCeleb2's m4a files to 16 kHz mono wav, in parallel, resumably.

VoxCeleb2 is distributed as AAC in ``.m4a`` files (``SPEAKER/VIDEO/UTT.m4a``);
the recipe reads 16 kHz mono wav. Each file is decoded by ``ffmpeg`` into a
temporary file beside the target, checked, then renamed, so an interrupted
conversion never leaves a half-written wav under the final name. A target
that already exists and is a readable 16 kHz mono wav with samples is kept,
so running the command again only converts what is missing or broken.

Usage::

    python -m data_prep.convert_m4a --input_folder vox2/aac \\
        --output_folder vox2/wav [--n_jobs 8]

Example
-------
>>> import tempfile
>>> find_ffmpeg(search_path=tempfile.mkdtemp())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
data_prep.convert_m4a.FfmpegNotFoundError: ffmpeg not found on PATH; ...
"""

import speechbrain_ext.preflight  # noqa: F401

import argparse
import concurrent.futures
import contextlib
import logging
import os
import shutil
import subprocess

import soundfile
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

SAMPLE_RATE = 16000


class FfmpegNotFoundError(RuntimeError):
    """Raised when the ``ffmpeg`` program is not on the PATH."""


def find_ffmpeg(search_path=None):
    """The path of the ``ffmpeg`` program, or a clear error saying how to
    install it.

    Arguments
    ---------
    search_path : str, optional
        Folders to search (default: the ``PATH`` environment variable).

    Returns
    -------
    str

    Raises
    ------
    FfmpegNotFoundError
        When there is no ``ffmpeg``.
    """
    ffmpeg = shutil.which("ffmpeg", path=search_path)
    if ffmpeg is None:
        raise FfmpegNotFoundError(
            "ffmpeg not found on PATH; install it (e.g. `sudo apt-get install "
            "ffmpeg` on Debian/Ubuntu, `conda install -c conda-forge ffmpeg` "
            "or `brew install ffmpeg`) and run the conversion again"
        )
    return ffmpeg


def is_converted(path):
    """Whether ``path`` is a readable 16 kHz mono audio file with samples.

    Arguments
    ---------
    path : str
        The file.

    Returns
    -------
    bool

    Example
    -------
    >>> import tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> is_converted(path)
    False
    >>> soundfile.write(path, np.zeros(160, "float32"), 16000)
    >>> is_converted(path)
    True
    """
    try:
        with soundfile.SoundFile(path) as f:
            return (
                f.samplerate == SAMPLE_RATE and f.channels == 1 and f.frames > 0
            )
    except (OSError, RuntimeError, soundfile.LibsndfileError):
        return False


def convert_file(ffmpeg, source, target):
    """Convert one file (unless already done); say what happened.

    Arguments
    ---------
    ffmpeg : str
        The ffmpeg program.
    source : str
        The input (any format ffmpeg reads).
    target : str
        The wav to write.

    Returns
    -------
    status : str
        ``"converted"``, ``"done"`` (target already fine) or ``"failed"``.
    message : str or None
        One line saying why it failed.
    """
    if is_converted(target):
        return "done", None
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(
        folder, f".{os.path.basename(target)}.{os.getpid()}.tmp"
    )
    command = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        source,
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        temporary,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            return "failed", (
                f"{source}: ffmpeg exited with {result.returncode}"
                + (f" ({lines[-1]})" if lines else "")
            )
        if not is_converted(temporary):
            return "failed", (
                f"{source}: ffmpeg output is not a 16 kHz mono wav with samples"
            )
        os.replace(temporary, target)
        return "converted", None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def find_sources(input_folder, extension=".m4a"):
    """Relative paths of the files to convert, sorted.

    Arguments
    ---------
    input_folder : str
        The root of the m4a tree.
    extension : str
        The file name ending to convert.

    Returns
    -------
    list of str

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "id1", "vid"))
    >>> open(os.path.join(root, "id1", "vid", "00001.m4a"), "w").close()
    >>> find_sources(root)
    ['id1/vid/00001.m4a']
    """
    found = []
    for folder, _, names in os.walk(input_folder):
        relative = os.path.relpath(folder, input_folder)
        for name in names:
            if name.endswith(extension):
                found.append(os.path.normpath(os.path.join(relative, name)))
    return sorted(found)


def convert_folder(input_folder, output_folder, n_jobs=None, extension=".m4a"):
    """Convert every ``extension`` file of a tree to 16 kHz mono wav.

    The output tree mirrors the input one (``SPK/VIDEO/UTT.m4a`` ->
    ``SPK/VIDEO/UTT.wav``). Targets already converted are kept; failures are
    logged one line each and counted, never stopping the others.

    Arguments
    ---------
    input_folder : str
        The m4a root.
    output_folder : str
        The wav root.
    n_jobs : int, optional
        Number of ffmpeg processes run at once (default: the CPU cores).
    extension : str
        The file name ending to convert.

    Returns
    -------
    dict
        Counts: ``converted``, ``done``, ``failed``.

    Raises
    ------
    FfmpegNotFoundError
        When ffmpeg is not installed (checked before anything is done).
    """
    ffmpeg = find_ffmpeg()
    if not os.path.isdir(input_folder):
        raise FileNotFoundError(f"{input_folder}: input folder not found")
    sources = find_sources(input_folder, extension)
    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0))
    counts = {"converted": 0, "done": 0, "failed": 0}
    # Threads are enough: each one waits on its own ffmpeg process.
    with concurrent.futures.ThreadPoolExecutor(max(1, n_jobs)) as pool:
        jobs = [
            pool.submit(
                convert_file,
                ffmpeg,
                os.path.join(input_folder, relpath),
                os.path.join(
                    output_folder, relpath[: -len(extension)] + ".wav"
                ),
            )
            for relpath in sources
        ]
        for job in jobs:
            status, message = job.result()
            counts[status] += 1
            if message:
                logger.error("%s", message)
    logger.info(
        "%d files: %d converted, %d already done, %d failed",
        len(sources),
        counts["converted"],
        counts["done"],
        counts["failed"],
    )
    return counts


def main(argv=None):
    """Command line; returns 0, or 1 when ffmpeg is missing or a file failed.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        description="Convert an m4a tree to 16 kHz mono wav with ffmpeg."
    )
    parser.add_argument("--input_folder", required=True)
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--n_jobs", type=int, default=None)
    parser.add_argument("--extension", default=".m4a")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = convert_folder(
            args.input_folder, args.output_folder, args.n_jobs, args.extension
        )
    except (FfmpegNotFoundError, FileNotFoundError) as error:
        logger.error("error: %s", error)
        return 1
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
