"""End-to-end tests of train.py on the tiny synthetic corpus (CPU).

A tiny WavLM (no dropout, so runs are deterministic) is saved as the
"pre-trained" checkpoint; epochs have 6 steps of 8 crops of 0.5 s.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch
from float32_bounds import U, gamma

import train
from speechbrain_ext.dataio.lists import TrainListError, read_train_list
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig, save_wavlm
from speechbrain_ext.utils.io_utils import safe_torch_load

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_DROPOUT = dict(
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.0,
    dropout_input=0.0,
)
TINY = {
    "wavlm_preset": "tiny",
    "mhfa_heads": 4,
    "mhfa_compression": 16,
    "emb_dim": 32,
    "n_classes": 8,
    "batch_size": 8,
    "crop_samples": 8000,
    "num_workers": 0,
    "lr_wavlm": 0.001,
    # 8 speakers in batches of 8: dropping repeats (the reference) would
    # leave about 2 batches an epoch.
    "defer_repeated_speakers": True,
}


@pytest.fixture(scope="module")
def inputs(tiny_corpus, tmp_path_factory):
    """Pseudo-label list (true speakers as labels) and a tiny WavLM file."""
    folder = tmp_path_factory.mktemp("train_inputs")
    speakers = {}
    lines = []
    with open(tiny_corpus["train_list"], encoding="utf-8") as f:
        for line in f:
            speaker, relpath = line.split()
            label = speakers.setdefault(speaker, len(speakers))
            lines.append(f"{label} {relpath}\n")
    (folder / "pl.txt").write_text("".join(lines))
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00not really a wav file")
    relpath = os.path.relpath(corrupt, tiny_corpus["data_folder"])
    # Every fourth utterance gets a wrong label, for the gate to find.
    noisy = [
        f"{(int(line.split()[0]) + 1) % len(speakers)} {line.split()[1]}\n"
        if i % 4 == 3
        else line
        for i, line in enumerate(lines)
    ]
    (folder / "pl_corrupt.txt").write_text("".join(noisy) + f"0 {relpath}\n")
    torch.manual_seed(0)
    save_wavlm(WavLM(WavLMConfig.tiny(**NO_DROPOUT)), folder / "wavlm.pt")
    return {
        "folder": folder,
        "pl": str(folder / "pl.txt"),
        "pl_corrupt": str(folder / "pl_corrupt.txt"),
        "wavlm": str(folder / "wavlm.pt"),
        **tiny_corpus,
    }


def argv(inputs, output, yaml="round1.yaml", **overrides):
    """Command line of a tiny run."""
    options = {
        "data_folder": inputs["data_folder"],
        "train_list": inputs["pl"],
        "pretrained_wavlm": inputs["wavlm"],
        "output_folder": str(output),
        **TINY,
        **overrides,
    }
    return (
        [str(ROOT / "hparams" / yaml)]
        + [f"--{key}={value}" for key, value in options.items()]
        + ["--device=cpu", "--noprogressbar"]
    )


def read_log(output):
    """Per-epoch stats from train_log.txt as dicts of strings."""
    rows = []
    for line in (
        (pathlib.Path(output) / "train_log.txt").read_text().splitlines()
    ):
        meta, stats = line.split(" - ")
        row = dict(item.split(": ") for item in meta.split(", "))
        for item in stats.split(", "):
            key, value = item.split(": ")
            row[key.replace("train ", "")] = value
        rows.append(row)
    return rows


def last_checkpoint(output):
    """The newest CKPT+ folder."""
    folders = sorted((pathlib.Path(output) / "save").glob("CKPT+*"))
    assert folders, f"no checkpoint in {output}"
    return max(folders, key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def round_run(inputs, tmp_path_factory):
    """4 tiny epochs: gate from epoch 2, label correction from epoch 3."""
    output = tmp_path_factory.mktemp("round") / "out"
    train.main(
        argv(
            inputs,
            output,
            train_list=inputs["pl_corrupt"],
            noise_folder=inputs["noise_folder"],
            rir_folder=inputs["rir_folder"],
            number_of_epochs=4,
            gate_start_epoch=2,
            lc_start_epoch=3,
            # Correct every rejected sample, to see the mechanism.
            lc_min_prob=0.0,
        )
    )
    return output


@pytest.mark.slow
def test_round_trains_gates_corrects_and_checkpoints(round_run):
    log = read_log(round_run)
    assert [row["epoch"] for row in log] == ["1", "2", "3", "4"]
    assert float(log[1]["loss"]) < float(log[0]["loss"])
    assert log[0]["threshold"] == "none"
    assert float(log[0]["kept_fraction"]) == 1.0
    # Each epoch uses the threshold fitted after the one before; a
    # degenerate fit keeps the previous threshold, unless that one kept less
    # than the floor (10%) of the epoch's samples: then the gate goes off.
    previous = "none"
    for row, following in zip(log, log[1:] + [None]):
        if "gate_fit" in row:
            dropped = previous != "none" and float(row["kept_fraction"]) < 0.1
            assert row["next_threshold"] == ("none" if dropped else previous)
        if following is not None:
            assert following["threshold"] == row["next_threshold"]
        previous = row["next_threshold"]
    assert any("gate_fit" in row for row in log)
    assert sum(int(row["rejected"]) for row in log[1:]) > 0
    assert int(log[1]["corrected"]) == 0
    # lc_min_prob=0: every rejected sample gets a corrected label.
    for row in log[2:]:
        assert int(row["corrected"]) == int(row["rejected"])
    assert sum(int(row["corrected"]) for row in log[2:]) > 0
    assert sum(int(row["bad_audio"]) for row in log) >= 1
    lrs = [float(row["lr_backend"]) for row in log]
    assert lrs[1] == pytest.approx(lrs[0] * 0.95, rel=1e-3)
    ckpt = last_checkpoint(round_run)
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "embedding_model.ckpt",
        "classifier.ckpt",
        "optimizer.ckpt",
        "lr_scheduler.ckpt",
        "loss_gate.ckpt",
        "sampler.ckpt",
        "counter.ckpt",
        "architecture.ckpt",
    } <= names
    assert safe_torch_load(ckpt / "classifier.ckpt")["weight"].shape == (8, 32)
    plots = sorted((round_run / "loss_gate").glob("*.png"))
    assert len(plots) == 4
    # One label in four is wrong: purity is measured on kept and rejected
    # samples, agreement on the corrections.
    history = json.loads((round_run / "epoch_stats.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    for row, logged in zip(history, log):
        assert row["kept_fraction"] == pytest.approx(
            float(logged["kept_fraction"]), rel=1e-2
        )
        assert (row["rejected_purity"] is None) == (logged["rejected"] == "0")
        # Kept and rejected samples together are the epoch's samples, about
        # three in four correctly labelled (a gated epoch may keep only a
        # handful, whose own purity can be anything).
        kept = row["kept_fraction"]
        overall = kept * row["kept_purity"]
        if row["rejected_purity"] is not None:
            overall += (1 - kept) * row["rejected_purity"]
        assert 0.6 < overall < 0.9
        assert 0.0 <= row["kept_purity"] <= 1.0
        assert (row["lc_agreement"] is None) == (logged["corrected"] == "0")


@pytest.mark.slow
def test_lmft_starts_from_the_round_checkpoint(inputs, round_run, tmp_path):
    captured = {}
    original = train.PseudoLabelBrain.on_fit_start

    def capture(self):
        original(self)
        captured["model"] = {
            k: v.clone()
            for k, v in self.modules.embedding_model.state_dict().items()
        }
        captured["anchor"] = self.l2sp.anchor_0.clone()
        captured["anchor_name"] = self.l2sp.names[0]

    train.PseudoLabelBrain.on_fit_start = capture
    try:
        brain = train.main(
            argv(
                inputs,
                tmp_path / "lmft",
                yaml="lmft.yaml",
                init_from=round_run / "save",
                number_of_epochs=1,
                crop_samples=16000,
            )
        )
    finally:
        train.PseudoLabelBrain.on_fit_start = original
    assert brain.hparams.aam_loss.margin == 0.5
    round_state = safe_torch_load(
        last_checkpoint(round_run) / "embedding_model.ckpt"
    )
    for key, value in round_state.items():
        assert torch.equal(captured["model"][key], value), key
    pretrained = safe_torch_load(inputs["wavlm"])["model"]
    assert torch.equal(captured["anchor"], pretrained[captured["anchor_name"]])
    assert len(read_log(tmp_path / "lmft")) == 1


@pytest.mark.slow
def test_bf16_accumulation_and_loader_workers(inputs, tmp_path):
    """Mixed precision, gradient accumulation, augmentation in 2 workers."""
    brain = train.main(
        argv(
            inputs,
            tmp_path / "out",
            noise_folder=inputs["noise_folder"],
            rir_folder=inputs["rir_folder"],
            num_workers=2,
            number_of_epochs=1,
        )
        + ["--precision=bf16", "--grad_accumulation_factor=2"]
    )
    n_batches = len(brain.train_sampler)
    assert n_batches >= 4
    assert brain.optimizer_step == n_batches // 2
    row = read_log(tmp_path / "out")[0]
    assert float(row["loss"]) > 0 and int(row["bad_audio"]) == 0


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.mark.slow
def test_kill_and_resume_continues_with_the_same_state(inputs, tmp_path):
    common = dict(
        number_of_epochs=2,
        gate_start_epoch=2,
        lc_start_epoch=2,
        ckpt_interval_minutes=0,
    )
    straight = tmp_path / "straight"
    train.main(argv(inputs, straight, **common) + ["--ckpt_interval_steps=1"])
    resumed = tmp_path / "resumed"
    original = train.PseudoLabelBrain.on_fit_batch_start

    def kill(self, batch, should_step):
        if self.epoch == 2 and self.step == 3:
            raise Killed()
        original(self, batch, should_step)

    train.PseudoLabelBrain.on_fit_batch_start = kill
    try:
        with pytest.raises(Killed):
            train.main(
                argv(inputs, resumed, **common) + ["--ckpt_interval_steps=1"]
            )
    finally:
        train.PseudoLabelBrain.on_fit_batch_start = original
    assert len(read_log(resumed)) == 1
    train.main(argv(inputs, resumed, **common) + ["--ckpt_interval_steps=1"])
    assert read_log(resumed) == read_log(straight)
    a, b = last_checkpoint(straight), last_checkpoint(resumed)
    for name in ("embedding_model.ckpt", "classifier.ckpt"):
        state_a, state_b = safe_torch_load(a / name), safe_torch_load(b / name)
        for key in state_a:
            torch.testing.assert_close(state_a[key], state_b[key], msg=key)
    gate_a = safe_torch_load(a / "loss_gate.ckpt")
    gate_b = safe_torch_load(b / "loss_gate.ckpt")
    assert gate_a["threshold"] == pytest.approx(gate_b["threshold"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train():
    """Command that starts train.py on two processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(ROOT / "train.py"),
    ]


@pytest.mark.slow
def test_ddp_two_processes_take_the_same_first_step_as_one(inputs, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = [
        "--debug",
        "--debug_batches=1",
        "--debug_epochs=1",
        "--debug_persistently",
        # Plain SGD: the update is the gradient itself, so the check is on
        # gradients (Adam's first step is close to lr * sign(gradient)).
        # Only the first step: from the second on, the L2-SP gradient of a
        # tensor that moved by rounding noise only (attention key biases
        # get zero gradient in exact arithmetic) is a unit vector pointing
        # along that noise.
        "--opt_class=!name:torch.optim.SGD",
    ]
    single = argv(inputs, tmp_path / "one") + common
    subprocess.run(
        [sys.executable, str(ROOT / "train.py")] + single,
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    double = argv(inputs, tmp_path / "two") + common
    result = subprocess.run(
        torchrun_train() + double + ["--distributed_backend=gloo"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = last_checkpoint(tmp_path / "one"), last_checkpoint(tmp_path / "two")
    pretrained = safe_torch_load(inputs["wavlm"])["model"]
    # float32 bound. The runs differ in how the batch's gradient is summed
    # (8 samples in one process; 4 + 4 and an all-reduce in two) and in the
    # blocking of batch-size-dependent products: a gradient entry carries
    # gamma(N) of the magnitude of its terms, N = 8 crops x 24 frames summed
    # in a weight gradient plus the widths the backward pass crosses (2
    # layers x (64 + 128) + 64 in MHFA). Those terms are of the order of the
    # largest gradient of the same parameter group (a tensor whose exact
    # gradient is 0, like attention key biases, moves by that rounding
    # noise only), so one SGD step gives gamma(N) times the group's largest
    # update: WavLM's, from the pre-trained file; MHFA's and the
    # classifier's start is not on disk, so their whole weights stand in.
    # w - lr g is also rounded once in each run (2u |w|).
    n = 8 * 24 + 2 * (64 + 128) + 64
    for name in ("embedding_model.ckpt", "classifier.ckpt"):
        state_a, state_b = safe_torch_load(a / name), safe_torch_load(b / name)
        wavlm_update = (
            max(
                (value - pretrained[key.removeprefix("wavlm.")]).abs().max()
                for key, value in state_a.items()
                if key.startswith("wavlm.")
            )
            if name == "embedding_model.ckpt"
            else None
        )
        for key in state_a:
            if key.startswith("wavlm."):
                scale = wavlm_update
            else:
                scale = max(v.abs().max() for v in state_a.values())
            bound = 2 * U * state_a[key].abs() + gamma(n) * scale
            difference = (state_a[key] - state_b[key]).abs()
            assert bool((difference <= bound).all()), key
    moved = safe_torch_load(a / "embedding_model.ckpt")
    changed = [
        k
        for k in pretrained
        if ".layers." in k
        and f"wavlm.{k}" in moved
        and not torch.equal(moved[f"wavlm.{k}"], pretrained[k])
    ]
    assert changed, "the transformer did not move"


@pytest.mark.slow
def test_ddp_with_layer_drop_runs(inputs, tmp_path):
    """Layer drop leaves parameters unused on some ranks (DDP corner case)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    options = argv(
        inputs,
        tmp_path / "out",
        pretrained_wavlm="null",
        wavlm_preset="tiny",
        wavlm_overrides="{encoder_layerdrop: 0.5}",
    )
    result = subprocess.run(
        torchrun_train()
        + options
        + [
            "--distributed_backend=gloo",
            "--debug",
            "--debug_batches=3",
            "--debug_epochs=1",
            "--debug_persistently",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_log(tmp_path / "out")) == 1


@pytest.mark.parametrize(
    "lines, message",
    [
        ("x a.wav\n", "non-negative integer label"),
        ("9 a.wav\n12 a.wav\n", "[9, 12]"),
        ("1 missing1.wav\n1 missing2.wav\n", "2 of 2 listed files are missing"),
        ("1 a.wav extra\n", "LABEL RELPATH"),
    ],
)
def test_bad_train_lists_fail_with_one_clear_line(tmp_path, lines, message):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "pl.txt").write_text(lines)
    with pytest.raises(TrainListError) as error:
        read_train_list(str(tmp_path / "pl.txt"), str(tmp_path), 8)
    assert message in str(error.value)
    assert "pl.txt" in str(error.value)


def test_cli_errors_write_nothing(inputs, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as error:
        train.main(argv(inputs, output, not_a_key=1))
    assert "not_a_key" in str(error.value)
    args = [a for a in argv(inputs, output) if "train_list" not in a]
    with pytest.raises(SystemExit) as error:
        train.main(args)
    assert "train_list" in str(error.value)
    with pytest.raises(SystemExit) as error:
        train.main(argv(inputs, output, n_classes=4))
    assert "n_classes=4" in str(error.value)
    assert not output.exists()
