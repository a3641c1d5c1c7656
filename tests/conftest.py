"""Shared pytest fixtures."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch
from tiny_models import tiny_wavlm_mhfa

from data_prep.synthetic import TINY_SIZES, generate_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A tiny synthetic corpus, generated once per test session.

    Returns the dict of :func:`data_prep.synthetic.generate_corpus`:
    ``data_folder`` (the wav root), ``train_list`` (``SPEAKER RELPATH``),
    ``trials`` (``LABEL ENROL TEST``), ``dev_trials`` (the same format,
    on 3 development speakers), ``noise_folder`` (MUSAN-like tree) and
    ``rir_folder`` (RIR tree); 8 train speakers x 2 videos x 3 utterances
    of 2-4 s, 6 test speakers and 40 trials, 20 development trials.
    """
    folder = tmp_path_factory.mktemp("tiny_corpus")
    return generate_corpus(str(folder), seed=0, n_jobs=1, **TINY_SIZES)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (the test machine is shared).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny random WavLM + MHFA (seed 0, eval mode), one per test module.

    The stage scripts rebuild it from the ``architecture.ckpt`` of its
    checkpoint (``tiny_models.save_training_checkpoint``).
    """
    torch.manual_seed(0)
    return tiny_wavlm_mhfa(4, 8, 16).eval()


@pytest.fixture
def torchrun():
    """Run a script under ``torchrun`` on CPU processes, one thread each.

    Returns ``run(script, n_processes, *arguments)`` -> the finished
    ``subprocess.CompletedProcess`` (text output captured), ``script``
    relative to the repository root. SpeechBrain scripts also need
    ``--distributed_backend=gloo`` among the arguments.
    """
    root = pathlib.Path(__file__).resolve().parents[1]

    def run(script, n_processes, *arguments):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={n_processes}",
                f"--master_port={port}",
                str(root / script),
                *map(str, arguments),
            ],
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            cwd=root,
            capture_output=True,
            text=True,
        )

    return run
