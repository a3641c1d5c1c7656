"""Shared pytest fixtures."""

import pytest

from data_prep.synthetic import TINY_SIZES, generate_corpus


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
