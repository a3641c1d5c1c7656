"""Shared pytest fixtures."""

import pytest
import torch

from data_prep.synthetic import TINY_SIZES, generate_corpus
from speechbrain_ext.checkpoints import build_architecture


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A tiny synthetic corpus, generated once per test session.

    Returns the dict of :func:`data_prep.synthetic.generate_corpus`:
    ``data_folder`` (the wav root), ``train_list`` (``SPEAKER RELPATH``),
    ``trials`` (``LABEL ENROL TEST``), ``noise_folder`` (MUSAN-like tree)
    and ``rir_folder`` (RIR tree); 8 train speakers x 2 videos x 3
    utterances of 2-4 s, 6 test speakers and 40 trials.
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

    The stage scripts rebuild it with ``--wavlm_preset=tiny --mhfa_heads=4
    --mhfa_compression=8 --emb_dim=16``.
    """
    torch.manual_seed(0)
    return build_architecture("tiny", 4, 8, 16).eval()
