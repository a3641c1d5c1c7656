"""Every row of the recipe CSV runs with ``--debug``, as upstream's CI does.

SpeechBrain's recipe tests run ``python SCRIPT HPARAMS <test_debug_flags>
--debug --debug_persistently`` from the repository root for each row of
``tests/recipes/*.csv`` (checkpoints stay in the output folder, where the
pipeline's later stages find them) and then check ``test_debug_checks``:
``file_exists=[...]`` (files under the run's output folder) and
``performance_check=[FILE, KEY, <BOUND, MARKER]`` (the value of ``KEY`` on
the line of ``FILE`` that holds ``MARKER``). The flags point at
``tests/samples``, the tiny data :func:`samples` generates with the
project's own code (a synthetic corpus, a random tiny WavLM, a random
embeddings file and a tiny trained-model checkpoint), and write under
``tests/tmp``.
"""

import csv
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_models import save_training_checkpoint, tiny_wavlm_mhfa

from data_prep.synthetic import TINY_SIZES, generate_corpus
from speechbrain_ext.dataio.embeddings_io import save_embeddings
from speechbrain_ext.lobes.classifier import CosineClassifier
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig, save_wavlm

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE_CSV = ROOT / "tests" / "recipes" / "WavLM_SSL_SV.csv"
SAMPLES = ROOT / "tests" / "samples"
CHECK = re.compile(r"(\w+)=\[([^\]]*)\]")


def recipe_rows():
    with open(RECIPE_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def row_id(row):
    return f"{row['Script_file']}:{pathlib.Path(row['Hparam_file']).stem}"


@pytest.fixture(scope="module")
def samples():
    """The tiny inputs the CSV's flags name, made by the project's code."""
    corpus = generate_corpus(
        str(SAMPLES / "corpus"), seed=0, n_jobs=1, **TINY_SIZES
    )
    speakers, lines, keys = {}, [], []
    with open(corpus["train_list"], encoding="utf-8") as f:
        for line in f:
            speaker, relpath = line.split()
            label = speakers.setdefault(speaker, len(speakers))
            lines.append(f"{label} {relpath}\n")
            keys.append(relpath)
    (SAMPLES / "pseudo_labels.txt").write_text("".join(lines))
    torch.manual_seed(0)
    save_wavlm(WavLM(WavLMConfig.tiny()), SAMPLES / "wavlm.pt")
    rng = np.random.default_rng(0)
    save_embeddings(
        (keys, rng.normal(size=(len(keys), 16)).astype("float32")),
        SAMPLES / "embeddings.pt",
    )
    shutil.rmtree(SAMPLES / "model", ignore_errors=True)
    save_training_checkpoint(
        SAMPLES / "model" / "save",
        tiny_wavlm_mhfa(),
        classifier=CosineClassifier(16, len(speakers)),
    )
    return SAMPLES


def parse_checks(text):
    """``{name: [items]}`` of a ``test_debug_checks`` cell.

    Example: ``file_exists=[a,b]`` -> ``{"file_exists": ["a", "b"]}``.
    """
    return {
        name: [item.strip() for item in items.split(",")]
        for name, items in CHECK.findall(text)
    }


def output_folder(flags):
    """Where a row's run writes (its ``--output_folder`` or the folder of
    its ``--output_file``)."""
    options = dict(flag[2:].split("=", 1) for flag in flags if "=" in flag)
    if "output_folder" in options:
        return ROOT / options["output_folder"]
    return (ROOT / options["output_file"]).parent


def performance_value(path, key, marker):
    """The number after ``KEY: `` on the line of ``path`` holding ``marker``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if marker in line:
            match = re.search(rf"{re.escape(key)}: ([-+0-9.e]+)", line)
            assert match, f"{path}: no {key!r} on the line with {marker!r}"
            return float(match.group(1))
    raise AssertionError(f"{path}: no line with {marker!r}")


def test_check_parsing():
    checks = parse_checks(
        "file_exists=[a.txt,b/c.txt],"
        "performance_check=[train_log.txt, train loss, <15, epoch: 2]"
    )
    assert checks == {
        "file_exists": ["a.txt", "b/c.txt"],
        "performance_check": ["train_log.txt", "train loss", "<15", "epoch: 2"],
    }


def test_every_row_has_debug_flags_and_checks():
    for row in recipe_rows():
        flags = shlex.split(row["test_debug_flags"])
        assert flags and all(flag.startswith("--") for flag in flags), row
        assert parse_checks(row["test_debug_checks"]).get("file_exists"), row
        assert str(output_folder(flags)).startswith(str(ROOT / "tests/tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("row", recipe_rows(), ids=row_id)
def test_recipe_runs_with_debug(row, samples):
    flags = shlex.split(row["test_debug_flags"])
    output = output_folder(flags)
    shutil.rmtree(output, ignore_errors=True)
    result = subprocess.run(
        [
            sys.executable,
            row["Script_file"],
            row["Hparam_file"],
            *flags,
            "--debug",
            "--debug_persistently",
        ],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checks = parse_checks(row["test_debug_checks"])
    missing = [
        name for name in checks["file_exists"] if not (output / name).is_file()
    ]
    assert missing == [], f"{row_id(row)}: missing outputs in {output}"
    if "performance_check" in checks:
        name, key, bound, marker = checks["performance_check"]
        value = performance_value(output / name, key, marker)
        assert bound[0] == "<" and value < float(bound[1:]), (key, value)
