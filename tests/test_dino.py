"""Stage 1 (DINO): loss, head, EMA teacher, schedules, and the recipe."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from float32_bounds import U, gamma
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from speechbrain_ext.dataio.augment import RandomChannel, SixWayAugment
from speechbrain_ext.dataio.embeddings_io import (
    EmbeddingsFileError,
    load_embeddings,
    save_embeddings,
)
from speechbrain_ext.lobes.dino import (
    DINOHead,
    DINONetwork,
    MultiCrop,
    WaveformEmbedder,
    cosine_schedule,
    ema_update,
    make_teacher,
    select_embeddings,
)
from speechbrain_ext.nnet.dino_loss import DINOLoss, teacher_temperature

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "train_dino.py"
HPARAMS = ROOT / "hparams" / "dino.yaml"

# Sizes for CPU runs of the recipe (the test and demo scale).
SMALL = {
    "n_mels": 40,
    "channels": "[32,32,32,32,96]",
    "attention_channels": 16,
    "se_channels": 16,
    "embedding_size": 32,
    "head_hidden_size": 128,
    "head_bottleneck_size": 64,
    "head_output_size": 64,
    "global_crop_seconds": 2,
    "local_crop_seconds": 1,
    "n_local_crops": 2,
    "batch_size": 8,
    "num_workers": 0,
}


def small_backbone(input_size=20, embedding_size=12):
    return ECAPA_TDNN(
        input_size,
        channels=[16, 16, 16, 16, 48],
        attention_channels=8,
        se_channels=8,
        lin_neurons=embedding_size,
    )


def reference_loss(student, teacher, center, n_global, t_s, t_t):
    """The DINO loss written as plainly as possible, for comparison."""
    batch = teacher.shape[0] // n_global
    s_crops = student.split(batch)
    t_crops = teacher.split(batch)
    terms = []
    for i, t in enumerate(t_crops):
        p = torch.softmax((t - center) / t_t, dim=-1)
        for j, s in enumerate(s_crops):
            if i != j:
                logp = torch.log_softmax(s / t_s, dim=-1)
                terms.append(-(p * logp).sum(-1).mean())
    return torch.stack(terms).mean()


# ---------------------------------------------------------------- loss


def test_loss_matches_the_definition_and_updates_the_center():
    torch.manual_seed(0)
    loss_fn = DINOLoss(16, n_global_crops=2, center_momentum=0.8)
    loss_fn.center.normal_()
    center = loss_fn.center.clone()
    student = torch.randn(4 * 3, 16)  # 2 global + 2 local, batch 3
    teacher = torch.randn(2 * 3, 16)
    loss = loss_fn(student, teacher, teacher_temperature=0.05)
    # The reference in float64 adds no rounding of its own.
    expected = reference_loss(
        student.double(), teacher.double(), center.double(), 2, 0.1, 0.05
    )
    assert loss.shape == ()
    # float32 bound, K = 16 classes. A softmax probability carries a
    # relative error of u (2 X_t + K + 2), X_t = max |t - c| / 0.05 (the
    # exponent's rounding, the sum of K); a log-probability an absolute
    # one of u (2 X_s + K + 3), X_s = max |s| / 0.1. Each cross-entropy
    # term -sum p log p then moves by the first times itself plus the
    # second, and the two means (3 samples, 6 crop pairs) add gamma(9).
    x_t = ((teacher - center).abs().max() / 0.05).item()
    x_s = (student.abs().max() / 0.1).item()
    value = expected.item()
    bound = (
        U * (2 * x_t + 16 + 2) * value
        + U * (2 * x_s + 16 + 3)
        + gamma(9) * value
    )
    assert abs(loss.item() - value) <= bound
    # c' = 0.8 c + 0.2 mean(t): the mean of 6 rows (gamma(6)), then three
    # roundings (two products, one sum).
    want = 0.8 * center.double() + 0.2 * teacher.double().mean(0, True)
    bound = 0.2 * gamma(6) * teacher.abs().max() + 3 * U * (
        0.8 * center.abs() + 0.2 * teacher.abs().max()
    )
    assert bool(((loss_fn.center - want).abs() <= bound).all())


def test_loss_is_low_when_student_matches_a_sharp_teacher():
    torch.manual_seed(0)
    loss_fn = DINOLoss(8, n_global_crops=2, student_temperature=0.1)
    onehot = torch.eye(8)[torch.tensor([1, 5, 2])] * 10
    teacher = torch.cat([onehot, onehot])
    matching = torch.cat([onehot] * 4)
    random = torch.randn(12, 8) * 10
    low = loss_fn(matching, teacher, 0.04)
    loss_fn.center.zero_()
    high = loss_fn(random, teacher, 0.04)
    assert low < 0.01 < 1.0 < high


def test_loss_gradients_reach_the_student_only():
    student = torch.randn(6, 8, requires_grad=True)
    teacher = torch.randn(4, 8, requires_grad=True)
    DINOLoss(8)(student, teacher, 0.04).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_loss_rejects_inconsistent_shapes():
    loss_fn = DINOLoss(8, n_global_crops=2)
    with pytest.raises(ValueError, match="multiple of n_global_crops"):
        loss_fn(torch.randn(6, 8), torch.randn(5, 8), 0.04)
    with pytest.raises(ValueError, match="crops of batch"):
        loss_fn(torch.randn(2, 8), torch.randn(4, 8), 0.04)
    with pytest.raises(ValueError, match="no crop pair"):
        DINOLoss(8, n_global_crops=1)(torch.randn(2, 8), torch.randn(2, 8), 1)


def test_center_is_saved_with_the_state_dict():
    loss_fn = DINOLoss(4)
    loss_fn.update_center(torch.ones(3, 4))
    other = DINOLoss(4)
    other.load_state_dict(loss_fn.state_dict())
    assert torch.equal(other.center, torch.full((1, 4), 0.1))


# ----------------------------------------------------------- schedules


def test_teacher_temperature_warms_up_linearly_then_stays():
    values = [teacher_temperature(e, 0.04, 0.07, 30) for e in (0, 15, 30, 99)]
    assert values == pytest.approx([0.04, 0.055, 0.07, 0.07])
    assert teacher_temperature(3, 0.04, 0.07, 0) == 0.07


def test_cosine_schedule_is_monotonic_between_its_ends():
    values = [cosine_schedule(s, 100, 0.996, 1.0) for s in range(0, 101)]
    assert values[0] == pytest.approx(0.996)
    assert values[50] == pytest.approx(0.998)
    assert values[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values, values[1:]))
    decreasing = [cosine_schedule(s, 10, 1e-3, 1e-6) for s in range(12)]
    assert all(a >= b for a, b in zip(decreasing, decreasing[1:]))
    assert decreasing[-1] == pytest.approx(1e-6)


# ------------------------------------------------- head, network, EMA


def test_head_sizes_and_parameter_count():
    head = DINOHead(
        192,
        hidden_size=2048,
        bottleneck_size=256,
        output_size=65536,
        n_layers=3,
    )
    mlp = (192 * 2048 + 2048) + (2048 * 2048 + 2048) + (2048 * 256 + 256)
    trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    assert trainable == mlp + 256 * 65536
    assert head(torch.randn(3, 192)).shape == (3, 65536)


def test_head_last_layer_rows_have_unit_norm_and_fixed_magnitude():
    head = DINOHead(8, 16, 4, 10)
    weight = head.last_layer.weight
    # Rows of g v / |v|, g = 1, over 4 inputs: |v| costs gamma(4 + 1)
    # (squares, sum, sqrt), the division and the product one rounding
    # each, and this norm again gamma(4 + 1).
    bound = 2 * gamma(4 + 1) + 2 * U
    torch.testing.assert_close(
        weight.norm(dim=1), torch.ones(10), rtol=0, atol=bound
    )
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad
    # L2-normalised bottleneck and unit rows: logits are cosines.
    assert head(torch.randn(5, 8)).abs().max() <= 1.0 + 1e-5
    free = DINOHead(8, 16, 4, 10, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_network_takes_crop_groups_of_different_lengths():
    network = DINONetwork(small_backbone(), DINOHead(12, 32, 8, 64))
    network.eval()
    long, short = torch.randn(3, 80, 20), torch.randn(3, 40, 20)
    embeddings, logits = network([long, short])
    assert embeddings.shape == (6, 12) and logits.shape == (6, 64)
    # Each group goes through the backbone on its own: the same
    # computation, bit for bit.
    assert torch.equal(embeddings[:3], network.embed(long))
    assert torch.equal(embeddings[3:], network.embed(short))


def test_library_extraction_gives_stage_1s_one_at_a_time_embeddings(
    tmp_path,
):
    """The backbone wrapped as model(wavs, wav_lens) and embedded by the
    library's batched extraction (batch size 1) equals stage 1's way of
    embedding one utterance: Fbank, sentence mean normalisation, backbone."""
    import soundfile
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    from speechbrain_ext.verification.extraction import embed_full_utterances

    torch.manual_seed(0)
    network = DINONetwork(small_backbone(), DINOHead(12, 32, 8, 64)).eval()
    fbank = Fbank(n_mels=20)
    norm = InputNormalization(norm_type="sentence", std_norm=False)
    wavs = [torch.rand(n) - 0.5 for n in (16000, 9000, 12345)]
    paths = []
    for i, wav in enumerate(wavs):
        paths.append(str(tmp_path / f"{i}.wav"))
        soundfile.write(paths[-1], wav.numpy(), 16000, subtype="FLOAT")
    got = embed_full_utterances(
        WaveformEmbedder(fbank, norm, network),
        paths,
        max_batch_size=1,
        progress=False,
    )
    with torch.no_grad():
        for row, wav in zip(got, wavs):
            one = torch.ones(1)
            want = network.embed(norm(fbank(wav[None]), one), one)[0]
            assert torch.equal(torch.from_numpy(row), want)


def test_teacher_is_a_frozen_copy_and_ema_moves_it():
    torch.manual_seed(0)
    student = DINONetwork(small_backbone(), DINOHead(12, 32, 8, 64))
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, momentum=0.9)
    for name, param in teacher.named_parameters():
        b = before[name].double()
        expected = 0.9 * b + 0.1 * (b + 1.0)
        # The student's b + 1, two products and a sum: four roundings of
        # values at most |b| + 1.
        bound = 4 * U * (b.abs() + 1.0)
        assert bool(((param - expected).abs() <= bound).all()), name
    moved = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, student, momentum=1.0)
    for name, param in teacher.named_parameters():
        assert torch.equal(param, moved[name])


def test_ema_refuses_different_architectures():
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(torch.nn.Linear(2, 2), torch.nn.Conv1d(2, 2, 1), 0.9)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    student = DINONetwork(small_backbone(), DINOHead(12, 32, 8, 16))
    teacher = make_teacher(student)
    loss_fn = DINOLoss(16, n_global_crops=2)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    global_feats = torch.randn(2 * 4, 60, 20)
    local_feats = torch.randn(2 * 4, 30, 20)
    losses = []
    for _ in range(5):
        _, student_out = student([global_feats, local_feats])
        with torch.no_grad():
            _, teacher_out = teacher(global_feats)
        loss = loss_fn(student_out, teacher_out, 0.04)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(teacher, student, 0.99)
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0]


# ---------------------------------------------------- crops, selection


def test_multi_crop_shapes_and_wrap_padding():
    crop = MultiCrop(global_length=100, local_length=40, n_global=2, n_local=3)
    wav = torch.arange(1.0, 31.0)  # shorter than both crop lengths
    global_crops, local_crops = crop(wav)
    assert global_crops.shape == (2, 100) and local_crops.shape == (3, 40)
    # A crop of wrap-padded audio is a cyclic shift of the repeated audio.
    row = global_crops[0]
    assert torch.equal(row[30:60], row[:30])
    assert set(row.tolist()) <= set(wav.tolist())
    _, none = MultiCrop(100, 40, n_global=2, n_local=0)(wav)
    assert none.shape == (0, 40)
    with pytest.raises(ValueError):
        MultiCrop(100, 40, n_global=0)


def test_select_embeddings_orders_rows_and_names_the_first_missing():
    matrix = np.arange(8, dtype="float32").reshape(4, 2)
    keys = ["s/v/1.wav", "s/v/2.wav", "s/v/3.wav", "s/v/4.wav"]
    rows = select_embeddings(keys, matrix, ["./s/v/3.wav", "s/v/1.wav"], "E")
    assert rows.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    with pytest.raises(EmbeddingsFileError) as error:
        select_embeddings(keys, matrix, ["s/v/9.wav", "s/v/8.wav"], "E")
    assert "2 of 2" in str(error.value) and "s/v/9.wav" in str(error.value)


# ------------------------------------------------------------ recipe


def run_recipe(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(HPARAMS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def overrides(values):
    return [f"--{key}={value}" for key, value in values.items()]


def load_recipe_module():
    spec = importlib.util.spec_from_file_location("train_dino", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_random_channel_augments_without_noise_or_rir_folders(tmp_path):
    module = load_recipe_module()
    augmenter = SixWayAugment(channel=RandomChannel(prob=0.5))
    hparams = {
        "noise_folder": None,
        "rir_folder": None,
        "crop_augmenter": augmenter,
    }
    assert module.build_crop_augmenter(hparams) is augmenter
    hparams["crop_augmenter"] = SixWayAugment()
    assert module.build_crop_augmenter(hparams) is None


def test_missing_placeholder_is_one_clear_line(tmp_path):
    out = tmp_path / "out"
    result = run_recipe(f"--output_folder={out}", timeout=120)
    assert result.returncode != 0
    assert "data_folder" in result.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_external_embeddings_are_checked_against_the_list(
    tiny_corpus, tmp_path
):
    with open(tiny_corpus["train_list"]) as f:
        keys = [line.split()[1] for line in f]
    external = tmp_path / "external.pt"
    save_embeddings((keys[1:], torch.randn(len(keys) - 1, 6)), external)
    result = run_recipe(
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--train_list={tiny_corpus['train_list']}",
        f"--output_folder={tmp_path / 'bad'}",
        f"--external_embeddings={external}",
        timeout=120,
    )
    assert result.returncode != 0
    assert f"1 of {len(keys)} utterances" in result.stderr
    assert keys[0] in result.stderr
    assert not (tmp_path / "bad" / "embeddings.pt").exists()

    matrix = torch.randn(len(keys) + 1, 6)
    save_embeddings((["extra/v/1.wav"] + keys[::-1], matrix), external)
    result = run_recipe(
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--train_list={tiny_corpus['train_list']}",
        f"--output_folder={tmp_path / 'good'}",
        f"--external_embeddings={external}",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out_keys, out_matrix = load_embeddings(tmp_path / "good" / "embeddings.pt")
    assert out_keys == keys
    np.testing.assert_array_equal(out_matrix, matrix.numpy()[1:][::-1])


# ------------------------------------------------ training on toy data

# A corpus a little larger than the shared tiny one (same generator): with
# 48 utterances and 40 trials the metrics move in steps of 5 % EER.
TOY_SIZES = {
    "n_train_speakers": 16,
    "n_test_speakers": 8,
    "n_videos": 2,
    "n_utterances": 4,
    "min_duration": 2.0,
    "max_duration": 4.0,
    "n_trials": 300,
    "n_dev_speakers": 0,
    "n_dev_trials": 0,
    "n_musan": 2,
    "musan_duration": 3.0,
    "n_rir_rooms": 1,
    "n_rirs": 2,
}


def demo_dino_overrides():
    """The DINO sizes of ``hparams/demo.yaml`` (the demo's model)."""
    from hyperpyyaml import load_hyperpyyaml

    with open(ROOT / "hparams" / "demo.yaml", encoding="utf-8") as f:
        return load_hyperpyyaml(f)["dino_overrides"]


def kmeans_nmi(embeddings_file):
    """NMI of K-Means (one cluster per true speaker), mean of 3 seeds."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    keys, matrix = load_embeddings(embeddings_file)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    speakers = [key.split("/")[0] for key in keys]
    n_speakers = len(set(speakers))
    return float(
        np.mean(
            [
                normalized_mutual_info_score(
                    speakers,
                    KMeans(n_speakers, n_init=10, random_state=seed)
                    .fit(matrix)
                    .labels_,
                )
                for seed in range(3)
            ]
        )
    )


@pytest.mark.slow
def test_dino_training_beats_an_untrained_network(tmp_path):
    from data_prep.synthetic import generate_corpus

    corpus = generate_corpus(str(tmp_path / "corpus"), n_jobs=1, **TOY_SIZES)
    common = {
        **demo_dino_overrides(),
        "number_of_epochs": 15,
        "n_local_crops": 4,
        "data_folder": corpus["data_folder"],
        "train_list": corpus["train_list"],
        "trials": corpus["trials"],
        "noise_folder": corpus["noise_folder"],
        "rir_folder": corpus["rir_folder"],
    }
    results = {}
    for name, epochs in (("untrained", 0), ("trained", None)):
        values = dict(common, output_folder=tmp_path / name)
        if epochs is not None:
            values["number_of_epochs"] = epochs
        result = run_recipe(*overrides(values), "--noprogressbar")
        assert result.returncode == 0, result.stderr[-3000:]
        with open(tmp_path / name / "eval.json") as f:
            eer = json.load(f)["EER"]
        nmi = kmeans_nmi(tmp_path / name / "embeddings.pt")
        results[name] = {"EER": eer, "NMI": nmi}
    print(results)
    assert results["trained"]["NMI"] > results["untrained"]["NMI"] + 0.07
    assert results["trained"]["EER"] < 35.0  # chance: 50 %
    assert results["trained"]["EER"] < results["untrained"]["EER"] - 5.0


TINY_RUN = {
    **SMALL,
    "channels": "[16,16,16,16,48]",
    "global_crop_seconds": 1,
    "local_crop_seconds": 0.5,
    "n_local_crops": 1,
    "head_output_size": 32,
}


def test_training_with_global_crops_only(tiny_corpus, tmp_path):
    values = {
        **TINY_RUN,
        "n_local_crops": 0,
        "number_of_epochs": 1,
        "data_folder": tiny_corpus["data_folder"],
        "train_list": tiny_corpus["train_list"],
        "output_folder": tmp_path / "out",
    }
    result = run_recipe(*overrides(values), "--noprogressbar")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "out" / "train_log.txt").read_text().splitlines()
    assert [line.split(" - ")[0] for line in log] == ["epoch: 1"]
    assert (tmp_path / "out" / "embeddings.pt").exists()


def test_regulariser_with_one_utterance_per_step_is_one_clear_line(
    tiny_corpus, tmp_path
):
    values = {
        **TINY_RUN,
        "batch_size": 1,
        "data_folder": tiny_corpus["data_folder"],
        "train_list": tiny_corpus["train_list"],
        "output_folder": tmp_path / "out",
    }
    result = run_recipe(*overrides(values), "--noprogressbar", timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "regularization_weight > 0 needs at least 2 utterances" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "embeddings.pt").exists()


@pytest.fixture
def list_with_bad_files(tiny_corpus, tmp_path):
    """The tiny train list plus a missing and a corrupt file."""
    corrupt = tmp_path / "bad" / "c.wav"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"RIFF\x00\x00not a wav file")
    relpath = os.path.relpath(corrupt, tiny_corpus["data_folder"])
    text = pathlib.Path(tiny_corpus["train_list"]).read_text()
    path = tmp_path / "list.txt"
    path.write_text(text + f"x missing/v/00001.wav\nx {relpath}\n")
    return str(path), relpath


def test_bad_audio_is_one_clear_error_when_asked(
    tiny_corpus, list_with_bad_files, tmp_path
):
    result = run_recipe(
        f"--data_folder={tiny_corpus['data_folder']}",
        f"--train_list={list_with_bad_files[0]}",
        f"--output_folder={tmp_path / 'out'}",
        "--on_bad_audio=error",
        timeout=120,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "missing/v/00001.wav: file not found" in last
    assert not (tmp_path / "out" / "embeddings.pt").exists()


@pytest.mark.slow
def test_training_skips_bad_files_and_resumes(
    tiny_corpus, list_with_bad_files, tmp_path
):
    values = {
        **TINY_RUN,
        "data_folder": tiny_corpus["data_folder"],
        "train_list": list_with_bad_files[0],
        "output_folder": tmp_path / "out",
    }
    outputs = []
    for epochs in (1, 2):
        result = run_recipe(
            *overrides(dict(values, number_of_epochs=epochs)),
            "--noprogressbar",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout + result.stderr)
    bad = (tmp_path / "out" / "bad_audio.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in bad] == [
        "missing/v/00001.wav",
        list_with_bad_files[1],
    ]
    assert "2 of 50 listed files are unusable" in outputs[0]
    assert "Loading a checkpoint" in outputs[1]
    log = (tmp_path / "out" / "train_log.txt").read_text().splitlines()
    assert [line.split(" - ")[0] for line in log] == ["epoch: 1", "epoch: 2"]
    keys, matrix = load_embeddings(tmp_path / "out" / "embeddings.pt")
    with open(tiny_corpus["train_list"]) as f:
        expected = sorted(line.split()[1] for line in f)
    assert sorted(keys) == expected and matrix.shape == (48, 32)
    assert np.isfinite(matrix).all()
