"""The README's stage commands on a real training output folder.

``--model_source`` of extraction and export is the training run's output
folder (which holds SpeechBrain's copy of the training ``hyperparams.yaml``),
its ``save/``, or the exported folder; no architecture option is repeated:
the scripts read what the run recorded.
"""

import importlib.util
import os
import pathlib

import numpy as np
import pytest
import torch

import train
from speechbrain_ext.dataio.embeddings_io import load_embeddings
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig, save_wavlm

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def script(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "recipes" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.slow
def test_stages_read_the_architecture_of_the_run(
    tiny_corpus, tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)
    labels = {}
    lines = []
    for line in open(tiny_corpus["train_list"], encoding="utf-8"):
        speaker, relpath = line.split()
        lines.append(f"{labels.setdefault(speaker, len(labels))} {relpath}\n")
    (tmp_path / "pl.txt").write_text("".join(lines))
    torch.manual_seed(0)
    save_wavlm(WavLM(WavLMConfig.tiny()), tmp_path / "wavlm.pt")
    run = tmp_path / "exp" / "round1"
    # Sizes that differ from every default, given to training only.
    train.main(
        [
            str(ROOT / "hparams" / "round1.yaml"),
            f"--data_folder={tiny_corpus['data_folder']}",
            f"--train_list={tmp_path / 'pl.txt'}",
            f"--pretrained_wavlm={tmp_path / 'wavlm.pt'}",
            f"--output_folder={run}",
            "--wavlm_preset=tiny",
            "--mhfa_heads=3",
            "--mhfa_compression=5",
            "--emb_dim=7",
            f"--n_classes={len(labels)}",
            "--number_of_epochs=1",
            "--batch_size=8",
            "--crop_samples=8000",
            "--num_workers=0",
            "--defer_repeated_speakers=True",
            "--device=cpu",
            "--noprogressbar",
        ]
    )
    assert (run / "hyperparams.yaml").is_file()
    export = tmp_path / "exp" / "model"
    script("export_pretrained")(
        [
            "hparams/export_pretrained.yaml",
            f"--model_source={run}",
            f"--output_folder={export}",
            "--num_workers=0",
        ]
    )
    embeddings = {}
    for name, source in (
        ("out", run),
        ("save", run / "save"),
        ("export", export),
    ):
        output = tmp_path / f"{name}.pt"
        script("extract_embeddings")(
            [
                "hparams/extract_embeddings.yaml",
                f"--data_folder={tiny_corpus['data_folder']}",
                f"--utterance_list={tiny_corpus['train_list']}",
                f"--model_source={source}",
                f"--output_file={output}",
                "--num_workers=0",
                "--noprogressbar",
            ]
        )
        embeddings[name] = load_embeddings(output)
    keys, matrix = embeddings["out"]
    assert matrix.shape == (len(lines), 7)
    for name in ("save", "export"):
        assert embeddings[name][0] == keys
        # The same weights and code in one process: the same bits.
        assert np.array_equal(embeddings[name][1], matrix), name
    assert os.path.isfile(export / "hyperparams.yaml")
