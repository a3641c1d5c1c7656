"""Batched extraction equals one-at-a-time; shards resume; the stage script."""

import importlib.util
import os

import numpy as np
import pytest
import soundfile
import torch
from tiny_models import save_training_checkpoint, tiny_wavlm_mhfa

from speechbrain_ext.dataio.audio import AudioError, read_audio, wrap_pad
from speechbrain_ext.dataio.embeddings_io import load_embeddings
from speechbrain_ext.dataio.lists import read_utterance_list
from speechbrain_ext.dataio.shards import MIN_SHARDS, plan_shards
from speechbrain_ext.pretrained.architecture import (
    ARCHITECTURE_FILE,
    model_yaml,
)
from speechbrain_ext.pretrained.checkpoints import (
    CheckpointNotFoundError,
    find_checkpoint,
    load_embedding_model,
)
from speechbrain_ext.pretrained.export import export_model
from speechbrain_ext.utils.stage_utils import pick_device
from speechbrain_ext.verification import extraction
from speechbrain_ext.verification.extraction import (
    embed_crops,
    embed_full_utterances,
    embed_in_shards,
    length_batches,
    resolve_batch_size,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num_workers=0", "--noprogressbar"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def paths(tiny_corpus):
    keys = read_utterance_list(tiny_corpus["train_list"])[::8]
    return [os.path.join(tiny_corpus["data_folder"], k) for k in keys]


def one_at_a_time(model, paths, max_samples=None):
    with torch.no_grad():
        return np.stack(
            [
                model(read_audio(p, stop=max_samples)[None])[0, 0].numpy()
                for p in paths
            ]
        )


def test_length_batches_bounds():
    lengths = [5, 50, 7, 6, 40, 8]
    batches = length_batches(lengths, max_batch_size=2, max_batch_samples=90)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) <= 2
        assert (
            len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 90
        )
    assert batches[0] == [0, 3]


def test_auto_batch_size_is_one_on_cpu_and_bad_values_are_refused():
    assert resolve_batch_size("auto", torch.device("cpu"), 16) == 1
    assert resolve_batch_size("auto", "cuda", 2) == 2
    assert resolve_batch_size(3, "cuda", 2) == 3
    for bad in (0, -1, 2.5, "16", True):
        with pytest.raises(ValueError, match="batch size"):
            resolve_batch_size(bad, "cpu", 16)


def test_batched_equals_one_at_a_time_and_is_deterministic(tiny_model, paths):
    expected = one_at_a_time(tiny_model, paths)
    lengths = [soundfile.info(p).frames for p in paths]
    assert len(set(lengths)) > 1, "the test needs utterances of many lengths"
    batched = embed_full_utterances(
        tiny_model, paths, max_samples=None, max_batch_size=4, progress=False
    )
    np.testing.assert_allclose(batched, expected, atol=1e-4, rtol=0)
    again = embed_full_utterances(
        tiny_model, paths, max_samples=None, max_batch_size=4, progress=False
    )
    assert np.array_equal(batched, again)


def test_cap_on_full_utterance(tiny_model, paths):
    capped = embed_full_utterances(
        tiny_model, paths[:3], max_samples=20_000, progress=False
    )
    np.testing.assert_allclose(
        capped, one_at_a_time(tiny_model, paths[:3], 20_000), atol=1e-4, rtol=0
    )


def test_crops_wrap_pad_short_audio(tiny_model, tmp_path):
    short = tmp_path / "short.wav"
    wav = np.random.default_rng(0).normal(0, 0.1, 6000).astype(np.float32)
    soundfile.write(short, wav, 16000)
    crops = embed_crops(
        tiny_model, [str(short)], crop_samples=16_000, n_crops=3, progress=False
    )
    assert crops.shape == (1, 3, 16)
    # As in the reference: wrap-padded to 16,001 samples, crops starting at
    # int(linspace(0, 1, 3)) = 0, 0, 1.
    padded = wrap_pad(torch.from_numpy(wav), 16_001)
    with torch.no_grad():
        first = tiny_model(padded[None, :16_000])[0, 0]
        last = tiny_model(padded[None, 1:])[0, 0]
    # A batch of 3 different crops vs one at a time: float32 matrix products
    # summed in another order, as in the batched tests above (1e-4).
    for crop, expected in zip(crops[0], (first, first, last)):
        np.testing.assert_allclose(crop, expected, atol=1e-4, rtol=0)


def test_shards_resume_and_recompute(tiny_model, paths, tmp_path, monkeypatch):
    keys = [f"k{i}" for i in range(len(paths))]
    folder = str(tmp_path / "shards")
    lengths = extraction.audio_lengths(paths)
    # At most a third of the audio per shard (fewer files on a list this
    # short: MIN_SHARDS).
    shard_seconds = sum(lengths) / 16000 / 3

    def embed(fingerprint):
        return embed_in_shards(
            tiny_model,
            paths,
            keys,
            folder,
            shard_seconds=shard_seconds,
            fingerprint=fingerprint,
            max_samples=None,
            progress=False,
        )

    first = embed("A")
    np.testing.assert_allclose(
        first, one_at_a_time(tiny_model, paths), atol=1e-4, rtol=0
    )
    shards = plan_shards(lengths, round(shard_seconds * 16000), MIN_SHARDS)
    assert len(shards) >= 3
    assert sorted(os.listdir(folder)) == [
        f"shard_{i:05d}.pt" for i in range(len(shards))
    ]
    calls = []
    original = extraction.embed_full_utterances

    def counting(model, shard_paths, **kwargs):
        calls.append(len(shard_paths))
        return original(model, shard_paths, **kwargs)

    monkeypatch.setattr(extraction, "embed_full_utterances", counting)
    os.remove(os.path.join(folder, "shard_00001.pt"))
    last = os.path.join(folder, "shard_00002.pt")
    with open(last, "rb") as f:
        data = f.read()
    with open(last, "wb") as f:
        f.write(data[: len(data) // 2])
    resumed = embed("A")
    assert sorted(calls) == sorted([len(shards[1]), len(shards[2])])
    assert np.array_equal(first, resumed)
    calls.clear()
    embed("B")
    assert sorted(calls) == sorted(len(shard) for shard in shards)


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "recipes", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_checkpoint(model, folder):
    save = os.path.join(folder, "save")
    save_training_checkpoint(save, model)
    return save


def run_script(argv):
    module = load_recipe("extract_embeddings")
    module.main(["hparams/extract_embeddings.yaml"] + argv)


def test_sharded_extraction_logs_a_few_progress_lines(
    tiny_model, paths, tmp_path, caplog, capsys
):
    from speechbrain_ext.utils.stage_output import final_state

    keys = [f"k{i}" for i in range(len(paths))]
    with caplog.at_level("INFO"):
        embed_in_shards(
            tiny_model,
            paths,
            keys,
            str(tmp_path / "shards"),
            fingerprint="A",
            max_samples=None,
            progress=True,
        )
    # One shard per file (MIN_SHARDS), done in far less than SHARD_LOG_S:
    # one ETA line (the last shard's), no per-batch throughput lines.
    messages = [record.getMessage() for record in caplog.records]
    shard_lines = [m for m in messages if m.startswith("rank 0/1: shard")]
    assert len(paths) > 1
    assert len(shard_lines) == 1
    assert f"({len(paths)} of {len(paths)} here)" in shard_lines[0]
    assert "ETA" in shard_lines[0]
    assert not [m for m in messages if "utterances in" in m]
    # The bars were drawn, then cleared: nothing of them stays in a log.
    err = capsys.readouterr().err
    assert "utt/s" in err
    assert all("utt/s" not in final_state(line) for line in err.split("\n"))


def test_stage_script_writes_the_embeddings_file(
    tiny_model, tiny_corpus, tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)
    save = save_checkpoint(tiny_model, str(tmp_path / "train"))
    output = tmp_path / "emb.pt"
    run_script(
        TINY
        + [
            f"--data_folder={tiny_corpus['data_folder']}",
            f"--utterance_list={tiny_corpus['train_list']}",
            f"--model_source={save}",
            f"--output_file={output}",
            "--shard_seconds=30.5",
        ]
    )
    keys, matrix = load_embeddings(output)
    assert keys == read_utterance_list(tiny_corpus["train_list"])
    paths = [os.path.join(tiny_corpus["data_folder"], k) for k in keys[:4]]
    np.testing.assert_allclose(
        matrix[:4], one_at_a_time(tiny_model, paths, 700_000), atol=1e-4, rtol=0
    )
    assert not os.path.exists(str(output) + ".shards")


def test_stage_script_errors(tiny_model, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    save = save_checkpoint(tiny_model, str(tmp_path / "train"))
    output = tmp_path / "emb.pt"
    common = [f"--data_folder={tiny_corpus['data_folder']}"]
    with pytest.raises(SystemExit, match="'model_source' is a !PLACEHOLDER"):
        run_script(common + [f"--output_file={output}"])
    with pytest.raises(SystemExit, match="Override 'batch' not found"):
        run_script(
            common
            + [f"--model_source={save}", f"--output_file={output}", "--batch=2"]
        )
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("id0 nowhere/x/1.wav\nid0 nowhere/x/2.wav\n")
    with pytest.raises(SystemExit, match="2 of 2 audio file.* missing"):
        run_script(
            TINY
            + common
            + [
                f"--utterance_list={bad_list}",
                f"--model_source={save}",
                f"--output_file={output}",
            ]
        )
    # The architecture sizes are read from the checkpoint, not repeated.
    with pytest.raises(SystemExit, match="Override 'emb_dim' not found"):
        run_script(
            TINY
            + common
            + [
                f"--model_source={save}",
                f"--output_file={output}",
                "--emb_dim=16",
            ]
        )
    assert sorted(os.listdir(tmp_path)) == ["list.txt", "train"]


def test_weights_that_do_not_fit_the_recorded_architecture_are_one_line(
    tiny_model, tiny_corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(ROOT)
    save = save_checkpoint(tiny_model, str(tmp_path / "train"))
    folder = find_checkpoint(save)
    with open(os.path.join(folder, ARCHITECTURE_FILE), "w") as f:
        f.write(model_yaml(tiny_wavlm_mhfa(4, 8, 32)))
    with pytest.raises(SystemExit) as error:
        run_script(
            TINY
            + [
                f"--data_folder={tiny_corpus['data_folder']}",
                f"--model_source={tmp_path / 'train'}",
                f"--output_file={tmp_path / 'emb.pt'}",
            ]
        )
    message = str(error.value)
    weights = os.path.join(folder, "embedding_model.ckpt")
    assert message.startswith(f"{weights}: does not fit the model"), message
    assert "mhfa.pooling_fc.weight (16, 32) in checkpoint vs (32, 32)" in (
        message
    )
    assert "\n" not in message and len(message) < 400, message
    assert not (tmp_path / "emb.pt").exists()


def test_every_form_of_model_source_gives_the_same_model(tiny_model, tmp_path):
    # A training output folder as SpeechBrain leaves it: a copy of the
    # training hparams (hyperparams.yaml) beside save/.
    out = tmp_path / "round1"
    save = save_checkpoint(tiny_model, str(out))
    (out / "hyperparams.yaml").write_text(
        open(os.path.join(ROOT, "hparams", "round1.yaml")).read()
    )
    export_model(tiny_model, str(tmp_path / "exported"))
    expected = tiny_model.state_dict()
    for source in (out, save, find_checkpoint(save), tmp_path / "exported"):
        model, origin = load_embedding_model(source)
        assert not model.training
        state = model.state_dict()
        assert list(state) == list(expected), source
        for key, value in expected.items():
            assert torch.equal(state[key], value), (source, key)
    with pytest.raises(CheckpointNotFoundError, match="neither a training"):
        load_embedding_model(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="nowhere: model_source"):
        load_embedding_model(tmp_path / "nowhere")


def test_exported_folder_as_source_gives_the_same_embeddings(
    tiny_model, tiny_corpus, tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)
    export_model(tiny_model, str(tmp_path / "exported"))
    save = save_checkpoint(tiny_model, str(tmp_path / "train"))
    outputs = {}
    for name, source in (("ckpt", save), ("exported", tmp_path / "exported")):
        outputs[name] = tmp_path / f"{name}.pt"
        run_script(
            TINY
            + [
                f"--data_folder={tiny_corpus['data_folder']}",
                f"--utterance_list={tiny_corpus['train_list']}",
                f"--model_source={source}",
                f"--output_file={outputs[name]}",
            ]
        )
    keys, from_ckpt = load_embeddings(outputs["ckpt"])
    assert load_embeddings(outputs["exported"])[0] == keys
    assert np.array_equal(load_embeddings(outputs["exported"])[1], from_ckpt)


def test_bad_audio_is_refused_before_extraction(tiny_model, tmp_path):
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.zeros((800, 2), np.float32), 16000)
    with pytest.raises(
        AudioError, match="stereo.wav: 2 channels, expected mono"
    ):
        embed_full_utterances(tiny_model, [str(stereo)], progress=False)
    with pytest.raises(AudioError, match="stereo.wav"):
        embed_crops(tiny_model, [str(stereo)], progress=False)


def test_latest_complete_checkpoint_is_used(tiny_model, tmp_path):
    save = save_checkpoint(tiny_model, str(tmp_path))
    complete = find_checkpoint(save)
    # A newer save killed before its CKPT.yaml was written is skipped.
    broken = os.path.join(save, "CKPT+9999-12-31+23-59-59+00")
    os.makedirs(broken)
    with open(os.path.join(broken, "embedding_model.ckpt"), "wb") as f:
        f.write(b"trunc")
    assert find_checkpoint(save) == complete
    assert find_checkpoint(str(tmp_path)) == complete
    assert find_checkpoint(complete) == complete
    with pytest.raises(CheckpointNotFoundError, match="no embedding_model"):
        find_checkpoint(str(tmp_path / "nowhere"))


def test_utterance_list_rules(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a x/y/1.wav\n\nb x/y/2.wav\n")
    assert read_utterance_list(str(path)) == ["x/y/1.wav", "x/y/2.wav"]
    path.write_text("a x/y/1.wav extra\n")
    with pytest.raises(ValueError, match="list.txt:1: expected"):
        read_utterance_list(str(path))
    path.write_text("a x/y/1.wav\nb ./x/y/1.wav\n")
    with pytest.raises(ValueError, match="already listed on line 1"):
        read_utterance_list(str(path))
    path.write_text("\n")
    with pytest.raises(ValueError, match="no utterances"):
        read_utterance_list(str(path))


@pytest.mark.slow
def test_two_processes_write_the_same_file_as_one(
    tiny_model, tiny_corpus, tmp_path, monkeypatch, torchrun
):
    monkeypatch.chdir(ROOT)
    save = save_checkpoint(tiny_model, str(tmp_path / "train"))
    common = TINY + [
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--utterance_list={tiny_corpus['train_list']}",
        f"--model_source={save}",
        "--shard_seconds=20",
    ]
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    run_script(common + [f"--output_file={one}"])
    result = torchrun(
        "recipes/extract_embeddings.py",
        2,
        "hparams/extract_embeddings.yaml",
        *common,
        f"--output_file={two}",
        "--distributed_backend=gloo",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}/2: shard" in result.stderr
    keys, single = load_embeddings(one, use_cache=False)
    assert keys == read_utterance_list(tiny_corpus["train_list"])
    keys_two, double = load_embeddings(two, use_cache=False)
    assert keys_two == keys
    # The same shards and batches, one thread per process: the same
    # arithmetic, so the same bits.
    assert np.array_equal(double, single)
    assert not os.path.exists(str(two) + ".shards")


@pytest.mark.slow
def test_more_processes_than_files(
    tiny_model, tiny_corpus, tmp_path, monkeypatch, torchrun
):
    monkeypatch.chdir(ROOT)
    save = save_checkpoint(tiny_model, str(tmp_path / "train"))
    key = read_utterance_list(tiny_corpus["train_list"])[5]
    (tmp_path / "one.txt").write_text(f"spk {key}\n")
    output = tmp_path / "emb.pt"
    result = torchrun(
        "recipes/extract_embeddings.py",
        3,
        "hparams/extract_embeddings.yaml",
        *TINY,
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--utterance_list={tmp_path / 'one.txt'}",
        f"--model_source={save}",
        f"--output_file={output}",
        "--distributed_backend=gloo",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    keys, matrix = load_embeddings(output, use_cache=False)
    assert keys == [key]
    path = os.path.join(tiny_corpus["data_folder"], key)
    np.testing.assert_allclose(
        matrix, one_at_a_time(tiny_model, [path], 700_000), atol=1e-4, rtol=0
    )


def test_each_torchrun_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device("cuda:1") == "cuda:1"
    assert pick_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("cuda:0") == "cuda:3"
    assert pick_device("cuda") == "cuda:3"
    assert pick_device("cpu") == "cpu"
