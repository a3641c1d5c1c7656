"""The pipeline's orchestration: stage plan, markers, resume, summary."""

import importlib.util
import json
import os
import pathlib
import sys
from math import comb

import numpy as np
import pytest
from hyperpyyaml import load_hyperpyyaml

from data_prep.synthetic import DEFAULT_SIZES
from speechbrain_ext.utils.io_utils import round_floats
from speechbrain_ext.verification.clustering import pseudo_label

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "pipeline.py"


def load_pipeline():
    spec = importlib.util.spec_from_file_location("pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pipeline = load_pipeline()


def hparams_for(tmp_path, name="pipeline.yaml", **overrides):
    values = {
        "data_folder": str(tmp_path / "wav"),
        "train_list": str(tmp_path / "list.txt"),
        "trials": str(tmp_path / "trials.txt"),
        "output_folder": str(tmp_path / "out"),
        **overrides,
    }
    text = "\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items())
    with open(ROOT / "hparams" / name, encoding="utf-8") as f:
        return load_hyperpyyaml(f, text)


def python_stage(tmp_path, name, code, row=None):
    return pipeline.Stage(
        name, [sys.executable, "-c", code], str(tmp_path / "out" / name), row
    )


def options(stage):
    """The ``--key=value`` options of a stage command, as a dict."""
    found = {}
    for argument in stage.command:
        if argument.startswith("--") and "=" in argument:
            key, value = argument[2:].split("=", 1)
            found[key] = value
    return found


# ------------------------------------------------------------- plan


def test_plan_has_every_stage_in_order_and_chains_outputs(tmp_path):
    hparams = hparams_for(tmp_path, n_rounds=3)
    stages = pipeline.plan_stages(hparams, ["--device=cpu"])
    names = [stage.name for stage in stages]
    assert names == [
        "dino",
        "pseudo_labels_dino",
        "round1",
        "eval_round1",
        "embeddings_round1",
        "pseudo_labels_round1",
        "round2",
        "eval_round2",
        "embeddings_round2",
        "pseudo_labels_round2",
        "round3",
        "eval_round3",
        "lmft",
        "eval_lmft",
        "export",
    ]
    by_name = {stage.name: stage for stage in stages}
    out = str(tmp_path / "out")
    dino = options(by_name["dino"])
    assert dino["output_folder"] == f"{out}/dino"
    assert dino["trials"] == str(tmp_path / "trials.txt")
    labels = options(by_name["pseudo_labels_dino"])
    assert labels["embeddings_file"] == f"{out}/dino/embeddings.pt"
    assert labels["n_clusters_ahc"] == "7500"
    round1 = options(by_name["round1"])
    assert round1["train_list"] == labels["output_file"]
    assert round1["n_classes"] == "7500"
    assert round1["pretrained_wavlm"] == "null"
    assert by_name["round1"].command[2].endswith("hparams/round1.yaml")
    assert by_name["round2"].command[2].endswith("hparams/round2.yaml")
    round2 = options(by_name["round2"])
    assert (
        round2["train_list"]
        == options(by_name["pseudo_labels_round1"])["output_file"]
    )
    extract = options(by_name["embeddings_round1"])
    assert extract["model_source"] == f"{out}/round1/save"
    assert (
        options(by_name["pseudo_labels_round1"])["embeddings_file"]
        == (extract["output_file"])
    )
    lmft = options(by_name["lmft"])
    assert lmft["init_from"] == f"{out}/round3/save"
    assert (
        lmft["train_list"]
        == options(by_name["pseudo_labels_round2"])["output_file"]
    )
    assert options(by_name["eval_lmft"])["model_source"] == f"{out}/lmft/save"
    assert options(by_name["export"])["model_source"] == f"{out}/lmft/save"
    for stage in stages:
        assert stage.command[-1] == "--device=cpu"
        assert stage.folder == f"{out}/{stage.name}"


def test_export_is_calibrated_on_the_development_trials(tmp_path):
    export = pipeline.plan_stages(hparams_for(tmp_path))[-1]
    assert export.name == "export"
    assert options(export)["dev_trials"] == "null"
    dev = str(tmp_path / "dev_trials.txt")
    export = pipeline.plan_stages(hparams_for(tmp_path, dev_trials=dev))[-1]
    assert options(export)["dev_trials"] == dev
    assert options(export)["data_folder"] == str(tmp_path / "wav")
    # The demo calibrates on the built-in corpus's development speakers.
    with open(ROOT / "hparams" / "demo.yaml", encoding="utf-8") as f:
        demo = load_hyperpyyaml(
            f, f"output_folder: {json.dumps(str(tmp_path))}"
        )
    export = pipeline.plan_stages(demo)[-1]
    assert options(export)["dev_trials"] == str(
        tmp_path / "corpus" / "dev_trials.txt"
    )
    assert demo["dev_trials"] != demo["trials"]


def test_plan_without_lmft_exports_the_last_round(tmp_path):
    hparams = hparams_for(tmp_path, n_rounds=1, lmft=False)
    stages = pipeline.plan_stages(hparams)
    assert [s.name for s in stages] == [
        "dino",
        "pseudo_labels_dino",
        "round1",
        "eval_round1",
        "export",
    ]
    assert options(stages[-1])["model_source"].endswith("/round1/save")


def test_model_sizes_reach_the_training_stages_only(tmp_path):
    hparams = hparams_for(tmp_path, name="demo.yaml")
    for stage in pipeline.plan_stages(hparams):
        if stage.name.startswith(("round", "lmft")):
            assert options(stage)["wavlm_preset"] == "tiny", stage.name
            assert options(stage)["mhfa_heads"] == "4", stage.name
        elif stage.name.startswith(("eval_", "embeddings_", "export")):
            # They read the architecture the training run recorded.
            assert "mhfa_heads" not in options(stage), stage.name
            assert "encoder" not in options(stage), stage.name
    overrides = pipeline.format_overrides({"wavlm_overrides": {"a": 1}})
    assert overrides == ['--wavlm_overrides={"a": 1}']


LAUNCHED = ("round", "lmft", "eval_", "embeddings_")


def test_launcher_starts_training_embedding_and_evaluation(tmp_path):
    torchrun = ["torchrun", "--nproc_per_node=2"]
    hparams = hparams_for(tmp_path, launcher=torchrun)
    stages = pipeline.plan_stages(hparams, ["--device=cuda:0", "--debug"])
    for stage in stages:
        script = stage.command[2 if stage.name.startswith(LAUNCHED) else 1]
        if stage.name.startswith(LAUNCHED):
            assert stage.command[:2] == torchrun, stage.name
            # Each torchrun process takes the GPU of its LOCAL_RANK.
            assert stage.command[-1:] == ["--debug"], stage.name
        else:
            assert stage.command[0] == sys.executable, stage.name
            assert stage.command[-2:] == ["--device=cuda:0", "--debug"]
        assert script.endswith(".py"), stage.name
    assert {s.name for s in stages if s.command[0] == "torchrun"} >= {
        "round1",
        "eval_round1",
        "embeddings_round1",
        "lmft",
        "eval_lmft",
    }


def test_train_launcher_still_applies_to_training_alone(tmp_path):
    hparams = hparams_for(
        tmp_path,
        launcher=["torchrun", "--nproc_per_node=4"],
        train_launcher=["torchrun", "--nproc_per_node=2"],
    )
    for stage in pipeline.plan_stages(hparams):
        if stage.name.startswith(("round", "lmft")):
            assert stage.command[1] == "--nproc_per_node=2", stage.name
        elif stage.name.startswith(("eval_", "embeddings_")):
            assert stage.command[1] == "--nproc_per_node=4", stage.name
    hparams = hparams_for(tmp_path, train_launcher=["torchrun"])
    for stage in pipeline.plan_stages(hparams):
        training = stage.name.startswith(("round", "lmft"))
        assert (stage.command[0] == "torchrun") == training, stage.name


def test_launchers_given_on_the_command_line(tmp_path):
    # SpeechBrain's parser turns "=" inside an override into a space.
    argv = [
        str(ROOT / "hparams" / "pipeline.yaml"),
        f"--data_folder={tmp_path}",
        f"--train_list={tmp_path / 'list.txt'}",
        f"--trials={tmp_path / 'trials.txt'}",
        f"--output_folder={tmp_path / 'out'}",
        "--launcher=[torchrun, --nproc_per_node=2]",
        "--train_launcher=torchrun --nproc_per_node=4 --rdzv_endpoint=h:29400",
    ]
    _, run_options, _, hparams = pipeline.load_hparams(argv)
    stages = {s.name: s for s in pipeline.plan_stages(hparams, run_options)}
    torchrun_2 = ["torchrun", "--nproc_per_node", "2"]
    assert stages["embeddings_round1"].command[:3] == torchrun_2
    assert stages["eval_round1"].command[:3] == torchrun_2
    assert stages["round1"].command[:5] == [
        "torchrun",
        "--nproc_per_node",
        "4",
        "--rdzv_endpoint",
        "h:29400",
    ]


def test_ecapa_encoder_rounds_start_from_stage_1(tmp_path):
    hparams = hparams_for(tmp_path, name="demo.yaml")
    assert hparams["model"]["encoder"] == "ecapa"
    stages = {s.name: s for s in pipeline.plan_stages(hparams)}
    dino_save = str(tmp_path / "out" / "dino" / "save")
    for name in ("round1", "round2", "lmft"):
        found = options(stages[name])
        assert found["dino_checkpoint"] == dino_save
        assert found["dino_network"] == "student"  # demo's extract_network
        assert found["encoder"] == "ecapa"
        assert json.loads(found["ecapa"])["channels"] == [32, 32, 32, 32, 96]
    # The demo (continue_rounds) starts round N from round N-1 ...
    assert options(stages["round1"])["init_encoder_from"] == "null"
    assert options(stages["round2"])["init_encoder_from"] == str(
        tmp_path / "out" / "round1" / "save"
    )
    # ... the reference's rounds restart from the pre-trained weights.
    hparams = hparams_for(tmp_path, name="demo.yaml", continue_rounds=False)
    stages = {s.name: s for s in pipeline.plan_stages(hparams)}
    assert options(stages["round2"])["init_encoder_from"] == "null"


def test_demo_rounds_stretch_the_reference_schedule_twice(tmp_path):
    """A demo epoch is 30 steps: its rounds run the reference's schedule over
    twice the epochs, at the reference's learning rates."""
    demo = hparams_for(tmp_path, name="demo.yaml")["round_overrides"]
    with open(ROOT / "hparams" / "round1.yaml", encoding="utf-8") as f:
        reference = load_hyperpyyaml(
            f,
            {
                "data_folder": str(tmp_path),
                "train_list": str(tmp_path / "pl.txt"),
                "pretrained_wavlm": None,
                "output_folder": str(tmp_path / "out"),
            },
        )
    assert demo["number_of_epochs"] == 2 * reference["number_of_epochs"]
    for start in ("gate_start_epoch", "lc_start_epoch"):
        assert demo[start] - 1 == 2 * (reference[start] - 1)
    # 0.9747 is 0.95 ** 0.5 rounded to 4 decimals: squared, within
    # 2 x 0.5e-4 of 0.95.
    assert demo["lr_decay"] ** 2 == pytest.approx(
        reference["lr_decay"], abs=1e-4
    )
    assert not {"lr_backend", "lr_ecapa"} & demo.keys()


def test_demo_stage_1_and_rounds_pass_through_random_channels(tmp_path):
    demo = hparams_for(tmp_path, name="demo.yaml")
    for overrides in ("dino_overrides", "round_overrides"):
        assert demo[overrides]["channel_augment_prob"] == 0.5


def test_demo_trials_hold_every_cross_session_target_pair(tmp_path):
    """The demo's EER uses all cross-session target pairs of its 40 test
    speakers (as many non-target pairs): with 20 speakers and 500 of their
    960 pairs, the rounds' gains were within its noise (README)."""
    options = hparams_for(tmp_path, name="demo.yaml")[
        "synthetic_corpus_options"
    ]
    sizes = {**DEFAULT_SIZES, **options}
    per_speaker = sizes["n_videos"] * sizes["n_utterances"]
    targets = sizes["n_test_speakers"] * (
        comb(per_speaker, 2)
        - sizes["n_videos"] * comb(sizes["n_utterances"], 2)
    )
    assert sizes["n_test_speakers"] == 40
    assert sizes["n_trials"] == 2 * targets == 3840


def test_demo_pseudo_labels_do_not_depend_on_the_clustering_seed(tmp_path):
    """The demo's pseudo-labels are Ward's of its embeddings, no K-Means:
    120 K-Means clusters of its 480 utterances from random initial
    centroids moved the labels' NMI by as much as a round gains (README)."""
    demo = hparams_for(tmp_path, name="demo.yaml")
    sizes = {**DEFAULT_SIZES, **demo["synthetic_corpus_options"]}
    per_speaker = sizes["n_videos"] * sizes["n_utterances"]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(sizes["n_train_speakers"], 32))
    points = np.repeat(centres, per_speaker, axis=0)
    points = (points + rng.normal(size=points.shape)).astype(np.float32)
    labels = [
        pseudo_label(
            None,
            points,
            demo["n_kmeans_clusters"],
            demo["n_pseudo_speakers"],
            seed=seed,
        )
        for seed in (0, 1)
    ]
    assert np.array_equal(*labels)


def test_cluster_last_round_measures_without_changing_lmft_labels(tmp_path):
    plain = [s.name for s in pipeline.plan_stages(hparams_for(tmp_path))]
    assert "embeddings_round2" not in plain
    hparams = hparams_for(tmp_path, cluster_last_round=True)
    stages = pipeline.plan_stages(hparams)
    names = [stage.name for stage in stages]
    assert names[names.index("eval_round2") + 1 :][:2] == [
        "embeddings_round2",
        "pseudo_labels_round2",
    ]
    by_name = {stage.name: stage for stage in stages}
    out = tmp_path / "out"
    assert options(by_name["embeddings_round2"])["model_source"] == str(
        out / "round2" / "save"
    )
    assert by_name["pseudo_labels_round2"].row == "round2"
    assert options(by_name["lmft"])["train_list"] == str(
        out / "pseudo_labels_round1" / "labels.txt"
    )


def test_ecapa_encoder_refuses_external_embeddings(tmp_path):
    with pytest.raises(SystemExit, match="model.encoder=ecapa"):
        pipeline.main(
            [
                str(ROOT / "hparams" / "demo.yaml"),
                f"--output_folder={tmp_path / 'out'}",
                "--external_embeddings=E.pt",
            ]
        )
    assert not (tmp_path / "out").exists()


def test_demo_on_another_corpus_needs_its_development_trials(tmp_path):
    with pytest.raises(SystemExit) as error:
        pipeline.main(
            [
                str(ROOT / "hparams" / "demo.yaml"),
                f"--output_folder={tmp_path / 'out'}",
                f"--data_folder={tmp_path / 'wav'}",
                f"--train_list={tmp_path / 'list.txt'}",
                f"--trials={tmp_path / 'trials.txt'}",
            ]
        )
    message = str(error.value.code)
    assert "dev_trials=" in message and "--dev_trials=null" in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_stage_selection_checks_names(tmp_path):
    stages = pipeline.plan_stages(hparams_for(tmp_path))
    reset, run = pipeline.select_stages(stages, None, "round2")
    assert [s.name for s in reset][0] == "round2"
    assert reset[-1].name == "export"
    assert len(run) == len(stages)
    reset, run = pipeline.select_stages(stages, ["dino"], None)
    assert reset == [] and [s.name for s in run] == ["dino"]
    with pytest.raises(ValueError, match="unknown stage 'round9'"):
        pipeline.select_stages(stages, ["round9"], None)


# ----------------------------------------------------------- runner


def test_runner_skips_done_stages_and_resumes_failed_ones(tmp_path):
    runner = pipeline.StageRunner(str(tmp_path / "out"))
    counter = tmp_path / "attempts.txt"
    # Fails on its first attempt (like an interrupted stage), then resumes
    # from what the first attempt left.
    code = (
        "import os, sys\n"
        f"path = {str(counter)!r}\n"
        "n = int(open(path).read()) if os.path.exists(path) else 0\n"
        "open(path, 'w').write(str(n + 1))\n"
        "print('attempt', n + 1)\n"
        "sys.exit(3 if n == 0 else 0)\n"
    )
    stage = python_stage(tmp_path, "flaky", code)
    with pytest.raises(pipeline.StageError) as error:
        runner.run(stage)
    assert "stage flaky failed (exit code 3)" in str(error.value)
    assert "attempt 1" in str(error.value)
    assert not runner.is_done("flaky")
    assert runner.run(stage) == "ran"
    assert runner.run(stage) == "skipped"
    assert counter.read_text() == "2"
    info = runner.info("flaky")
    assert info["command"] == stage.command and info["wall_s"] > 0
    log = (tmp_path / "out" / "logs" / "flaky.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log


def test_reset_removes_marker_and_outputs(tmp_path):
    runner = pipeline.StageRunner(str(tmp_path / "out"))
    folder = tmp_path / "out" / "writer"
    code = (
        f"import os; os.makedirs({str(folder)!r}, exist_ok=True); "
        f"open(os.path.join({str(folder)!r}, 'x'), 'w').write('1')"
    )
    stage = python_stage(tmp_path, "writer", code)
    runner.run(stage)
    assert (folder / "x").exists() and runner.is_done("writer")
    runner.reset(stage)
    assert not folder.exists() and not runner.is_done("writer")
    assert runner.run(stage) == "ran"


# ---------------------------------------------------------- summary


def fake_outputs(stages, runner, tmp_path):
    """Write what each real stage writes, with made-up numbers."""
    by_name = {stage.name: stage for stage in stages}
    nmi = {"dino": 0.8, "round1": 0.9}
    eer = {"dino": 20.0, "round1": 10.0, "round2": 8.0, "lmft": 7.5}
    for stage in stages:
        os.makedirs(stage.folder, exist_ok=True)
    with open(os.path.join(by_name["dino"].folder, "eval.json"), "w") as f:
        json.dump({"EER": eer["dino"], "minDCF_0.01": 0.9, "n_trials": 40}, f)
    for source, value in nmi.items():
        folder = by_name[f"pseudo_labels_{source}"].folder
        with open(os.path.join(folder, "labels.txt.json"), "w") as f:
            pairs = {
                "same_session": value,
                "same_speaker_other_session": value - 0.5,
                "other_speaker": None,
            }
            json.dump(
                {"NMI": value, "purity": value - 0.1, "session_pairs": pairs},
                f,
            )
    for source in ("round1", "round2", "lmft"):
        folder = by_name[f"eval_{source}"].folder
        methods = {"cosine": {"EER": eer[source] + 1}}
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            json.dump(
                {
                    "EER": eer[source],
                    "minDCF_0.01": 0.5,
                    "methods": methods,
                    "main_method": "reference",
                    "n_trials": 40,
                },
                f,
            )
    epochs = [
        {
            "epoch": 1,
            "threshold": None,
            "kept_fraction": 1.0,
            "kept_purity": 0.7,
            "rejected_purity": None,
            "corrected": 0,
            "lc_agreement": None,
            "gate_fit": "ok",
            "next_threshold": 0.5,
        },
        {
            "epoch": 2,
            "threshold": 0.5,
            "kept_fraction": 0.75,
            "kept_purity": 0.8,
            "rejected_purity": 0.4,
            "corrected": 3,
            "lc_agreement": 0.6,
            "gate_fit": "degenerate (why)",
        },
    ]
    with open(
        os.path.join(by_name["round1"].folder, "epoch_stats.json"), "w"
    ) as f:
        json.dump(epochs, f)
    for stage in stages:
        runner.run(python_stage(tmp_path, stage.name, "pass", stage.row))
    # Known wall times: 1 s per stage, plus 0.1 s per stage index.
    for index, stage in enumerate(stages):
        path = runner.marker(stage.name)
        with open(path) as f:
            info = json.load(f)
        info["wall_s"] = 1.0 + 0.1 * index
        with open(path, "w") as f:
            json.dump(info, f)


def test_summary_rows_json_markdown_and_plot(tmp_path):
    hparams = hparams_for(tmp_path)
    stages = pipeline.plan_stages(hparams)
    runner = pipeline.StageRunner(hparams["output_folder"])
    fake_outputs(stages, runner, tmp_path)
    rows = pipeline.collect_summary(stages, runner)
    assert [row["stage"] for row in rows] == [
        "dino",
        "round1",
        "round2",
        "lmft",
    ]
    assert [row["NMI"] for row in rows] == [0.8, 0.9, None, None]
    assert rows[1]["purity"] == pytest.approx(0.8)
    assert [row["EER"] for row in rows] == [20.0, 10.0, 8.0, 7.5]
    assert [row["EER_cosine"] for row in rows] == [20.0, 11.0, 9.0, 8.5]
    assert [e["kept_fraction"] for e in rows[1]["epochs"]] == [1.0, 0.75]
    assert "next_threshold" not in rows[1]["epochs"][0]
    assert rows[2]["epochs"] is None
    assert rows[1]["minDCF_0.01"] == 0.5
    assert all(row["wall_s"] >= 0 for row in rows)
    table = pipeline.write_summary(rows, hparams["output_folder"])
    out = pathlib.Path(hparams["output_folder"])
    saved = json.loads((out / "summary.json").read_text())
    # Floats rounded to 8 significant digits (0.8 - 0.1 is saved as 0.7).
    assert saved == round_floats(rows)
    assert saved[0]["purity"] == 0.7
    assert set(saved[0]) == set(pipeline.SUMMARY_KEYS)
    assert {"stage", "NMI", "EER", "minDCF_0.01", "wall_s"} <= set(saved[0])
    assert (out / "summary.md").read_text().strip() == table
    assert "| round1 | 0.900 | 0.800 | 10.00 | 11.00 | 0.5000 |" in table
    assert rows[0]["session_pairs"]["same_session"] == 0.8
    assert "| dino | 0.800 | 0.300 | - |" in table
    assert "| round1 | 0.900 | 0.400 | - |" in table
    assert (
        "| round1 | 2 | 0.500 | 75.0 % | 0.800 | 0.400 | 3 | 0.600 | "
        "degenerate (why) |" in table
    )
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_splits_times_and_names_scoring_and_units(tmp_path):
    import matplotlib.pyplot as plt

    hparams = hparams_for(tmp_path)
    stages = pipeline.plan_stages(hparams)
    runner = pipeline.StageRunner(hparams["output_folder"])
    fake_outputs(stages, runner, tmp_path)
    rows = {
        row["stage"]: row for row in pipeline.collect_summary(stages, runner)
    }
    wall = {stage.name: 1.0 + 0.1 * i for i, stage in enumerate(stages)}
    round1 = rows["round1"]
    assert round1["train_s"] == round(wall["round1"], 1)
    assert round1["eval_s"] == round(wall["eval_round1"], 1)
    assert round1["embed_s"] == round(wall["embeddings_round1"], 1)
    assert round1["cluster_s"] == round(wall["pseudo_labels_round1"], 1)
    assert round1["wall_s"] == round(
        sum(
            wall[n]
            for n in (
                "round1",
                "eval_round1",
                "embeddings_round1",
                "pseudo_labels_round1",
            )
        ),
        1,
    )
    assert rows["dino"]["train_s"] == round(wall["dino"], 1)
    assert rows["dino"]["cluster_s"] == round(wall["pseudo_labels_dino"], 1)
    assert rows["lmft"]["embed_s"] is None
    assert rows["dino"]["scoring"] == "cosine (full-utterance cosine)"
    assert rows["round1"]["scoring"] == "reference"
    assert rows["round1"]["n_trials"] == 40

    # JSON floats of 8 significant digits at most (38.800000000000004).
    rows["round2"]["EER"] = 100 * 0.388
    trials = str(tmp_path / "trials.txt")
    table = pipeline.write_summary(list(rows.values()), str(tmp_path), trials)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved[2]["EER"] == 38.8
    assert "38.800000000000004" not in (tmp_path / "summary.json").read_text()

    # The Markdown says what the numbers are and in which units.
    caption = table.splitlines()[0]
    assert f"EER and minDCF on {trials} (40 trials)" in caption
    assert "dino cosine (full-utterance cosine), round1 reference" in caption
    assert "EER in percent" in caption and "P_target 0.01" in caption
    assert "times in seconds" in caption
    header = table.splitlines()[2]
    for column in (
        "EER (%)",
        "minDCF (P_target 0.01)",
        "train (s)",
        "embed (s)",
        "eval (s)",
        "cluster (s)",
        "total (s)",
    ):
        assert column in header

    # The figure: axis labels and a title naming the trial list.
    figure = pipeline.summary_figure(saved, trials)
    nmi, eer_axis = figure.axes
    assert nmi.get_xlabel() == eer_axis.get_xlabel() == "model (pipeline stage)"
    assert nmi.get_ylabel() == "NMI against the true speakers"
    assert eer_axis.get_ylabel() == "EER (%)"
    assert [t.get_text() for t in eer_axis.get_xticklabels()] == [
        "dino",
        "round1",
        "round2",
        "lmft",
    ]
    assert figure._suptitle.get_text() == (
        "EER on trials.txt (40 trials); scoring: cosine (full-utterance "
        "cosine), reference"
    )
    plt.close(figure)


def test_summary_of_an_unfinished_run_has_empty_cells(tmp_path):
    hparams = hparams_for(tmp_path)
    stages = pipeline.plan_stages(hparams)
    runner = pipeline.StageRunner(hparams["output_folder"])
    rows = pipeline.collect_summary(stages, runner)
    assert all(
        row["NMI"] is None and row["EER"] is None and row["wall_s"] is None
        for row in rows
    )
    pipeline.write_summary(rows, hparams["output_folder"])


# -------------------------------------------------------------- CLI


def test_missing_input_is_one_clear_line(tmp_path):
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(ROOT / "hparams/pipeline.yaml"),
            f"--output_folder={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "data_folder" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_demo_generates_the_corpus_only_when_pointed_at_it(
    tmp_path, monkeypatch
):
    import data_prep.synthetic

    calls = []
    monkeypatch.setattr(
        data_prep.synthetic,
        "generate_corpus",
        lambda folder, **options: calls.append(folder),
    )
    other_corpus = hparams_for(
        tmp_path, name="demo.yaml", noise_folder=None, rir_folder=None
    )
    pipeline.prepare_synthetic_corpus(other_corpus)
    assert calls == []
    with open(ROOT / "hparams" / "demo.yaml", encoding="utf-8") as f:
        demo = load_hyperpyyaml(
            f, f"output_folder: {json.dumps(str(tmp_path / 'd'))}"
        )
    pipeline.prepare_synthetic_corpus(demo)
    assert calls == [os.path.abspath(tmp_path / "d" / "corpus")]


def test_runner_shows_progress_and_logs_plain_lines(tmp_path):
    import io

    # A stage with a real tqdm bar (on stderr) and a log line (stdout).
    code = (
        "import time\n"
        "from tqdm import tqdm\n"
        "print('starting', flush=True)\n"
        "for _ in tqdm(range(5), mininterval=0):\n"
        "    time.sleep(0.01)\n"
        "print('done')\n"
    )
    console = io.StringIO()
    runner = pipeline.StageRunner(str(tmp_path / "out"), console=console)
    stage = python_stage(tmp_path, "bar", code)
    runner.run(stage)
    log = (tmp_path / "out" / "logs" / "bar.log").read_text()
    command = f"$ {' '.join(stage.command)}\n"
    assert log.startswith(command)
    lines = log[len(command) :].splitlines()
    assert lines[0] == "starting" and lines[-1] == "done"
    assert lines[1].startswith("100%|") and "5/5" in lines[1]
    assert len(lines) == 3 and "\r" not in log
    # The console (not a terminal here) gets the same lines.
    assert console.getvalue().splitlines() == lines
