"""Parsers of the recipe's text lists, with one-line errors.

* train lists, ``LABEL RELPATH`` (pseudo-labels): :func:`read_train_list`;
* utterance lists, ``SPEAKER RELPATH`` or ``RELPATH``:
  :func:`read_utterance_list`;
* trial lists, ``LABEL ENROL TEST`` (``veri_test2.txt``): :func:`read_trials`.

Each error names the file (and line) and the problem.
"""

import os
import re

from speechbrain_ext.dataio.embeddings_io import normalise_key

ASCII_INTEGER = re.compile("[0-9]+")


class TrainListError(ValueError):
    """Raised for an unusable train list (one line naming the problem)."""


class TrialListError(ValueError):
    """A trial list is malformed or names files that cannot be used."""


def read_train_list(path, data_folder, n_classes):
    """Read ``LABEL RELPATH`` lines and check labels and files.

    Arguments
    ---------
    path : str
        The list (pseudo-labels from ``recipes/pseudo_label.py``).
    data_folder : str
        Root the paths are relative to.
    n_classes : int
        Number of classes of the AAM head.

    Returns
    -------
    labels : list of int
    paths : list of str
        Absolute paths.

    Raises
    ------
    TrainListError
        Naming the problem: malformed lines, non-integer or negative labels,
        labels >= ``n_classes``, missing files (count and first few).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.wav"), "w")
    >>> with open(os.path.join(folder, "pl.txt"), "w") as f:
    ...     _ = f.write("3 a.wav\\n")
    >>> read_train_list(os.path.join(folder, "pl.txt"), folder, 4)[0]
    [3]
    """
    if not os.path.isfile(path):
        raise TrainListError(f"{path}: train list not found")
    labels, paths, bad = [], [], []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as error:
        raise TrainListError(
            f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} "
            f"at offset {error.start})"
        ) from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            bad.append(f"line {number}: {line.strip()!r}")
            continue
        label, relpath = fields
        if not ASCII_INTEGER.fullmatch(label):
            bad.append(f"line {number}: label {label!r}")
            continue
        labels.append(int(label))
        paths.append(os.path.join(data_folder, relpath))
    if bad:
        raise TrainListError(
            f"{path}: {len(bad)} lines are not 'LABEL RELPATH' with a "
            f"non-negative integer label, e.g. {'; '.join(bad[:3])}"
        )
    if not labels:
        raise TrainListError(f"{path}: empty train list")
    too_big = sorted({x for x in labels if x >= n_classes})
    if too_big:
        raise TrainListError(
            f"{path}: {len(too_big)} label values >= n_classes={n_classes} "
            f"(e.g. {too_big[:5]}); set --n_classes to at least "
            f"{max(labels) + 1}"
        )
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise TrainListError(
            f"{path}: {len(missing)} of {len(paths)} listed files are missing "
            f"under {data_folder}, e.g. {missing[:3]}"
        )
    return labels, paths


class UtteranceListError(ValueError):
    """Raised for a malformed utterance list (names the file and line)."""


def read_utterance_list(path):
    """Relative paths of a ``SPEAKER RELPATH`` / ``LABEL RELPATH`` list.

    A line may also hold the path alone; the path is the last field.
    Duplicates are refused.

    Arguments
    ---------
    path : str
        The list.

    Returns
    -------
    list of str
        Normalised relative paths, in list order.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> _ = open(path, "w").write("id0/v/1.wav\\n3 ./id0/v/2.wav\\n")
    >>> read_utterance_list(path)
    ['id0/v/1.wav', 'id0/v/2.wav']
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: utterance list not found")
    keys, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 2:
                raise UtteranceListError(
                    f"{path}:{number}: expected 'SPEAKER RELPATH' or "
                    f"'RELPATH', found {len(fields)} fields"
                )
            key = normalise_key(fields[-1])
            if key in seen:
                raise UtteranceListError(
                    f"{path}:{number}: {key} already listed on line {seen[key]}"
                )
            seen[key] = number
            keys.append(key)
    if not keys:
        raise UtteranceListError(f"{path}: no utterances")
    return keys


def read_trials(path):
    """Read and check a trial list of ``LABEL ENROL TEST`` lines.

    Arguments
    ---------
    path : str
        veri_test2.txt, list_test_all2.txt, list_test_hard2.txt or any list
        of that format (paths relative to the wav root).

    Returns
    -------
    list of tuple
        ``(label, enrol, test)``, label 1 (same speaker) or 0.

    Raises
    ------
    TrialListError
        ``FILE:LINE: problem`` for the first malformed line.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> _ = open(path, "w").write("1 id1/a/1.wav id1/b/2.wav\\n2 x y\\n")
    >>> read_trials(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    speechbrain_ext.dataio.lists.TrialListError: ...:2: label must be 0 or 1...
    """
    trials = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise TrialListError(
                    f"{path}:{number}: expected 'LABEL ENROL TEST', got "
                    f"{len(fields)} fields: {line.strip()!r}"
                )
            label, enrol, test = fields
            if label not in ("0", "1"):
                raise TrialListError(
                    f"{path}:{number}: label must be 0 or 1, got {label!r}"
                )
            for name in (enrol, test):
                if name.startswith("/") or name.count("/") != 2:
                    raise TrialListError(
                        f"{path}:{number}: {name!r} is not a relative "
                        "SPEAKER/VIDEO/UTT path"
                    )
            trials.append((int(label), enrol, test))
    if not trials:
        raise TrialListError(f"{path}: no trials")
    return trials
