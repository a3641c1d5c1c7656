"""A simple speaker-verification baseline: statistics of MFCCs, cosine.

Each utterance is represented by the mean and standard deviation over time of
its MFCCs; every dimension is standardised over the files of the trial list
and trials are scored by cosine similarity. It is the yardstick that shows
the synthetic corpus is a real task (far from perfect, far from chance).

Example
-------
>>> import os, tempfile
>>> from data_prep.synthetic import TINY_SIZES, generate_corpus
>>> sizes = {**TINY_SIZES, "n_train_speakers": 0, "n_test_speakers": 3,
...          "n_utterances": 1, "max_duration": 2.0, "n_trials": 6}
>>> out = generate_corpus(tempfile.mkdtemp(), n_jobs=1, **sizes)
>>> result = baseline_eer(out["data_folder"], out["trials"])
>>> sorted(result), result["n_trials"]
(['EER', 'n_files', 'n_trials'], 6)
"""

import speechbrain_ext.preflight  # noqa: F401

import argparse
import functools
import os

import torch
from speechbrain.lobes.features import MFCC
from speechbrain.utils.metric_stats import EER

from speechbrain_ext.dataio.audio import read_audio
from speechbrain_ext.dataio.lists import read_trials


@functools.lru_cache(maxsize=None)
def _mfcc(n_mfcc):
    """The MFCC front end (built once per size)."""
    return MFCC(n_mfcc=n_mfcc, deltas=False, context=False)


@torch.no_grad()
def utterance_statistics(wav, n_mfcc=20):
    """Mean and standard deviation over time of the MFCCs of a waveform.

    Arguments
    ---------
    wav : torch.Tensor
        ``[samples]`` at 16 kHz.
    n_mfcc : int
        Number of cepstral coefficients.

    Returns
    -------
    torch.Tensor
        ``[2 * n_mfcc]``.

    Example
    -------
    >>> utterance_statistics(torch.randn(16000)).shape
    torch.Size([40])
    """
    features = _mfcc(n_mfcc)(wav[None])[0]
    return torch.cat([features.mean(dim=0), features.std(dim=0)])


def baseline_eer(data_folder, trials_file):
    """EER of the MFCC-statistics cosine baseline on a trial list.

    Arguments
    ---------
    data_folder : str
        The wav root the trial paths are relative to.
    trials_file : str
        ``LABEL ENROL TEST`` lines.

    Returns
    -------
    dict
        ``EER`` (percent), ``n_trials``, ``n_files``.
    """
    trials = read_trials(trials_file)
    files = sorted({path for _, a, b in trials for path in (a, b)})
    stats = torch.stack(
        [
            utterance_statistics(read_audio(os.path.join(data_folder, path)))
            for path in files
        ]
    )
    stats = (stats - stats.mean(dim=0)) / (stats.std(dim=0) + 1e-8)
    stats = torch.nn.functional.normalize(stats, dim=1)
    index = {path: i for i, path in enumerate(files)}
    enrol = stats[[index[a] for _, a, _ in trials]]
    test = stats[[index[b] for _, _, b in trials]]
    scores = (enrol * test).sum(dim=1)
    labels = torch.tensor([label for label, _, _ in trials], dtype=torch.bool)
    eer, _ = EER(scores[labels], scores[~labels])
    return {
        "EER": round(100.0 * float(eer), 2),
        "n_trials": len(trials),
        "n_files": len(files),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--trials", required=True)
    args = parser.parse_args()
    print(baseline_eer(args.data_folder, args.trials))
