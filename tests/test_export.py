"""Export -> load through SpeechBrain alone in a fresh process -> verify."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from tiny_models import save_training_checkpoint, tiny_wavlm_mhfa

from speechbrain_ext.dataio.audio import read_audio
from speechbrain_ext.pretrained.checkpoints import CheckpointMismatchError
from speechbrain_ext.pretrained.export import (
    calibrate_threshold,
    missing_package_message,
)
from speechbrain_ext.pretrained.inference import WavLMSpeakerVerification
from speechbrain_ext.verification.scoring import read_trials

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num_workers=0", "--noprogressbar"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tiny_model, tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    save = folder / "train" / "save"
    save_training_checkpoint(save, tiny_model)
    spec = importlib.util.spec_from_file_location(
        "export_pretrained",
        os.path.join(ROOT, "recipes", "export_pretrained.py"),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        module.main(
            ["hparams/export_pretrained.yaml"]
            + TINY
            + [
                f"--model_source={folder / 'train'}",
                f"--output_folder={folder / 'model'}",
                f"--dev_trials={tiny_corpus['dev_trials']}",
                f"--data_folder={tiny_corpus['data_folder']}",
            ]
        )
    finally:
        os.chdir(cwd)
    return str(folder / "model")


def test_folder_content_and_calibrated_threshold(
    exported, tiny_model, tiny_corpus
):
    assert sorted(os.listdir(exported)) == [
        "README.md",
        "custom.py",
        "embedding_model.ckpt",
        "export_info.json",
        "hyperparams.yaml",
    ]
    with open(os.path.join(exported, "hyperparams.yaml")) as f:
        stored = load_hyperpyyaml(f)
    expected, _, _ = calibrate_threshold(
        tiny_model,
        read_trials(tiny_corpus["dev_trials"]),
        tiny_corpus["data_folder"],
        progress=False,
    )
    # Same model, data, thread count and code in one process, and the file
    # holds repr(threshold): equal exactly.
    assert stored["threshold"] == expected
    info = json.loads(open(os.path.join(exported, "export_info.json")).read())
    assert "EER point" in info["threshold_origin"]
    assert info["dev_trials"] == os.path.abspath(tiny_corpus["dev_trials"])
    low, high = info["dev_score_range"]
    assert low <= stored["threshold"] <= high
    for number in (info["dev_EER_percent"], low, high):
        assert float(f"{number:.8g}") == number  # no 38.800000000000004
    assert (
        "SpeakerRecognition.from_hparams"
        in open(os.path.join(exported, "README.md")).read()
    )


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from speechbrain.inference.interfaces import foreign_class
    from speechbrain.inference.speaker import SpeakerRecognition
    from speechbrain.utils.fetching import FetchConfig

    folder, savedir, wavs_file, file_a, file_b = sys.argv[1:]
    offline = FetchConfig(allow_network=False)
    model = SpeakerRecognition.from_hparams(
        source=folder, savedir=savedir + "/sb", fetch_config=offline
    )
    batch = torch.from_numpy(np.load(wavs_file))
    lens = torch.tensor([1.0, 0.5])
    padded = model.encode_batch(batch, lens)
    alone = model.encode_batch(batch[1:, : batch.shape[1] // 2])
    score, decision = model.verify_files(file_a, file_b)
    custom = foreign_class(
        source=folder, pymodule_file="custom.py",
        classname="WavLMSpeakerVerification", savedir=savedir + "/fc",
        fetch_config=offline,
    )
    custom_score, custom_decision = custom.verify_files(file_a, file_b)
    print(json.dumps({
        "padded": padded.tolist(),
        "alone": alone.tolist(),
        "score": score.tolist(),
        "decision": decision.tolist(),
        "custom_score": custom_score.tolist(),
        "custom_decision": custom_decision.tolist(),
        "threshold": custom.threshold,
        "modules": sorted(sys.modules),
    }))
    """
)


class Collapsed(torch.nn.Module):
    """A model whose embeddings all point almost the same way."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, wavs, wav_lens=None):
        return 1.0 + 1e-4 * self.model(wavs, wav_lens)


def test_nearly_collapsed_embeddings_are_a_warning(
    tiny_model, tiny_corpus, caplog
):
    dev = read_trials(tiny_corpus["dev_trials"])
    root = tiny_corpus["data_folder"]
    with caplog.at_level("WARNING"):
        _, _, spread = calibrate_threshold(
            tiny_model, dev, root, progress=False
        )
    assert spread["p99"] - spread["p1"] >= 0.05, spread
    assert "collapsed" not in caplog.text

    threshold, _, spread = calibrate_threshold(
        Collapsed(tiny_model), dev, root, progress=False
    )
    assert spread["max"] - spread["min"] < 0.05
    warnings = [r for r in caplog.records if "collapsed" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"]
    message = warnings[0].getMessage()
    assert dev.path in message
    assert f"{spread['min']:.5f}-{spread['max']:.5f}" in message
    assert f"calibrated threshold {threshold:.6f}" in message


def test_speechbrain_loads_it_in_a_fresh_process(
    exported, tiny_model, tiny_corpus, tmp_path
):
    trials = read_trials(tiny_corpus["trials"])
    file_a, file_b = (
        os.path.join(tiny_corpus["data_folder"], f)
        for f in (trials.enrol[0], trials.test[0])
    )
    wavs = torch.randn(2, 16000) * 0.1
    np.save(tmp_path / "wavs.npy", wavs.numpy())
    environment = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, exported, str(tmp_path),
         str(tmp_path / "wavs.npy"), file_a, file_b],
        capture_output=True, text=True, env=environment, cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    with torch.no_grad():
        expected = tiny_model(wavs)
        expected_a = tiny_model(read_audio(file_a)[None])
        expected_b = tiny_model(read_audio(file_b)[None])
    padded = torch.tensor(out["padded"])
    assert padded.shape == (2, 1, 16)
    torch.testing.assert_close(padded[0], expected[0], atol=1e-5, rtol=0)
    # wav_lens honoured: the half-length row equals that half alone.
    torch.testing.assert_close(
        padded[1], torch.tensor(out["alone"])[0], atol=1e-5, rtol=0
    )
    cosine = torch.nn.functional.cosine_similarity(
        expected_a[0], expected_b[0], dim=-1
    )
    assert out["score"] == pytest.approx(cosine.tolist(), abs=1e-5)
    assert out["decision"] == [out["score"][0] > 0.25]
    # The same embeddings through the same cosine: equal exactly.
    assert out["custom_score"] == out["score"]
    assert out["custom_decision"] == [out["score"][0] > out["threshold"]]
    assert not any(m.startswith("recipes") for m in out["modules"])


MISSING_PACKAGE = textwrap.dedent(
    """
    import importlib.util, sys
    from speechbrain.inference.speaker import SpeakerRecognition

    assert importlib.util.find_spec("speechbrain_ext") is None, "installed"
    try:
        SpeakerRecognition.from_hparams(source=sys.argv[1], savedir=sys.argv[2])
    except ImportError as error:
        print(error)
    """
)


def test_without_the_package_one_line_says_how_to_install_it(
    exported, tmp_path
):
    # No site initialisation (-S): the editable install of this project is
    # not on the path, its dependencies are (PYTHONPATH).
    environment = dict(
        os.environ,
        PYTHONPATH=sysconfig.get_paths()["purelib"],
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", MISSING_PACKAGE, exported,
         str(tmp_path / "sd")],
        capture_output=True, text=True, env=environment, cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines == [missing_package_message()]
    assert lines[0].startswith(
        "this model needs the Python package speechbrain_ext (project "
        "wavlm-ssl-sv), which is not installed: "
    )
    assert lines[0].endswith(f"pip install -e {ROOT}")


def test_weights_that_do_not_fit_are_one_line(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    torch.save(
        tiny_wavlm_mhfa(4, 8, 32).state_dict(),
        broken / "embedding_model.ckpt",
    )
    with pytest.raises(CheckpointMismatchError) as error:
        WavLMSpeakerVerification.from_hparams(
            source=str(broken), savedir=str(tmp_path / "sd")
        )
    message = str(error.value)
    assert message.startswith(f"{broken / 'embedding_model.ckpt'}: ")
    assert "mhfa.pooling_fc.weight (32, 32) in checkpoint vs (16, 32)" in (
        message
    )
    assert "\n" not in message and len(message) < 400, message


def test_stored_threshold_drives_decisions(exported, tmp_path):
    model = WavLMSpeakerVerification.from_hparams(
        source=exported, savedir=str(tmp_path / "sd")
    )
    wavs = torch.randn(1, 16000) * 0.1
    score, decision = model.verify_batch(wavs, wavs * 0.5)
    assert decision.item() == (score.item() > model.threshold)
    _, forced = model.verify_batch(wavs, wavs * 0.5, threshold=2.0)
    assert not forced.item()


@pytest.mark.parametrize(
    "missing", ["embedding_model.ckpt", "hyperparams.yaml"]
)
def test_folder_missing_a_file_is_a_clear_error(exported, tmp_path, missing):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    os.remove(broken / missing)
    with pytest.raises(FileNotFoundError) as error:
        WavLMSpeakerVerification.from_hparams(
            source=str(broken), savedir=str(tmp_path / "sd")
        )
    assert str(error.value) == (
        f"{broken}: exported model folder is missing {missing} (expected "
        "hyperparams.yaml, embedding_model.ckpt, see "
        "recipes/export_pretrained.py)"
    )


OLD_LAYOUT_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from speechbrain.inference.interfaces import foreign_class
    from speechbrain.inference.speaker import SpeakerRecognition
    from speechbrain.utils.fetching import FetchConfig

    folder, savedir = sys.argv[1:]
    offline = FetchConfig(allow_network=False)
    model = SpeakerRecognition.from_hparams(
        source=folder, savedir=savedir + "/sb", fetch_config=offline
    )
    wav = torch.linspace(-0.5, 0.5, 16000)[None]
    custom = foreign_class(
        source=folder, pymodule_file="custom.py",
        classname="WavLMSpeakerVerification", savedir=savedir + "/fc",
        fetch_config=offline,
    )
    print(json.dumps({
        "embedding": model.encode_batch(wav).tolist(),
        "custom": custom.encode_batch(wav).tolist(),
    }))
    """
)


def test_a_folder_exported_with_the_old_module_paths_still_loads(
    exported, tiny_model, tmp_path
):
    from speechbrain_ext import MOVED_MODULES

    old = tmp_path / "old_export"
    shutil.copytree(exported, old)
    for name in ("hyperparams.yaml", "custom.py"):
        text = (old / name).read_text()
        for old_path, new_path in MOVED_MODULES.items():
            text = text.replace(new_path + ".", old_path + ".")
            text = text.replace(
                f"from {new_path} import", f"from {old_path} import"
            )
        (old / name).write_text(text)
    assert (
        "speechbrain_ext.wavlm.WavLMConfig"
        in (old / "hyperparams.yaml").read_text()
    )
    result = subprocess.run(
        [sys.executable, "-c", OLD_LAYOUT_PROCESS, str(old), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was deprecated, redirecting" in result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = tiny_model(torch.linspace(-0.5, 0.5, 16000)[None])
    # The same model on the same input in another process: equal within
    # float32 rounding of the whole network (the other process may block
    # its products differently); 1e-5 absolute on embeddings of norm ~1.
    torch.testing.assert_close(
        torch.tensor(out["embedding"])[0], expected[0], atol=1e-5, rtol=0
    )
    assert out["custom"] == out["embedding"]
