"""The objects of a run are built in its hparams (SpeechBrain's way).

The augmenter, the LR scheduler and the architecture record of the training
hparams, and stage 1's crop augmenter, each read back from a loaded hparams
file: the scripts only wire them.
"""

import os
import pathlib

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from data_prep.augmentation import prepare_augmentation
from speechbrain_ext.dataio.augment import SixWayAugment
from speechbrain_ext.pretrained.architecture import (
    ArchitectureRecord,
    model_from_yaml,
    model_yaml,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAINING = ("round1.yaml", "round2.yaml", "lmft.yaml")


def load(name, tmp_path, **overrides):
    placeholders = {
        "data_folder": str(tmp_path),
        "train_list": str(tmp_path / "pl.txt"),
        "pretrained_wavlm": None,
        "init_from": None,
        "output_folder": str(tmp_path / "out"),
        "wavlm_preset": "tiny",
        "mhfa_heads": 2,
        "mhfa_compression": 4,
        "emb_dim": 8,
    }
    if name == "dino.yaml":
        placeholders = {
            "data_folder": str(tmp_path),
            "train_list": str(tmp_path / "list.txt"),
            "output_folder": str(tmp_path / "out"),
            "channels": [8, 8, 8, 8, 24],
            "attention_channels": 8,
            "se_channels": 8,
            "head_hidden_size": 8,
            "head_bottleneck_size": 4,
            "head_output_size": 8,
        }
    with open(ROOT / "hparams" / name, encoding="utf-8") as f:
        return load_hyperpyyaml(f, {**placeholders, **overrides})


@pytest.mark.parametrize("name", TRAINING)
def test_training_augmenter_reads_what_the_script_prepares(
    name, tiny_corpus, tmp_path
):
    hparams = load(name, tmp_path, music_only_for_babble_music=True)
    augmenter = hparams["augmenter"]
    assert isinstance(augmenter, SixWayAugment)
    assert augmenter.music_only_for_babble_music is True
    # The reference's SNR ranges and babble size.
    assert augmenter.music_snr == (5.0, 15.0)
    assert augmenter.babble_snr == (13.0, 20.0)
    assert augmenter.noise_snr == (0.0, 15.0)
    assert augmenter.babble_speakers == (3, 8)
    # What train.py writes in augmentation_folder is what it reads.
    prepare_augmentation(
        hparams["augmentation_folder"],
        noise_folder=tiny_corpus["noise_folder"],
        rir_folder=tiny_corpus["rir_folder"],
    )
    assert hparams["augmentation_folder"] == str(
        tmp_path / "out" / "augmentation"
    )
    assert sorted(augmenter.load()) == ["babble", "music", "noise", "reverb"]


@pytest.mark.parametrize("name", TRAINING)
def test_training_lr_scheduler_decays_every_group(name, tmp_path):
    hparams = load(name, tmp_path, lr_decay=0.5)
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD(
        [{"params": weights[:1], "lr": 1.0}, {"params": weights[1:]}], lr=0.25
    )
    scheduler = hparams["lr_scheduler"](optimizer)
    optimizer.step()
    scheduler.step()
    scheduler.step()
    # Exact powers of two.
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.0625]


@pytest.mark.parametrize("name", TRAINING)
def test_training_checkpoints_record_the_architecture(name, tmp_path):
    hparams = load(name, tmp_path)
    recoverables = hparams["checkpointer"].recoverables
    record = recoverables["architecture"]
    assert isinstance(record, ArchitectureRecord)
    assert record.model is hparams["embedding_model"]
    path = tmp_path / "architecture.ckpt"
    record.save(str(path))
    rebuilt = model_from_yaml(path.read_text(), str(path))
    assert model_yaml(rebuilt) == model_yaml(hparams["embedding_model"])


def test_stage_1_crop_augmenter_reads_what_the_script_prepares(
    tiny_corpus, tmp_path
):
    hparams = load("dino.yaml", tmp_path)
    augmenter = hparams["crop_augmenter"]
    assert isinstance(augmenter, SixWayAugment)
    assert not augmenter.music_only_for_babble_music
    prepare_augmentation(
        hparams["augmentation_folder"],
        noise_folder=tiny_corpus["noise_folder"],
        rir_folder=None,
    )
    assert os.path.dirname(hparams["augmentation_folder"]) == str(
        tmp_path / "out" / "save"
    )
    assert sorted(augmenter.load()) == ["babble", "music", "noise"]


@pytest.mark.parametrize("name", ("dino.yaml",) + TRAINING)
def test_recipe_defaults_leave_the_channel_out_as_the_reference(name, tmp_path):
    key = "crop_augmenter" if name == "dino.yaml" else "augmenter"
    assert not load(name, tmp_path)[key].uses_channel
    channel = load(name, tmp_path, channel_augment_prob=0.5)[key].channel
    assert channel.prob == 0.5


@pytest.mark.parametrize("name", TRAINING)
def test_gate_floor_is_ten_percent(name, tmp_path):
    """Between measured tails (<= 9 %) and populations (>= 18.8 %)."""
    assert load(name, tmp_path)["loss_gate"].min_kept_fraction == 0.1
