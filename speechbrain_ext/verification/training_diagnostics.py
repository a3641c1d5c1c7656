"""What the loss gate and label correction do, measured on the true speakers.

Diagnostics only: when the train list's paths carry the true speaker
(``spk/video/utt.wav``, as in VoxCeleb and the built-in corpora), every
sample gets two facts computed from the whole list, which training never
uses for anything but these counts:

- whether its pseudo-label is *right*: its true speaker is the majority
  speaker of its pseudo-label class (the per-sample view of cluster
  purity), so the purity of the kept and of the rejected samples tells
  whether the gate rejects the wrongly labelled ones;
- its speaker's *majority label*: the pseudo-label most of that speaker's
  utterances carry, which a label correction should agree with.

:class:`EpochHistory` keeps one row of such figures per epoch in a JSON
file next to the training log, read by the pipeline summary.
"""

import collections
import json
import math
import os

import numpy as np

from speechbrain_ext.utils.io_utils import atomic_open
from speechbrain_ext.verification.clustering import speakers_from_keys


def _majority(pairs):
    """``{key: most common value}`` of ``(key, value)`` pairs (ties: the
    smallest value)."""
    counts = collections.defaultdict(collections.Counter)
    for key, value in pairs:
        counts[key][value] += 1
    return {key: min(c, key=lambda v: (-c[v], v)) for key, c in counts.items()}


def label_truth(labels, relpaths):
    """Per-sample truth of the pseudo-labels, from the speakers in the keys.

    Arguments
    ---------
    labels : sequence of int
        Pseudo-label of each utterance.
    relpaths : sequence of str
        The utterances' paths relative to the wav root.

    Returns
    -------
    right : numpy.ndarray
        ``[n]`` int8: 1 when the utterance's speaker is the majority speaker
        of its pseudo-label class, 0 when not, -1 when the speakers are
        unknown (some path has fewer than three components).
    speaker_label : numpy.ndarray
        ``[n]`` int64: the majority pseudo-label of the utterance's speaker,
        -1 when unknown.

    Example
    -------
    >>> right, major = label_truth(
    ...     [0, 0, 0, 1], ["a/v/1.wav", "a/v/2.wav", "b/v/1.wav", "b/v/2.wav"]
    ... )
    >>> right.tolist(), major.tolist()
    ([1, 1, 0, 1], [0, 0, 0, 0])
    """
    n = len(labels)
    speakers = speakers_from_keys(list(relpaths))
    if speakers is None:
        return np.full(n, -1, np.int8), np.full(n, -1, np.int64)
    labels = [int(x) for x in labels]
    class_speaker = _majority(zip(labels, speakers))
    speaker_label = _majority(zip(speakers, labels))
    right = np.array(
        [class_speaker[y] == s for y, s in zip(labels, speakers)], np.int8
    )
    major = np.array([speaker_label[s] for s in speakers], np.int64)
    return right, major


def _ratio(numerator, denominator):
    return numerator / denominator if denominator > 0 else None


def label_diagnostics(counts):
    """Purity of kept / rejected samples and agreement of corrections.

    Arguments
    ---------
    counts : dict
        An epoch's counters (``train.EpochStats``): ``known``,
        ``kept_known``, ``kept_right``, ``rejected_right``,
        ``corrected_known``, ``corrected_agree``.

    Returns
    -------
    dict
        ``kept_purity``, ``rejected_purity`` (fraction of right
        pseudo-labels among kept / rejected samples) and ``lc_agreement``
        (fraction of corrections equal to the majority label of the true
        speaker); None where there is nothing to measure.

    Example
    -------
    >>> label_diagnostics({"known": 10, "kept_known": 8, "kept_right": 6,
    ...                    "rejected_right": 1, "corrected_known": 2,
    ...                    "corrected_agree": 1})
    {'kept_purity': 0.75, 'rejected_purity': 0.5, 'lc_agreement': 0.5}
    """
    return {
        "kept_purity": _ratio(counts["kept_right"], counts["kept_known"]),
        "rejected_purity": _ratio(
            counts["rejected_right"], counts["known"] - counts["kept_known"]
        ),
        "lc_agreement": _ratio(
            counts["corrected_agree"], counts["corrected_known"]
        ),
    }


class EpochHistory:
    """One row of figures per epoch, kept in a JSON list (written atomically).

    A row replaces an earlier row of the same epoch (a resumed epoch), and
    non-finite numbers are written as null.

    Arguments
    ---------
    path : str
        The JSON file (read when it exists).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "epochs.json")
    >>> history = EpochHistory(path)
    >>> history.update({"epoch": 1, "kept_fraction": 1.0})
    >>> history.update({"epoch": 1, "kept_fraction": float("nan")})
    >>> EpochHistory(path).rows
    [{'epoch': 1, 'kept_fraction': None}]
    """

    def __init__(self, path):
        self.path = path
        self.rows = []
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                self.rows = json.load(f)

    def reset(self):
        """Forget every row (a run that starts from scratch)."""
        self.rows = []
        self._write()

    def update(self, row):
        """Add (or replace) the row of ``row["epoch"]`` and write the file.

        Arguments
        ---------
        row : dict
            Must have ``epoch``.
        """
        row = {
            key: None
            if isinstance(value, float) and not math.isfinite(value)
            else value
            for key, value in row.items()
        }
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]]
        self.rows.append(row)
        self.rows.sort(key=lambda r: r["epoch"])
        self._write()

    def _write(self):
        if not self.path:
            return
        with atomic_open(self.path) as f:
            json.dump(self.rows, f, indent=1, allow_nan=False)
