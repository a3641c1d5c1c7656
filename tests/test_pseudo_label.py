"""recipes/pseudo_label.py: output format, report, errors, atomic output."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from speechbrain_ext.dataio.embeddings_io import save_embeddings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPARAMS = os.path.join(ROOT, "hparams", "pseudo_label.yaml")
spec = importlib.util.spec_from_file_location(
    "pseudo_label_recipe", os.path.join(ROOT, "recipes", "pseudo_label.py")
)
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def corpus(n_speakers=6, per_speaker=20, dim=16, seed=0, flat=False):
    """Well-separated speakers, utterances shuffled; keys and matrix."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, dim)) * 3
    speaker = rng.permutation(np.repeat(np.arange(n_speakers), per_speaker))
    x = centres[speaker] + rng.normal(size=(len(speaker), dim)) * 0.1
    keys = [
        f"utt{i}.wav" if flat else f"id{s:05d}/vid{i % 3}/{i:05d}.wav"
        for i, s in enumerate(speaker)
    ]
    return keys, x.astype(np.float32)


def run(tmp_path, embeddings, *extra, output="pl.txt", k=24, ahc=6):
    output = str(tmp_path / output)
    recipe.main(
        [
            HPARAMS,
            f"--embeddings_file={embeddings}",
            f"--output_file={output}",
            f"--n_clusters={k}",
            f"--n_clusters_ahc={ahc}",
            *extra,
        ]
    )
    return output


def test_output_lines_in_input_order_and_report(tmp_path):
    keys, x = corpus()
    save_embeddings((keys, x), tmp_path / "e.pt")
    output = run(tmp_path, tmp_path / "e.pt")
    lines = open(output).read().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == keys
    labels = np.array([int(line.split(" ", 1)[0]) for line in lines])
    assert sorted(set(labels)) == list(range(6))
    report = json.load(open(output + ".json"))
    assert report["utterances"] == 120 and report["clusters"] == 6
    assert report["kmeans_clusters"] == 24 and report["dim"] == 16
    assert report["NMI"] == pytest.approx(1.0)
    assert report["purity"] == report["inverse_purity"] == 1.0
    assert sum(report["cluster_size_histogram"].values()) == 6
    assert set(report["wall_s"]) == {"load", "kmeans", "ahc", "total"}
    assert 0 < report["peak_rss_gb"] < 100


def test_same_seed_same_output(tmp_path):
    keys, x = corpus()
    save_embeddings((keys, x), tmp_path / "e.pt")
    first = open(run(tmp_path, tmp_path / "e.pt", output="a.txt")).read()
    again = open(run(tmp_path, tmp_path / "e.pt", output="b.txt")).read()
    assert first == again


def test_keys_without_speakers_work_without_nmi(tmp_path):
    keys, x = corpus(flat=True)
    torch.save(
        {k: torch.from_numpy(v) for k, v in zip(keys, x)}, tmp_path / "e"
    )
    report = json.load(open(run(tmp_path, tmp_path / "e") + ".json"))
    assert report["NMI"] is None and report["clusters"] == 6


def test_fewer_embeddings_than_clusters_reduces_with_warning(tmp_path, caplog):
    keys, x = corpus(n_speakers=2, per_speaker=5)
    save_embeddings((keys, x), tmp_path / "e.pt")
    output = run(tmp_path, tmp_path / "e.pt", k=50)
    assert "only 10 embeddings for 50 K-Means clusters" in caplog.text
    assert len(open(output).read().splitlines()) == 10
    assert json.load(open(output + ".json"))["kmeans_clusters"] == 10


def test_the_reduction_is_a_marked_warning_on_the_command_line(tmp_path):
    # In a subprocess: the script's own logging set-up (pytest's handlers
    # would keep it from running in this process).
    import subprocess
    import sys

    keys, x = corpus(n_speakers=2, per_speaker=5)
    save_embeddings((keys, x), tmp_path / "e.pt")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "recipes", "pseudo_label.py"),
            HPARAMS,
            f"--embeddings_file={tmp_path / 'e.pt'}",
            f"--output_file={tmp_path / 'pl.txt'}",
            "--n_clusters=50",
            "--n_clusters_ahc=20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(
        "WARNING: only 10 embeddings for 50 K-Means clusters" in line
        for line in lines
    ), result.stderr
    assert any(
        "WARNING: only 10 non-empty K-Means clusters for 20 AHC" in line
        for line in lines
    ), result.stderr
    # Information stays unmarked.
    assert not any("INFO" in line for line in lines), result.stderr


def test_missing_placeholder_names_the_key_and_writes_nothing(tmp_path):
    with pytest.raises(SystemExit) as error:
        recipe.main([HPARAMS, f"--output_file={tmp_path / 'pl.txt'}"])
    assert "embeddings_file" in str(error.value.code)
    assert os.listdir(tmp_path) == []


def test_unknown_override_is_an_error(tmp_path):
    keys, x = corpus()
    save_embeddings((keys, x), tmp_path / "e.pt")
    with pytest.raises(SystemExit) as error:
        run(tmp_path, tmp_path / "e.pt", "--n_clustres=3")
    assert "n_clustres" in str(error.value.code)
    assert not os.path.exists(tmp_path / "pl.txt")


@pytest.mark.parametrize(
    "content, message",
    [
        ({}, "no embeddings"),
        ({"a/b/1.wav": torch.ones(3), "a/b/2.wav": torch.ones(4)}, "mixed"),
        ({"a/b/1.wav": torch.tensor([1.0, float("nan")])}, "NaN"),
        ({"a/b/1.wav": torch.ones(3), "a/./b/1.wav": torch.ones(3)}, "dupl"),
        (torch.ones(3, 4), "expected a dict"),
    ],
)
def test_bad_input_leaves_existing_output_untouched(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pt")
    (tmp_path / "pl.txt").write_text("previous labels\n")
    with pytest.raises(SystemExit) as error:
        run(tmp_path, tmp_path / "bad.pt")
    text = str(error.value.code)
    assert text.startswith(str(tmp_path / "bad.pt")) and message in text
    assert (tmp_path / "pl.txt").read_text() == "previous labels\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.pt", "pl.txt"]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SystemExit, match="missing.pt"):
        run(tmp_path, tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="empty file"):
        run(tmp_path, tmp_path / "empty.pt")
    assert sorted(os.listdir(tmp_path)) == ["empty.pt"]


def test_inconsistent_cluster_counts_are_an_error(tmp_path):
    keys, x = corpus()
    save_embeddings((keys, x), tmp_path / "e.pt")
    with pytest.raises(SystemExit, match="larger than n_clusters"):
        run(tmp_path, tmp_path / "e.pt", ahc=30)
    assert not os.path.exists(tmp_path / "pl.txt")
