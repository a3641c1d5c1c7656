"""Behaviour under faults: kills, poisoned audio, leftovers (fast tests).

The kill -9 tests of the trainers are in ``test_exact_resume.py``; the
one-line errors of the command-line scripts in ``test_cli_errors.py``.
"""

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml

from data_prep.augmentation import augmentation_csvs, prepare_augmentation
from data_prep.voxceleb import prepare_voxceleb
from speechbrain_ext.dataio.audio import AudioError, audio_frames, read_audio
from speechbrain_ext.dataio.augment import CHOICES, SixWayAugment
from speechbrain_ext.dataio.embeddings_io import (
    EmbeddingsFileError,
    save_embeddings,
)
from speechbrain_ext.utils.atomic_checkpointer import AtomicCheckpointer
from speechbrain_ext.utils.finite import NonFiniteCheckpointError
from speechbrain_ext.utils.folder_lock import FolderLock, FolderLockedError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "recipes" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def augmenter(tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("augmentation")
    prepare_augmentation(
        str(folder),
        noise_folder=tiny_corpus["noise_folder"],
        rir_folder=tiny_corpus["rir_folder"],
    )
    csv_files = augmentation_csvs(str(folder))
    return SixWayAugment(**{f"{k}_csv": v for k, v in csv_files.items()})


@pytest.mark.parametrize("choice", CHOICES)
def test_augmentation_depends_on_the_seed_only_not_on_history(
    augmenter, choice
):
    """A resumed run re-creates an item from its seed: nothing else counts."""
    wav = torch.randn(8000)
    outputs = []
    for _ in range(7):  # more calls than files of any kind
        torch.manual_seed(5)
        outputs.append(augmenter.apply_choice(wav, choice))
    assert all(torch.equal(outputs[0], out) for out in outputs[1:])


TRAIN_OVERRIDES = {
    "data_folder": "unused",
    "train_list": "unused",
    "pretrained_wavlm": None,
    "init_from": None,
    "wavlm_preset": "tiny",
    "mhfa_heads": 2,
    "mhfa_compression": 4,
    "emb_dim": 8,
    "n_classes": 4,
}
DINO_OVERRIDES = {
    "data_folder": "unused",
    "train_list": "unused",
    "n_mels": 8,
    "channels": [8, 8, 8, 8, 24],
    "attention_channels": 4,
    "se_channels": 4,
    "embedding_size": 4,
    "head_hidden_size": 8,
    "head_bottleneck_size": 4,
    "head_output_size": 8,
}


def load_training_hparams(name, output):
    overrides = TRAIN_OVERRIDES if name != "dino.yaml" else DINO_OVERRIDES
    with open(ROOT / "hparams" / name, encoding="utf-8") as f:
        return load_hyperpyyaml(f, {**overrides, "output_folder": output})


@pytest.mark.parametrize(
    "name", ["round1.yaml", "round2.yaml", "lmft.yaml", "dino.yaml"]
)
def test_recovered_checkpoint_cuts_the_epoch_log_back(name, tmp_path):
    """Killed after the epoch line, before its checkpoint: logged once."""
    output = str(tmp_path / "out")
    hparams = load_training_hparams(name, output)
    hparams["train_logger"].log_stats({"epoch": 1}, train_stats={"loss": 2})
    hparams["checkpointer"].save_checkpoint(meta={"epoch": 1})
    hparams["train_logger"].log_stats({"epoch": 2}, train_stats={"loss": 1})
    # Killed here; the next run recovers the epoch-1 checkpoint.
    hparams = load_training_hparams(name, output)
    hparams["checkpointer"].recover_if_possible()
    hparams["train_logger"].log_stats({"epoch": 2}, train_stats={"loss": 1})
    lines = pathlib.Path(hparams["train_log"]).read_text().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["epoch: 1", "epoch: 2"]


@pytest.mark.parametrize(
    "name", ["round1.yaml", "round2.yaml", "lmft.yaml", "dino.yaml"]
)
def test_checkpoints_hold_the_global_random_generators(name, tmp_path):
    output = str(tmp_path / "out")
    hparams = load_training_hparams(name, output)
    torch.manual_seed(1)
    np.random.seed(1)
    hparams["checkpointer"].save_checkpoint(meta={"epoch": 1})
    expected = (torch.rand(3), np.random.rand(3))
    hparams = load_training_hparams(name, output)
    hparams["checkpointer"].recover_if_possible()
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])


def write_wav(path, samples, subtype="FLOAT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, 16000, subtype=subtype)
    return str(path)


# ------------------------------------------------- item 1: poisoned audio


@pytest.fixture
def nan_wav(tmp_path):
    return write_wav(tmp_path / "bad" / "v" / "nan.wav", np.full(8000, np.nan))


def test_nan_audio_is_bad_audio_when_read(nan_wav):
    with pytest.raises(AudioError, match="8000 samples are NaN or infinite"):
        read_audio(nan_wav)
    with pytest.raises(AudioError, match="nan.wav: 8000 samples are NaN"):
        audio_frames(nan_wav, check_values=True)
    assert audio_frames(nan_wav) == 8000  # header only: nothing decoded


def test_voxceleb_preparation_leaves_out_nan_and_too_short_files(tmp_path):
    root = tmp_path / "wav"
    write_wav(root / "id1" / "v" / "ok.wav", np.zeros(16000))
    write_wav(root / "id1" / "v" / "nan.wav", np.full(16000, np.nan))
    inf = np.zeros(16000)
    inf[5] = np.inf
    write_wav(root / "id1" / "v" / "inf.wav", inf)
    write_wav(root / "id1" / "v" / "short.wav", np.zeros(399), "PCM_16")
    outputs = prepare_voxceleb(str(root), str(tmp_path / "out"), n_jobs=1)
    skipped = dict(
        line.split("\t")
        for line in open(outputs["skipped"]).read().splitlines()
    )
    assert skipped == {
        "id1/v/inf.wav": "1 samples are NaN or infinite",
        "id1/v/nan.wav": "16000 samples are NaN or infinite",
        "id1/v/short.wav": "399 samples, fewer than 400 (the receptive "
        "field of WavLM)",
    }
    assert open(outputs["list"]).read() == "id1 id1/v/ok.wav\n"


def test_dino_scan_lists_nan_audio_as_bad(nan_wav, tmp_path):
    train_dino = load_script("train_dino")
    good = write_wav(tmp_path / "bad" / "v" / "ok.wav", np.zeros(8000))
    manifest, bad_list = tmp_path / "m.csv", tmp_path / "bad.txt"
    train_dino.scan_audio(
        str(tmp_path),
        ["bad/v/nan.wav", "bad/v/ok.wav"],
        str(manifest),
        str(bad_list),
        "skip",
    )
    assert [row[1] for row in train_dino.read_manifest(str(manifest))] == [good]
    assert bad_list.read_text().startswith("bad/v/nan.wav\t")


def test_train_pipeline_skips_and_counts_nan_crops(nan_wav, tmp_path, caplog):
    import train

    hparams = {
        "output_folder": str(tmp_path / "out"),
        "data_folder": os.path.dirname(nan_wav),
        "batch_size": 1,
        "max_per_speaker": 10,
        "defer_repeated_speakers": False,
        "seed": 1,
        "augmenter": SixWayAugment(),
        "crop_samples": 4000,
        "sample_rate": 16000,
    }
    dataset, _ = train.dataio_prep(hparams, [0], [nan_wav])
    item = dataset[0]
    assert not bool(item["ok"]) and torch.equal(item["aug"], item["clean"])
    assert "nan.wav: 4000 samples are NaN or infinite" in caplog.text


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(tmp_path / "save", {"model": model})
    good = checkpointer.save_checkpoint(meta={"n": 1})
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteCheckpointError, match="model holds 1 NaN"):
        checkpointer.save_checkpoint(meta={"n": 2})
    assert [p.name for p in (tmp_path / "save").iterdir()] == [good.path.name]
    assert checkpointer.find_checkpoint().meta["n"] == 1


# ----------------------------------------- item 3: labels and their report


def test_keys_with_whitespace_are_refused_before_clustering(tmp_path):
    pseudo_label = load_script("pseudo_label")
    keys = [f"s{i}/v/{i}.wav" for i in range(5)] + ["s9/my video/1.wav"]
    save_embeddings({k: torch.randn(4) for k in keys}, tmp_path / "e.pt")
    hparams = pseudo_label_hparams(tmp_path)
    with pytest.raises(EmbeddingsFileError, match="'s9/my video/1.wav'"):
        pseudo_label.run(hparams)
    assert not (tmp_path / "labels.txt").exists()


def pseudo_label_hparams(tmp_path, **overrides):
    with open(ROOT / "hparams" / "pseudo_label.yaml", encoding="utf-8") as f:
        return load_hyperpyyaml(
            f,
            {
                "embeddings_file": str(tmp_path / "e.pt"),
                "output_file": str(tmp_path / "labels.txt"),
                "n_clusters": 3,
                "n_clusters_ahc": 2,
                **overrides,
            },
        )


class Killed(BaseException):
    """Stands for SIGKILL at a chosen point."""


@pytest.mark.parametrize("survive", [0, 1])
def test_labels_and_report_never_disagree_after_a_kill(
    tmp_path, monkeypatch, survive
):
    """Killed after ``survive`` renames: never new labels + old report."""
    pseudo_label = load_script("pseudo_label")
    keys = [f"s{i % 3}/v/{i}.wav" for i in range(12)]
    save_embeddings({k: torch.randn(4) for k in keys}, tmp_path / "e.pt")
    pseudo_label.run(pseudo_label_hparams(tmp_path, seed=1))
    old_labels = (tmp_path / "labels.txt").read_text()
    rename = os.replace
    calls = []

    def replace_then_die(source, destination):
        if len(calls) == survive:
            raise Killed()
        calls.append(destination)
        rename(source, destination)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(Killed):
        pseudo_label.run(pseudo_label_hparams(tmp_path, seed=2, n_clusters=4))
    monkeypatch.setattr(os, "replace", rename)
    labels = (tmp_path / "labels.txt").read_text()
    report = tmp_path / "labels.txt.json"
    if labels != old_labels:  # new labels: their report, or none
        assert (
            not report.exists()
            or json.loads(report.read_text())["labels_sha256"]
            == hashlib.sha256(labels.encode()).hexdigest()
        )
    if report.exists():
        digest = json.loads(report.read_text())["labels_sha256"]
        assert digest == hashlib.sha256(labels.encode()).hexdigest()


# ------------------------------------- items 4 and 5: one run, leftovers


HOLD_LOCK = """
import sys, time
from speechbrain_ext.utils.folder_lock import FolderLock
lock = FolderLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def start_holder(folder):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_second_run_on_a_locked_folder_is_refused_with_the_pid(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(FolderLockedError) as error:
            FolderLock(str(tmp_path)).acquire()
        assert f"already in use by another run (PID {holder.pid}" in str(
            error.value
        )
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = FolderLock(str(tmp_path))
    assert lock.acquire() == holder.pid
    lock.release()
    assert FolderLock(str(tmp_path)).acquire() is None


RUN_STAGE = """
import sys
sys.path.insert(0, sys.argv[2])
from pipeline import Stage, StageRunner
runner = StageRunner(sys.argv[1])
stage = Stage("slow", [sys.executable, "-c",
    "import os, time; print(os.getpid(), flush=True); time.sleep(120)"],
    sys.argv[1] + "/slow")
runner.run(stage)
"""


def test_killing_the_runner_ends_its_stage_and_the_rerun_resumes(
    tmp_path, caplog
):
    """``kill -9`` of the pipeline: no orphan stage; re-run: (resuming)."""
    runner = subprocess.Popen(
        [sys.executable, "-c", RUN_STAGE, str(tmp_path), str(ROOT / "recipes")]
    )
    log = tmp_path / "logs" / "slow.log"
    deadline = time.time() + 60
    child = None
    while time.time() < deadline and child is None:
        lines = log.read_text().splitlines() if log.exists() else []
        child = int(lines[1]) if len(lines) > 1 else None
        time.sleep(0.05)
    assert child is not None, "the stage did not start"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f"/proc/{child}"):
        state = open(f"/proc/{child}/stat").read().split()[2]
        if state == "Z":  # ended, waiting for its (gone) parent
            break
        time.sleep(0.05)
    else:
        assert not os.path.exists(f"/proc/{child}"), "the stage is an orphan"

    pipeline = load_script("pipeline")
    stage = pipeline.Stage(
        "slow", [sys.executable, "-c", "pass"], str(tmp_path / "slow")
    )
    with caplog.at_level(logging.INFO):
        assert pipeline.StageRunner(str(tmp_path)).run(stage) == "ran"
    assert "stage slow: running (resuming)" in caplog.text


def test_leftover_temporary_files_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)
    leftover = tmp_path / f".labels.txt.{pid}.k3j2.tmp"
    leftover.write_bytes(b"x" * 1000)
    live = tmp_path / f".other.txt.{os.getpid()}.a1.tmp"
    live.write_bytes(b"x")
    pseudo_label = load_script("pseudo_label")
    keys = [f"s{i % 3}/v/{i}.wav" for i in range(6)]
    save_embeddings({k: torch.randn(4) for k in keys}, tmp_path / "e.pt")
    pseudo_label.run(pseudo_label_hparams(tmp_path))
    assert not leftover.exists() and live.exists()


def test_incomplete_checkpoint_folders_are_removed_at_recovery(tmp_path):
    model = torch.nn.Linear(1, 1)
    checkpointer = AtomicCheckpointer(tmp_path / "save", {"model": model})
    checkpointer.save_checkpoint(meta={"n": 1})
    broken = tmp_path / "save" / "CKPT+killed"
    broken.mkdir()
    (broken / "model.ckpt").write_bytes(b"trunc")
    (broken / "CKPT.yaml.pending").write_text("n: 2")
    assert (
        AtomicCheckpointer(tmp_path / "save", {"model": model})
        .recover_if_possible()
        .meta["n"]
        == 1
    )
    assert not broken.exists()


# ------------------------------------------ item 6: preparation fingerprint


def test_voxceleb_preparation_is_redone_when_the_data_changed(tmp_path, caplog):
    root = tmp_path / "wav"
    write_wav(root / "id1" / "v" / "1.wav", np.zeros(16000))
    out = str(tmp_path / "out")
    with caplog.at_level(logging.INFO):
        outputs = prepare_voxceleb(str(root), out, n_jobs=1)
        prepare_voxceleb(str(root), out, n_jobs=1)
        assert "already prepared" in caplog.text
        write_wav(root / "id2" / "v" / "1.wav", np.zeros(16000))
        caplog.clear()
        prepare_voxceleb(str(root), out, n_jobs=1)
    assert "files of the data folder" in caplog.text
    assert open(outputs["list"]).read().splitlines() == [
        "id1 id1/v/1.wav",
        "id2 id2/v/1.wav",
    ]
    # A file rewritten in place (same name) also counts as a change.
    time.sleep(0.01)
    write_wav(root / "id2" / "v" / "1.wav", np.full(16000, np.nan))
    prepare_voxceleb(str(root), out, n_jobs=1)
    assert open(outputs["list"]).read().splitlines() == ["id1 id1/v/1.wav"]
