"""Benchmark: scanning a VoxCeleb-layout tree into a manifest.

Generates a tree of short wav files (``SPEAKER/VIDEO/UTT.wav``, a 44-byte
header and a few hundred samples each, written as raw bytes) and times
:func:`data_prep.voxceleb.scan_folder` with 1 and 2 processes against a
naive scan measured in the same run (``os.walk`` + ``soundfile.info`` on each
file, one process). Durations come from the headers in both. The file cache
is warm (the tree was just written), so this measures the per-file cost of
the scan, not the disk.

Usage::

    python -m benchmarks.bench_scan [--n_files 100000] [--folder DIR]
"""

import argparse
import os
import shutil
import struct
import tempfile

import soundfile

from benchmarks.common import machine, timed
from data_prep.voxceleb import scan_folder


def wav_bytes(n_samples, sample_rate=16000):
    """A 16-bit mono PCM wav file of silence, as bytes."""
    data = n_samples * 2
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        data,
    )
    return header + bytes(data)


def make_tree(root, n_files, per_video=10, videos_per_speaker=10):
    """Write ``n_files`` short wav files in the VoxCeleb layout."""
    blobs = [wav_bytes(160 * (k + 1)) for k in range(8)]
    written = 0
    speaker = 0
    while written < n_files:
        for video in range(videos_per_speaker):
            folder = os.path.join(root, f"id{speaker:05d}", f"video{video:06d}")
            os.makedirs(folder)
            for utt in range(min(per_video, n_files - written)):
                with open(
                    os.path.join(folder, f"{utt + 1:05d}.wav"), "wb"
                ) as f:
                    f.write(blobs[written % len(blobs)])
                written += 1
            if written >= n_files:
                break
        speaker += 1
    return written


def naive_scan(root):
    """``os.walk`` + ``soundfile.info`` per file, one process."""
    rows = []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".wav"):
                info = soundfile.info(os.path.join(folder, name))
                rows.append((name, info.frames / info.samplerate))
    return rows


def main():
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_files", type=int, default=100_000)
    parser.add_argument(
        "--folder", default=None, help="where to write the tree"
    )
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_scan_", dir=args.folder)
    try:
        root = os.path.join(folder, "wav")
        n, seconds = timed(make_tree, root, args.n_files)
        print(f"tree: {n} files written in {seconds:.1f} s")
        rows, naive_s = timed(naive_scan, root)
        assert len(rows) == n
        results = [("naive os.walk + soundfile.info, 1 process", naive_s)]
        for n_jobs in (1, 2):
            (good, bad), seconds = timed(scan_folder, root, n_jobs=n_jobs)
            assert len(good) == n and not bad
            results.append(
                (f"data_prep.voxceleb.scan_folder, {n_jobs} proc.", seconds)
            )
    finally:
        shutil.rmtree(folder)
    print(f"\nmachine: {machine()}")
    print(
        "load average (1, 5, 15 min) at the end: %.1f %.1f %.1f"
        % os.getloadavg()
    )
    print(f"{'method':<48} {'s':>7} {'files/s':>9} {'vs naive':>9}")
    for name, seconds in results:
        print(
            f"{name:<48} {seconds:>7.2f} {n / seconds:>9.0f} "
            f"{naive_s / seconds:>8.2f}x"
        )


if __name__ == "__main__":
    main()
