#!/usr/bin/env python3
"""Extraction throughput: one process vs. several ``torchrun`` processes.

Runs ``recipes/extract_embeddings.py`` on the same synthetic files (random
4-12 s wavs) and the same model (random weights, saved as a training
checkpoint) as a whole command, three ways, alternated, best of
``--repeats``:

* 1 process, ``--threads`` torch threads (all cores: the baseline);
* 1 process, 1 thread;
* ``--processes`` processes of 1 thread each under ``torchrun`` (gloo on a
  CPU). With ``--device cuda``: 1 process vs. ``torchrun`` with one
  process per GPU (NCCL), also with a single GPU, to check that path.

Prints utterances/s and audio hours/s of the embedding phase (from the
script's ``done:`` log line: shards planned to the last one saved, before
rank 0 assembles the file) and of the whole command (Python start, imports,
model load and the file write included), ratios against the baseline, and
the largest difference between the embeddings of the runs.

Run::

    python -m benchmarks.bench_extract_ddp --model base_plus --n_files 40
    python -m benchmarks.bench_extract_ddp --model tiny --n_files 400
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile
import torch
from speechbrain.utils.checkpoints import Checkpointer

from benchmarks.bench_extract import make_files
from benchmarks.common import machine
from speechbrain_ext.dataio.embeddings_io import load_embeddings
from speechbrain_ext.lobes.embedding_model import WavLMMHFA
from speechbrain_ext.lobes.wavlm import WavLM
from speechbrain_ext.pretrained.architecture import ArchitectureRecord
from speechbrain_ext.pretrained.model_factory import mhfa_for, wavlm_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"tiny": (4, 8, 16), "base_plus": (64, 128, 256)}
DONE = re.compile(
    r"done: (\d+) files \(([\d.]+) h of audio\) in ([\d.]+) s "
    r"with (\d+) process"
)


def free_port():
    """A free TCP port for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_extraction(processes, threads, arguments, output, device, launch):
    """One whole extraction command (under ``torchrun`` when ``launch``).

    Returns
    -------
    dict
        ``wall_s`` (whole command), ``embed_s``, ``files``, ``hours``.
    """
    script = [os.path.join(ROOT, "recipes", "extract_embeddings.py")]
    if launch:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={free_port()}",
        ]
        if device == "cpu":
            arguments = arguments + ["--distributed_backend=gloo"]
    else:
        launcher = [sys.executable]
    command = (
        launcher
        + script
        + [os.path.join(ROOT, "hparams", "extract_embeddings.yaml")]
        + arguments
        + [f"--output_file={output}", f"--device={device}"]
    )
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    result = subprocess.run(
        command, env=environment, cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"extraction failed:\n{result.stderr[-3000:]}")
    match = DONE.search(result.stderr)
    if match is None:
        sys.exit("no 'done:' line in the extraction log")
    return {
        "wall_s": wall,
        "files": int(match.group(1)),
        "hours": float(match.group(2)),
        "embed_s": float(match.group(3)),
    }


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--n_files", type=int, default=200)
    parser.add_argument("--min_seconds", type=float, default=4.0)
    parser.add_argument("--max_seconds", type=float, default=12.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shards_per_process", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    heads, compression, size = SIZES[args.model]
    torch.manual_seed(0)
    config = wavlm_config(args.model)
    model = WavLMMHFA(WavLM(config), mhfa_for(config, heads, compression, size))
    # name -> (processes, threads each, under torchrun)
    runs = {
        f"1 process x {args.threads} threads": (1, args.threads, False),
        "1 process x 1 thread": (1, 1, False),
        f"torchrun, {args.processes} x 1 thread": (args.processes, 1, True),
    }
    if args.device == "cuda":
        runs = {
            "1 process, 1 GPU": (1, args.threads, False),
            f"torchrun, {args.processes} x 1 GPU": (
                args.processes,
                args.threads,
                True,
            ),
        }
    with tempfile.TemporaryDirectory() as folder:
        save = os.path.join(folder, "train", "save")
        Checkpointer(
            save,
            {
                "embedding_model": model,
                "architecture": ArchitectureRecord(model),
            },
        ).save_checkpoint()
        wavs = os.path.join(folder, "wav")
        os.makedirs(wavs)
        paths = make_files(
            wavs, args.n_files, args.min_seconds, args.max_seconds
        )
        total_seconds = sum(soundfile.info(p).frames for p in paths) / 16000
        shard_seconds = total_seconds / (
            args.processes * args.shards_per_process
        )
        arguments = [
            f"--data_folder={wavs}",
            f"--model_source={save}",
            f"--num_workers={args.num_workers}",
            "--noprogressbar",
            f"--shard_seconds={shard_seconds:.3f}",
        ]
        best, outputs = {}, {}
        for repeat in range(args.repeats):
            for index, (name, run) in enumerate(runs.items()):
                processes, threads, launch = run
                output = os.path.join(folder, f"run{index}.pt")
                result = run_extraction(
                    processes, threads, arguments, output, args.device, launch
                )
                outputs.setdefault(name, output)
                if result["embed_s"] < best.get(name, {}).get("embed_s", 1e9):
                    best[name] = result
        matrices = [load_embeddings(p)[1] for p in outputs.values()]
        difference = max(float(np.abs(m - matrices[0]).max()) for m in matrices)
    print(f"machine: {machine()}, device {args.device}")
    print(
        f"model: WavLM {args.model} + MHFA (random weights), {args.n_files} "
        f"files of {args.min_seconds:g}-{args.max_seconds:g} s "
        f"({total_seconds / 3600:.3f} h), shards of {shard_seconds:.0f} s; "
        f"best of {args.repeats} alternated runs"
    )
    baseline = next(iter(best.values()))
    print(
        "| run | embedding s | utt/s | audio h/s | x baseline | "
        "whole command s | x baseline (whole) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in best.items():
        print(
            f"| {name} | {row['embed_s']:.2f} | "
            f"{row['files'] / row['embed_s']:.3g} | "
            f"{row['hours'] / row['embed_s']:.3g} | "
            f"{baseline['embed_s'] / row['embed_s']:.2f}x | "
            f"{row['wall_s']:.1f} | "
            f"{baseline['wall_s'] / row['wall_s']:.2f}x |"
        )
    print(f"max |difference| of embeddings between runs: {difference:.2e}")
    return best, difference


if __name__ == "__main__":
    main()
