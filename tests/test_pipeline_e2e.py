"""The whole pipeline on the tiny corpus: interrupted, resumed, exported.

Every stage runs for real with tiny sizes (a few steps each); the run is
killed in the middle of the first fine-tuning round, then started again: it
skips what was done, resumes the round and finishes; the exported model
loads through SpeechBrain's pretrained interface. While the first run is
alive a second one on the same folder is refused; killing the pipeline's
process alone also ends the stage it started.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "pipeline.py"

TINY = {
    "n_rounds": 2,
    "n_kmeans_clusters": 16,
    "n_pseudo_speakers": 8,
    # The demo's rounds fine-tune stage 1's network: the same sizes.
    "ecapa_sizes": {
        "n_mels": 40,
        "channels": [16, 16, 16, 16, 48],
        "attention_channels": 8,
        "se_channels": 8,
    },
    "embedding_size": 16,
    "dino_overrides": {
        "n_mels": 40,
        "channels": [16, 16, 16, 16, 48],
        "attention_channels": 8,
        "se_channels": 8,
        "embedding_size": 16,
        "head_hidden_size": 32,
        "head_bottleneck_size": 16,
        "head_output_size": 32,
        "global_crop_seconds": 1.0,
        "local_crop_seconds": 0.5,
        "n_local_crops": 1,
        "number_of_epochs": 1,
        "batch_size": 8,
        "num_workers": 0,
    },
    "round_overrides": {
        "number_of_epochs": 3,
        "batch_size": 8,
        "crop_samples": 8000,
        "num_workers": 0,
    },
    "lmft_overrides": {
        "number_of_epochs": 1,
        "batch_size": 8,
        "crop_samples": 8000,
        "num_workers": 0,
    },
    "evaluate_overrides": {"n_crops": 2, "num_workers": 0},
    "extract_overrides": {"num_workers": 0},
    "export_overrides": {"num_workers": 0},
}


def command(corpus, output):
    values = {
        "data_folder": corpus["data_folder"],
        "train_list": corpus["train_list"],
        "trials": corpus["trials"],
        "dev_trials": corpus["dev_trials"],
        "noise_folder": corpus["noise_folder"],
        "rir_folder": corpus["rir_folder"],
        "output_folder": str(output),
        **TINY,
    }
    arguments = [
        f"--{key}={json.dumps(value) if isinstance(value, dict) else value}"
        for key, value in values.items()
    ]
    return [
        sys.executable,
        str(SCRIPT),
        str(ROOT / "hparams" / "demo.yaml"),
        *arguments,
        "--device=cpu",
    ]


def alive(pid):
    """Whether a process runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_pipeline_end_to_end_with_an_interruption(tiny_corpus, tmp_path):
    output = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        command(tiny_corpus, output),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # While it runs, a second pipeline on the same folder is refused.
    lock = output / ".lock"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if lock.exists() and lock.read_text().strip():
            break
        time.sleep(0.05)
    second = subprocess.run(
        command(tiny_corpus, output),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.poll() is None, "the first pipeline ended too early"
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f"{output}: already in use by another run (PID {process.pid}, "
        f"started {lock.read_text().split()[1]}); wait for it to end, stop "
        "it, or choose another output folder"
    )
    # Kill the pipeline (its PID only) in the middle of round 1, after
    # its first checkpoint: the stage it runs ends with it.
    log = output / "logs" / "round1.log"
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None:
        if log.exists() and "Going into epoch 2" in log.read_text():
            break
        time.sleep(0.05)
    assert process.poll() is None, "the pipeline ended before round 1"
    stage_pids = [
        int(pid)
        for pid in open(f"/proc/{process.pid}/task/{process.pid}/children")
        .read()
        .split()
    ]
    assert stage_pids, "no stage process"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(pid) for pid in stage_pids):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in stage_pids), "orphan stage"
    markers = output / "stages"
    assert (markers / "dino.json").exists()
    assert not (markers / "round1.json").exists()

    result = subprocess.run(
        command(tiny_corpus, output),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage dino: done, skipped" in result.stdout + result.stderr
    assert "stage round1: running (resuming)" in result.stdout + result.stderr
    assert "took over the lock left by a killed run" in (
        result.stdout + result.stderr
    )
    round1_log = log.read_text()
    assert round1_log.count("Going into epoch 1") == 1
    assert "Loading a checkpoint" in round1_log

    rows = json.loads((output / "summary.json").read_text())
    assert [row["stage"] for row in rows] == [
        "dino",
        "round1",
        "round2",
        "lmft",
    ]
    for row in rows:
        assert {"stage", "NMI", "EER", "minDCF_0.01", "wall_s"} <= set(row)
        assert 0.0 <= row["EER"] <= 100.0 and row["wall_s"] > 0
    assert rows[0]["NMI"] is not None and rows[1]["NMI"] is not None
    # The resumed round's per-epoch gate figures reach the summary.
    assert [e["epoch"] for e in rows[1]["epochs"]] == [1, 2, 3]
    assert rows[1]["purity"] is not None
    assert (output / "summary.md").exists()
    assert (output / "summary.png").exists()
    # The threshold comes from the corpus's development trials.
    info = json.loads((output / "export" / "export_info.json").read_text())
    assert info["dev_trials"] == os.path.abspath(tiny_corpus["dev_trials"])

    from speechbrain.inference.speaker import SpeakerRecognition
    from speechbrain.utils.fetching import FetchConfig

    model = SpeakerRecognition.from_hparams(
        source=str(output / "export"),
        savedir=str(tmp_path / "loaded"),
        fetch_config=FetchConfig(allow_network=False),
    )
    with open(tiny_corpus["trials"], encoding="utf-8") as f:
        _, enrol, test = f.readline().split()
    root = tiny_corpus["data_folder"]
    score, decision = model.verify_files(
        os.path.join(root, enrol), os.path.join(root, test)
    )
    assert -1.0 <= float(score) <= 1.0
    import torch

    embedding = model.encode_batch(torch.randn(2, 16000))
    assert embedding.shape == (2, 1, TINY["embedding_size"])
