"""What users read: stage logs without library noise, warnings marked."""

import json
import os
import pathlib
import re
import subprocess
import sys

import torch

from speechbrain_ext.dataio.embeddings_io import save_embeddings

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Lines of library noise: matplotlib's font manager / PIL's PNG plugin
#: DEBUG records, SpeechBrain's torchvision notice and its copy of the
#: ``pip freeze`` output (kept in ``env.log``).
NOISE = re.compile(
    r"matplotlib|PIL\.|findfont|STREAM b'|torchvision|superpowers|"
    r"^[A-Za-z0-9_.-]+==[0-9]"
)


def test_pipeline_and_stage_logs_have_no_library_noise(tiny_corpus, tmp_path):
    # Stage 1 from external embeddings (fast) and its clustering, then the
    # summary plot: every log the pipeline and its stages write.
    with open(tiny_corpus["train_list"], encoding="utf-8") as f:
        keys = [line.split()[1] for line in f]
    torch.manual_seed(0)
    external = tmp_path / "external.pt"
    save_embeddings((keys, torch.randn(len(keys), 8)), external)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "pipeline.py"),
            str(ROOT / "hparams" / "pipeline.yaml"),
            f"--data_folder={tiny_corpus['data_folder']}",
            f"--train_list={tiny_corpus['train_list']}",
            f"--trials={tiny_corpus['trials']}",
            f"--output_folder={out}",
            f"--external_embeddings={external}",
            "--n_kmeans_clusters=8",
            "--n_pseudo_speakers=4",
            "--stages=[dino, pseudo_labels_dino]",
            "--device=cpu",
        ],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    logs = {
        "pipeline console": result.stdout + result.stderr,
        "pipeline log.txt": (out / "log.txt").read_text(),
        "dino log.txt": (out / "dino" / "log.txt").read_text(),
    }
    for path in (out / "logs").iterdir():
        logs[path.name] = path.read_text()
    assert {"dino.log", "pseudo_labels_dino.log"} <= set(logs)
    assert (out / "summary.png").exists()
    for name, text in logs.items():
        noise = [line for line in text.splitlines() if NOISE.search(line)]
        assert noise == [], f"{name}: {noise[:5]}"
    rows = json.loads((out / "summary.json").read_text())
    assert rows[0]["stage"] == "dino" and rows[0]["NMI"] is not None
