"""The ECAPA-TDNN encoder option: stage 1's network, fine-tuned in rounds."""

import json
import os
import pathlib
import shutil

import pytest
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization
from speechbrain.utils.checkpoints import Checkpointer

import train
from speechbrain_ext.lobes.dino import DINOHead, DINONetwork
from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA
from speechbrain_ext.pretrained.checkpoints import (
    CheckpointMismatchError,
    load_embedding_model,
)
from speechbrain_ext.pretrained.export import export_model
from speechbrain_ext.pretrained.model_factory import build_embedding_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = {
    "n_mels": 20,
    "channels": [16, 16, 16, 16, 48],
    "attention_channels": 8,
    "se_channels": 8,
}
EMB = 12

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dino_save(tmp_path_factory):
    """A DINO stage's save folder with one checkpoint of a tiny network."""
    torch.manual_seed(0)
    backbone = ECAPA_TDNN(
        SIZES["n_mels"],
        channels=SIZES["channels"],
        attention_channels=SIZES["attention_channels"],
        se_channels=SIZES["se_channels"],
        lin_neurons=EMB,
    )
    student = DINONetwork(backbone, DINOHead(EMB, 32, 8, 64)).eval()
    teacher = DINONetwork(
        ECAPA_TDNN(
            SIZES["n_mels"],
            channels=SIZES["channels"],
            attention_channels=SIZES["attention_channels"],
            se_channels=SIZES["se_channels"],
            lin_neurons=EMB,
        ),
        DINOHead(EMB, 32, 8, 64),
    ).eval()
    save = tmp_path_factory.mktemp("dino") / "save"
    Checkpointer(
        save, {"student": student, "teacher": teacher}
    ).save_checkpoint()
    return save, student, teacher


def stage1_embedding(network, wavs):
    """How stage 1 embeds (recipes/train_dino.py: DINOBrain.extract)."""
    feats = Fbank(n_mels=SIZES["n_mels"])(wavs)
    lengths = torch.ones(wavs.shape[0])
    feats = InputNormalization(norm_type="sentence", std_norm=False)(
        feats, lengths
    )
    return network.embed(feats, lengths)


@pytest.mark.parametrize("network", ["student", "teacher"])
def test_encoder_starts_as_stage_1s_network(dino_save, network):
    save, *networks = dino_save
    model = build_embedding_model(
        output_size=EMB,
        encoder="ecapa",
        ecapa=SIZES,
        dino_checkpoint=str(save),
        dino_network=network,
    ).eval()
    wavs = torch.randn(3, 16000)
    with torch.no_grad():
        want = stage1_embedding(
            networks[("student", "teacher").index(network)], wavs
        )
        got = model(wavs)
    assert got.shape == (3, 1, EMB)
    torch.testing.assert_close(got[:, 0], want, rtol=0, atol=0)


def test_mismatched_sizes_and_bad_choices_are_one_clear_error(dino_save):
    save, *_ = dino_save
    with pytest.raises(CheckpointMismatchError, match="student.ckpt"):
        build_embedding_model(
            output_size=EMB + 1,
            encoder="ecapa",
            ecapa=SIZES,
            dino_checkpoint=str(save),
            dino_network="student",
        )
    with pytest.raises(ValueError, match="dino_network="):
        build_embedding_model(
            output_size=EMB,
            encoder="ecapa",
            ecapa=SIZES,
            dino_checkpoint=str(save),
            dino_network="ema",
        )
    with pytest.raises(ValueError, match="encoder="):
        build_embedding_model(encoder="resnet")
    with pytest.raises(ValueError, match="pretrained_wavlm"):
        build_embedding_model("WavLM-Base+.pt", encoder="ecapa", ecapa=SIZES)


def test_exported_ecapa_model_loads_through_speechbrain(tmp_path):
    from speechbrain.inference.speaker import SpeakerRecognition

    torch.manual_seed(0)
    model = FbankECAPA(**SIZES, embedding_size=EMB).eval()
    folder = tmp_path / "model"
    export_model(model, str(folder))
    loaded = SpeakerRecognition.from_hparams(
        source=str(folder), savedir=str(tmp_path / "cache")
    )
    wavs = torch.randn(2, 16000)
    with torch.no_grad():
        want = model(wavs)
    got = loaded.encode_batch(wavs, torch.ones(2))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.slow
def test_round_fine_tunes_the_dino_network(dino_save, tiny_corpus, tmp_path):
    save, student, _ = dino_save
    lines = []
    speakers = {}
    for line in open(tiny_corpus["train_list"], encoding="utf-8"):
        speaker, relpath = line.split()
        lines.append(
            f"{speakers.setdefault(speaker, len(speakers))} {relpath}\n"
        )
    (tmp_path / "pl.txt").write_text("".join(lines))
    output = tmp_path / "round"
    options = {
        "data_folder": tiny_corpus["data_folder"],
        "train_list": tmp_path / "pl.txt",
        "pretrained_wavlm": "null",
        "output_folder": output,
        "encoder": "ecapa",
        "ecapa": json.dumps(SIZES),
        "emb_dim": EMB,
        "dino_checkpoint": save,
        "dino_network": "student",
        "n_classes": len(speakers),
        "batch_size": 8,
        "crop_samples": 16000,
        "num_workers": 0,
        "number_of_epochs": 3,
        "gate_start_epoch": 2,
        "lc_start_epoch": 3,
        "defer_repeated_speakers": True,
    }
    brain = train.main(
        [str(ROOT / "hparams" / "round1.yaml")]
        + [f"--{key}={value}" for key, value in options.items()]
        + ["--device=cpu", "--noprogressbar"]
    )
    log = (output / "train_log.txt").read_text().splitlines()
    assert len(log) == 3 and "lr_ecapa" in log[0]
    # Every ECAPA-TDNN weight is trained; L2-SP anchors the DINO weights.
    model = brain.modules.embedding_model
    anchored = {
        name: getattr(brain.l2sp, f"anchor_{i}")
        for i, name in enumerate(brain.l2sp.names)
    }
    start = {
        k[len("backbone.") :]: v
        for k, v in student.state_dict().items()
        if k.startswith("backbone.")
    }
    moved = 0
    for name, value in model.backbone.named_parameters():
        torch.testing.assert_close(anchored[name], start[name])
        moved += not torch.equal(value.detach(), start[name])
    assert moved == len(anchored) > 0
    # The later stages read the architecture from the run's output folder.
    loaded, _ = load_embedding_model(output)
    assert isinstance(loaded, FbankECAPA)
    assert loaded.arguments == {**SIZES, "embedding_size": EMB}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    shutil.rmtree(output / "save")
    assert os.path.isfile(output / "epoch_stats.json")
