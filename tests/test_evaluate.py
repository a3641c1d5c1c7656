"""The evaluation stage on the tiny corpus: outputs, cache, bad input."""

import copy
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from tiny_models import save_training_checkpoint

from speechbrain_ext.dataio.embeddings_io import save_embeddings
from speechbrain_ext.utils.io_utils import safe_torch_load
from speechbrain_ext.verification import extraction
from speechbrain_ext.verification.metrics import verification_metrics
from speechbrain_ext.verification.scoring import read_trials

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num_workers=0", "--noprogressbar"]
# Small crops keep the test fast; the protocol is the same.
TINY += ["--n_crops=3", "--crop_samples=16000"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    save = tmp_path_factory.mktemp("train") / "save"
    save_training_checkpoint(save, tiny_model)
    return str(save)


def evaluate(argv, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = importlib.util.spec_from_file_location(
        "evaluate", os.path.join(ROOT, "recipes", "evaluate.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["hparams/evaluate.yaml"] + TINY + argv)


def test_outputs_metrics_and_cache(
    tiny_corpus, checkpoint, tmp_path, monkeypatch, capsys
):
    rng = np.random.default_rng(0)
    cohort = tmp_path / "cohort.pt"
    save_embeddings(
        ([f"c/{i}.wav" for i in range(30)], rng.normal(size=(30, 16))), cohort
    )
    output = tmp_path / "eval"
    argv = [
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--trials={tiny_corpus['trials']}",
        f"--model_source={checkpoint}",
        f"--output_folder={output}",
        f"--cohort_embeddings={cohort}",
        "--asnorm_top_k=5",
    ]
    evaluate(argv, monkeypatch)
    summary = json.loads((output / "metrics.json").read_text())
    methods = ["reference", "reference_asnorm", "cosine", "cosine_asnorm"]
    assert list(summary["methods"]) == methods
    assert summary["units"]["EER"] == "percent"
    for key in ("EER", "minDCF_0.05", "minDCF_0.01"):
        assert summary[key] == summary["methods"]["reference"][key]

    trials = read_trials(tiny_corpus["trials"])
    lines = (output / "scores.txt").read_text().splitlines()
    assert len(lines) == len(trials.labels)
    fields = [line.split() for line in lines]
    assert [f[2:] for f in fields] == [
        [e, t] for e, t in zip(trials.enrol, trials.test)
    ]
    recomputed = verification_metrics(
        [float(f[0]) for f in fields], [int(f[1]) for f in fields]
    )
    assert recomputed["EER"] == pytest.approx(summary["EER"], abs=1e-3)
    for name in methods:
        assert (output / f"scores_{name}.txt").exists()
    assert (output / "det.png").read_bytes()[:4] == b"\x89PNG"
    assert "reference_asnorm" in capsys.readouterr().out

    # Re-scoring reuses the cached embeddings: no model call at all.
    def fail(*args, **kwargs):
        raise AssertionError("embeddings were recomputed")

    monkeypatch.setattr(extraction, "embed_full_utterances", fail)
    monkeypatch.setattr(extraction, "embed_crops", fail)
    evaluate(argv[:-2] + ["--methods=[cosine]"], monkeypatch)
    again = json.loads((output / "metrics.json").read_text())
    assert list(again["methods"]) == ["cosine"]
    assert again["EER"] == summary["methods"]["cosine"]["EER"]


def test_det_title_legend_and_rounded_json(
    tiny_corpus, checkpoint, tmp_path, monkeypatch
):
    from speechbrain_ext.verification import metrics

    drawn = {}
    real = metrics.plot_det

    def record(curves, path, title):
        drawn.update(curves=list(curves), title=title)
        real(curves, path, title)

    monkeypatch.setattr(metrics, "plot_det", record)
    output = tmp_path / "eval"
    evaluate(
        [
            f"--data_folder={tiny_corpus['data_folder']}",
            f"--trials={tiny_corpus['trials']}",
            f"--model_source={checkpoint}",
            f"--output_folder={output}",
        ],
        monkeypatch,
    )
    trials = read_trials(tiny_corpus["trials"])
    stage = os.path.basename(os.path.dirname(checkpoint))  # OUT of OUT/save
    assert drawn["title"] == (
        f"{stage}: WavLM + MHFA, 16-d embeddings\n"
        f"trials.txt: {len(trials.labels)} trials "
        f"({int(trials.labels.sum())} target)"
    )
    assert drawn["curves"] == [
        "reference (3x3 crops + full, cosine)",
        "cosine (full utterance, cosine)",
    ]
    assert (output / "det.png").read_bytes()[:4] == b"\x89PNG"

    def floats(value):
        if isinstance(value, float):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from floats(item)
        elif isinstance(value, list):
            for item in value:
                yield from floats(item)

    text = (output / "metrics.json").read_text()
    numbers = list(floats(json.loads(text)))
    assert numbers
    # 8 significant digits at most: no 38.800000000000004.
    for number in numbers:
        assert float(f"{number:.8g}") == number, number


def test_cache_is_keyed_on_the_weights_not_the_path(
    tiny_corpus, tiny_model, checkpoint, tmp_path, monkeypatch
):
    from speechbrain_ext.pretrained.export import export_model

    output = tmp_path / "eval"
    argv = [
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--trials={tiny_corpus['trials']}",
        f"--output_folder={output}",
    ]
    evaluate(argv + [f"--model_source={checkpoint}"], monkeypatch)
    first = json.loads((output / "metrics.json").read_text())

    # The exported folder holds the same weights: the cache serves it.
    exported = export_model(tiny_model, str(tmp_path / "export"))

    def fail(*args, **kwargs):
        raise AssertionError("embeddings were recomputed")

    with monkeypatch.context() as patch:
        patch.setattr(extraction, "embed_full_utterances", fail)
        patch.setattr(extraction, "embed_crops", fail)
        evaluate(argv + [f"--model_source={exported}"], monkeypatch)
    again = json.loads((output / "metrics.json").read_text())
    assert again["model"] != first["model"]
    assert again["EER"] == first["EER"]

    # Other weights at the same path: embedded again.
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    export_model(changed, exported)
    calls = []
    real = extraction.embed_full_utterances

    def count(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(extraction, "embed_full_utterances", count)
    evaluate(argv + [f"--model_source={exported}"], monkeypatch)
    assert calls


def test_missing_files_are_listed(
    tiny_corpus, checkpoint, tmp_path, monkeypatch
):
    trials = tmp_path / "trials.txt"
    lines = open(tiny_corpus["trials"]).read().splitlines()[:4]
    lines += ["1 gone/a/1.wav gone/b/2.wav", "0 gone/a/1.wav gone/c/3.wav"]
    trials.write_text("\n".join(lines) + "\n")
    output = tmp_path / "eval"
    with pytest.raises(SystemExit) as error:
        evaluate(
            [
                f"--data_folder={tiny_corpus['data_folder']}",
                f"--trials={trials}",
                f"--model_source={checkpoint}",
                f"--output_folder={output}",
            ],
            monkeypatch,
        )
    message = str(error.value)
    assert "3 of " in message and "audio file(s) missing" in message
    assert "gone/a/1.wav, gone/b/2.wav, gone/c/3.wav" in message
    assert not output.exists()


def test_one_class_trial_list(tiny_corpus, checkpoint, tmp_path, monkeypatch):
    trials = tmp_path / "trials.txt"
    targets = [
        line
        for line in open(tiny_corpus["trials"]).read().splitlines()
        if line.startswith("1 ")
    ]
    trials.write_text("\n".join(targets) + "\n")
    with pytest.raises(SystemExit, match="no non-target \\(0\\) trials"):
        evaluate(
            [
                f"--data_folder={tiny_corpus['data_folder']}",
                f"--trials={trials}",
                f"--model_source={checkpoint}",
                f"--output_folder={tmp_path / 'eval'}",
            ],
            monkeypatch,
        )
    assert not (tmp_path / "eval").exists()


def test_cohort_of_another_model_is_refused(
    tiny_corpus, checkpoint, tmp_path, monkeypatch
):
    cohort = tmp_path / "cohort.pt"
    save_embeddings((["c/v/1.wav"], np.ones((1, 8))), cohort)
    with pytest.raises(SystemExit, match="dimension 8, the model's are 16"):
        evaluate(
            [
                f"--data_folder={tiny_corpus['data_folder']}",
                f"--trials={tiny_corpus['trials']}",
                f"--model_source={checkpoint}",
                f"--output_folder={tmp_path / 'eval'}",
                f"--cohort_embeddings={cohort}",
            ],
            monkeypatch,
        )
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_two_processes_give_the_same_embeddings_and_scores_as_one(
    tiny_corpus, checkpoint, tmp_path, monkeypatch, torchrun
):
    argv = [
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--trials={tiny_corpus['trials']}",
        f"--model_source={checkpoint}",
        "--shard_seconds=20",
    ]
    evaluate(argv + [f"--output_folder={tmp_path / 'one'}"], monkeypatch)
    result = torchrun(
        "recipes/evaluate.py",
        2,
        "hparams/evaluate.yaml",
        *TINY,
        *argv,
        f"--output_folder={tmp_path / 'two'}",
        "--distributed_backend=gloo",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}/2: shard" in result.stderr
    assert result.stdout.count("EER %") == 1, "only the main process scores"
    one = safe_torch_load(tmp_path / "one" / "eval_embeddings.pt")
    two = safe_torch_load(tmp_path / "two" / "eval_embeddings.pt")
    assert two["keys"] == one["keys"]
    # Same shards and batches, one thread per process: the same bits.
    for name in ("full", "crops"):
        assert torch.equal(two[name], one[name]), name
    for name in ("scores.txt", "scores_cosine.txt"):
        assert (tmp_path / "two" / name).read_text() == (
            tmp_path / "one" / name
        ).read_text()
    assert not (tmp_path / "two" / "eval_embeddings.pt.shards").exists()
