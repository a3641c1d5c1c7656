"""Bad input gets one line naming the file or key, and leaves nothing behind.

Most cases call the scripts' ``main`` in this process (``sys.exit(message)``
is what Python prints as the one line, exit code 1); one runs the script as
a process to pin exactly that.
"""

import errno
import importlib.util
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from tiny_models import tiny_wavlm_mhfa

import train
from speechbrain_ext.dataio.embeddings_io import save_embeddings
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig, save_wavlm
from speechbrain_ext.pretrained.architecture import (
    ARCHITECTURE_FILE,
    ArchitectureRecord,
)
from speechbrain_ext.utils import io_utils
from speechbrain_ext.utils.atomic_checkpointer import AtomicCheckpointer
from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    OutputWriteError,
    UnsafeCheckpointError,
    atomic_torch_save,
    safe_torch_load,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {
    "wavlm_preset": "tiny",
    "mhfa_heads": 4,
    "mhfa_compression": 16,
    "emb_dim": 32,
    "n_classes": 8,
    "batch_size": 8,
    "crop_samples": 8000,
    "num_workers": 0,
    "number_of_epochs": 1,
}


def load_script(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "recipes" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Evil:
    """Unpickling this runs code: it would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def inputs(tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_inputs")
    speakers, lines = {}, []
    with open(tiny_corpus["train_list"], encoding="utf-8") as f:
        for line in f:
            speaker, relpath = line.split()
            label = speakers.setdefault(speaker, len(speakers))
            lines.append(f"{label} {relpath}\n")
    (folder / "pl.txt").write_text("".join(lines))
    torch.manual_seed(0)
    wavlm = WavLM(WavLMConfig.tiny())
    save_wavlm(wavlm, folder / "wavlm.pt")
    checkpoint = safe_torch_load(folder / "wavlm.pt")
    torch.save({"model": checkpoint["model"]}, folder / "no_cfg.pt")
    torch.save(
        {"cfg": checkpoint["cfg"], "model": {"x": torch.ones(1)}},
        folder / "not_wavlm.pt",
    )
    (folder / "random.pt").write_bytes(bytes(np.arange(3, 250, dtype="u1")))
    torch.save({"a": Evil(folder / "EXECUTED")}, folder / "evil.pt")
    model = tiny_wavlm_mhfa(4, 16, 32)
    ckpt = folder / "ckpt" / "CKPT+x"
    ckpt.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt / "embedding_model.ckpt")
    ArchitectureRecord(model).save(str(ckpt / ARCHITECTURE_FILE))
    return {"folder": folder, "pl": str(folder / "pl.txt"), **tiny_corpus}


def train_argv(inputs, output, **overrides):
    options = {
        "data_folder": inputs["data_folder"],
        "train_list": inputs["pl"],
        "pretrained_wavlm": str(inputs["folder"] / "wavlm.pt"),
        "output_folder": str(output),
        **TINY,
        **overrides,
    }
    return (
        [str(ROOT / "hparams" / "round1.yaml")]
        + [f"--{key}={value}" for key, value in options.items()]
        + ["--device=cpu", "--noprogressbar"]
    )


def exit_line(function, argv):
    """The message of the SystemExit ``function(argv)`` ends with."""
    with pytest.raises(SystemExit) as error:
        function(argv)
    message = str(error.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_train_cli_error_is_one_line_on_stderr(inputs, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py")]
        + train_argv(inputs, tmp_path / "out", lr_backend="abc"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{ROOT / 'hparams' / 'round1.yaml'}: --lr_backend=abc: expected a "
        "number (the default is 0.005), got the text 'abc'"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv_edit, expected",
    [
        (lambda a: ["hparams/round1.yam"] + a[1:], "hparams file not found"),
        (lambda a: a + ["--lr_backend=1"], "--lr_backend is given more"),
        (lambda a: a + ["--margin=big"], "--margin=big: expected a number"),
        (lambda a: a + ["--gate_start_epoch=2.5"], "expected an integer"),
        (
            lambda a: a + ["--channel_augment_prob=1.5"],
            "--channel_augment_prob=1.5: expected a fraction in [0, 1]",
        ),
    ],
    ids=[
        "typo_in_hparams_path",
        "key_twice",
        "type_error",
        "float_for_int",
        "probability_above_1",
    ],
)
def test_command_line_mistakes(inputs, tmp_path, argv_edit, expected):
    argv = argv_edit(train_argv(inputs, tmp_path / "out", lr_backend=0.1))
    assert expected in exit_line(train.main, argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        ("\u00b2 {relpath}\n", "label '\u00b2'"),
        (b"0 \xff\xfe.wav\n", "not UTF-8 text (byte 0xff at offset 2)"),
    ],
    ids=["superscript_label", "not_utf8"],
)
def test_bad_train_list_content(inputs, tmp_path, content, expected):
    path = tmp_path / "pl.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        relpath = open(inputs["pl"]).readline().split()[1]
        path.write_text(content.format(relpath=relpath), encoding="utf-8")
    argv = train_argv(inputs, tmp_path / "out", train_list=path)
    message = exit_line(train.main, argv)
    assert str(path) in message and expected in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("missing.pt", "file not found"),
        ("random.pt", "not a torch file"),
        ("not_wavlm.pt", "does not fit the WavLM config"),
        ("no_cfg.pt", "not a WavLM checkpoint"),
        ("evil.pt", "refused, loading it would run Python code"),
    ],
)
def test_bad_pretrained_wavlm(inputs, tmp_path, name, expected):
    path = inputs["folder"] / name
    argv = train_argv(inputs, tmp_path / "out", pretrained_wavlm=path)
    message = exit_line(train.main, argv)
    assert message.startswith(f"{path}: ") and expected in message
    assert not (tmp_path / "out").exists()
    assert not (inputs["folder"] / "EXECUTED").exists()


def test_random_bytes_are_corrupt_not_unsafe(inputs):
    with pytest.raises(CorruptFileError, match="not a torch file"):
        safe_torch_load(inputs["folder"] / "random.pt")


def test_init_from_another_architecture(inputs, tmp_path):
    argv = train_argv(
        inputs,
        tmp_path / "out",
        init_from=inputs["folder"] / "ckpt" / "CKPT+x",
        mhfa_heads=8,
    )
    message = exit_line(train.main, argv)
    assert "embedding_model.ckpt: does not fit the model" in message
    assert "mhfa.att_head.weight (4, 16) in checkpoint vs (8, 16)" in message
    assert not (tmp_path / "out").exists()


def test_init_from_a_malicious_checkpoint(inputs, tmp_path):
    folder = tmp_path / "evil_ckpt" / "CKPT+x"
    folder.mkdir(parents=True)
    marker = tmp_path / "EXECUTED"
    torch.save({"a": Evil(marker)}, folder / "embedding_model.ckpt")
    argv = train_argv(inputs, tmp_path / "out", init_from=folder)
    assert "refused" in exit_line(train.main, argv)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_resume_with_another_architecture_keeps_the_run(inputs, tmp_path):
    output = tmp_path / "out"
    train.main(train_argv(inputs, output, mhfa_heads=4))
    saved = sorted((output / "save").iterdir())
    message = exit_line(train.main, train_argv(inputs, output, mhfa_heads=2))
    assert "does not fit the model built from the hparams" in message
    assert "use the hparams of that run, or another output_folder" in message
    assert sorted((output / "save").iterdir()) == saved


def test_nan_loss_stops_with_the_batch_files(inputs, tmp_path, monkeypatch):
    original = train.PseudoLabelBrain.compute_objectives

    def nan_objective(self, cosine, batch, stage):
        return original(self, cosine, batch, stage) * float("nan")

    monkeypatch.setattr(
        train.PseudoLabelBrain, "compute_objectives", nan_objective
    )
    message = exit_line(train.main, train_argv(inputs, tmp_path / "out"))
    assert message.startswith("the training loss is nan at step 1")
    assert inputs["data_folder"] in message and ".wav" in message
    assert not list((tmp_path / "out" / "save").glob("CKPT+*"))


def test_output_under_a_regular_file(inputs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = train_argv(inputs, blocker / "out")
    message = exit_line(train.main, argv)
    assert f"{blocker} is a file, not a folder" in message


def test_pseudo_label_checks_its_output_before_clustering(
    tmp_path, monkeypatch
):
    pseudo_label = load_script("pseudo_label")
    save_embeddings(
        {f"s{i}/v/{i}.wav": torch.randn(4) for i in range(6)},
        tmp_path / "e.pt",
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")

    def never(*args, **kwargs):
        raise AssertionError("clustering ran")

    monkeypatch.setattr(pseudo_label, "pseudo_label", never)
    message = exit_line(
        pseudo_label.main,
        [
            str(ROOT / "hparams" / "pseudo_label.yaml"),
            f"--embeddings_file={tmp_path / 'e.pt'}",
            f"--output_file={blocker / 'labels.txt'}",
            "--n_clusters=3",
            "--n_clusters_ahc=2",
        ],
    )
    assert f"{blocker} is a file, not a folder" in message


def test_one_sample_wav_at_extraction(inputs, tmp_path):
    extract = load_script("extract_embeddings")
    data = tmp_path / "data"
    (data / "s" / "v").mkdir(parents=True)
    soundfile.write(data / "s" / "v" / "1.wav", np.zeros(1, "f4"), 16000)
    output = tmp_path / "out" / "e.pt"
    message = exit_line(
        extract.main,
        [
            str(ROOT / "hparams" / "extract_embeddings.yaml"),
            f"--data_folder={data}",
            f"--model_source={inputs['folder'] / 'ckpt' / 'CKPT+x'}",
            f"--output_file={output}",
            "--num_workers=0",
            "--device=cpu",
        ],
    )
    assert message == (
        f"{data / 's' / 'v' / '1.wav'}: 1 samples, fewer than 400 (the "
        "receptive field of WavLM)"
    )
    assert not (tmp_path / "out").exists()


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.torch, "save", full)
    with pytest.raises(OutputWriteError) as error:
        atomic_torch_save({"a": torch.ones(1)}, tmp_path / "x.pt")
    assert str(error.value).startswith(f"{tmp_path / 'x.pt'}: cannot write")
    assert "No space left on device" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_disk_full_during_a_checkpoint_keeps_the_last_one(
    tmp_path, monkeypatch
):
    checkpointer = AtomicCheckpointer(
        tmp_path / "save", {"model": torch.nn.Linear(2, 2)}
    )
    good = checkpointer.save_checkpoint(meta={"n": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputWriteError) as error:
        checkpointer.save_checkpoint(meta={"n": 2})
    assert str(error.value).startswith(f"{tmp_path / 'save'}: cannot save")
    assert [p.name for p in (tmp_path / "save").iterdir()] == [good.path.name]


def test_inference_class_refuses_a_malicious_model(tiny_model, tmp_path):
    from speechbrain_ext.pretrained.export import export_model
    from speechbrain_ext.pretrained.inference import WavLMSpeakerVerification

    folder = tmp_path / "model"
    export_model(tiny_model, folder)
    marker = tmp_path / "EXECUTED"
    torch.save({"a": Evil(marker)}, folder / "embedding_model.ckpt")
    with pytest.raises(UnsafeCheckpointError) as error:
        WavLMSpeakerVerification.from_hparams(
            source=str(folder), savedir=str(tmp_path / "cache")
        )
    assert str(error.value).startswith(f"{folder / 'embedding_model.ckpt'}: ")
    assert "\n" not in str(error.value)
    assert error.value.__suppress_context__
    assert not marker.exists()


def test_plain_pickle_needing_code_is_unsafe(tmp_path):
    path = tmp_path / "evil.pkl"
    marker = tmp_path / "EXECUTED"
    with open(path, "wb") as f:
        pickle.dump(Evil(marker), f)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code"):
        safe_torch_load(path)
    assert not marker.exists()
