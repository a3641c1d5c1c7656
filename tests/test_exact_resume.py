"""Kill -9 in the middle of training, resume: bit-identical to no kill.

Both trainers run as real processes with augmentation on (MUSAN-like noise,
babble, music and RIRs of the tiny corpus) and an intra-epoch checkpoint
after every step; the first run is killed with SIGKILL once a checkpoint of
its second epoch exists, the same command is run again, and the final
weights must equal, bit for bit, those of a run that was never interrupted.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig, save_wavlm
from speechbrain_ext.utils.io_utils import safe_torch_load

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
NO_DROPOUT = dict(
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    dropout_input=0.0,
)


def checkpoints(output):
    """Complete checkpoint folders under ``output/save``."""
    return sorted((pathlib.Path(output) / "save").glob("CKPT+*/CKPT.yaml"))


def kill_during_epoch(command, output, epoch, timeout=600):
    """Run ``command``; SIGKILL it once an epoch-``epoch`` checkpoint exists.

    The epoch of an intra-epoch checkpoint is read from its epoch counter
    (the number of the epoch in progress).
    """
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and process.poll() is None:
            for meta in checkpoints(output):
                text = meta.read_text()
                counter = meta.parent / "counter.ckpt"
                if (
                    "brain_intra_epoch_ckpt: true" in text
                    and counter.exists()
                    and counter.read_text().strip() == str(epoch)
                ):
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    pytest.fail(
        f"the run ended (code {process.returncode}) before epoch {epoch}"
    )


def run(command):
    result = subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def final_checkpoint(output):
    """The newest end-of-epoch checkpoint folder."""
    ends = [
        meta.parent
        for meta in checkpoints(output)
        if "brain_intra_epoch_ckpt" not in meta.read_text()
    ]
    return max(ends, key=lambda p: int((p / "counter.ckpt").read_text()))


def assert_same(a, b, where):
    """Equal nested states: tensors bit for bit, other values exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{index}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, where


def assert_identical(folder_a, folder_b, names):
    for name in names:
        a = safe_torch_load(folder_a / name)
        b = safe_torch_load(folder_b / name)
        assert_same(a, b, name)


def train_log_epochs(output):
    lines = (pathlib.Path(output) / "train_log.txt").read_text().splitlines()
    return [line.split(" - ")[0] for line in lines]


@pytest.fixture(scope="module")
def wavlm_file(tmp_path_factory):
    """A tiny WavLM with layer drop on (a random state of the model)."""
    path = tmp_path_factory.mktemp("wavlm") / "wavlm.pt"
    torch.manual_seed(0)
    save_wavlm(WavLM(WavLMConfig.tiny(**NO_DROPOUT)), path)
    return str(path)


def train_command(corpus, wavlm, label_list, output):
    options = {
        "data_folder": corpus["data_folder"],
        "train_list": label_list,
        "pretrained_wavlm": wavlm,
        "noise_folder": corpus["noise_folder"],
        "rir_folder": corpus["rir_folder"],
        "output_folder": output,
        "wavlm_preset": "tiny",
        "mhfa_heads": 4,
        "mhfa_compression": 16,
        "emb_dim": 32,
        "n_classes": 8,
        "batch_size": 8,
        "crop_samples": 8000,
        "num_workers": 2,
        "number_of_epochs": 2,
        "ckpt_interval_minutes": 0,
    }
    return (
        [
            sys.executable,
            str(ROOT / "train.py"),
            str(ROOT / "hparams/round1.yaml"),
        ]
        + [f"--{key}={value}" for key, value in options.items()]
        + ["--device=cpu", "--noprogressbar", "--ckpt_interval_steps=1"]
    )


@pytest.mark.slow
def test_train_killed_mid_epoch_resumes_bit_identically(
    tiny_corpus, wavlm_file, tmp_path
):
    speakers, lines = {}, []
    with open(tiny_corpus["train_list"], encoding="utf-8") as f:
        for line in f:
            speaker, relpath = line.split()
            lines.append(
                f"{speakers.setdefault(speaker, len(speakers))} {relpath}\n"
            )
    labels = tmp_path / "pl.txt"
    labels.write_text("".join(lines))

    straight = tmp_path / "straight"
    run(train_command(tiny_corpus, wavlm_file, labels, straight))
    resumed = tmp_path / "resumed"
    command = train_command(tiny_corpus, wavlm_file, labels, resumed)
    kill_during_epoch(command, resumed, epoch=2)
    output = run(command)
    assert "Loading a checkpoint" in output

    names = (
        "embedding_model.ckpt",
        "classifier.ckpt",
        "optimizer.ckpt",
        "loss_gate.ckpt",
    )
    assert_identical(
        final_checkpoint(straight), final_checkpoint(resumed), names
    )
    log_a = (straight / "train_log.txt").read_text()
    assert log_a == (resumed / "train_log.txt").read_text()


DINO = {
    "n_mels": 40,
    "channels": "[16,16,16,16,48]",
    "attention_channels": 8,
    "se_channels": 8,
    "embedding_size": 16,
    "head_hidden_size": 32,
    "head_bottleneck_size": 16,
    "head_output_size": 32,
    "global_crop_seconds": 1,
    "local_crop_seconds": 0.5,
    "n_local_crops": 2,
    "batch_size": 8,
    "num_workers": 2,
    "number_of_epochs": 3,
    "warmup_epochs": 1,
    "ckpt_interval_minutes": 0,
}


@pytest.mark.slow
def test_dino_killed_mid_epoch_resumes_bit_identically(tiny_corpus, tmp_path):
    def command(output):
        options = {
            **DINO,
            "data_folder": tiny_corpus["data_folder"],
            "train_list": tiny_corpus["train_list"],
            "noise_folder": tiny_corpus["noise_folder"],
            "rir_folder": tiny_corpus["rir_folder"],
            "output_folder": output,
        }
        return (
            [
                sys.executable,
                str(ROOT / "recipes" / "train_dino.py"),
                str(ROOT / "hparams" / "dino.yaml"),
            ]
            + [f"--{key}={value}" for key, value in options.items()]
            + ["--device=cpu", "--noprogressbar", "--ckpt_interval_steps=1"]
        )

    straight = tmp_path / "straight"
    run(command(straight))
    resumed = tmp_path / "resumed"
    kill_during_epoch(command(resumed), resumed, epoch=2)
    output = run(command(resumed))
    assert "Loading a checkpoint" in output

    names = ("student.ckpt", "teacher.ckpt", "dino_loss.ckpt", "optimizer.ckpt")
    assert_identical(
        final_checkpoint(straight), final_checkpoint(resumed), names
    )
    emb_a = safe_torch_load(straight / "embeddings.pt")
    emb_b = safe_torch_load(resumed / "embeddings.pt")
    assert emb_a.keys() == emb_b.keys()
    assert all(torch.equal(emb_a[k], emb_b[k]) for k in emb_a)
    assert train_log_epochs(resumed) == ["epoch: 1", "epoch: 2", "epoch: 3"]
