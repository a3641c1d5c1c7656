"""Reference checkpoint layout -> our checkpoint and exported folder."""

import argparse
import importlib.util
import os

import pytest
import torch
from speechbrain.inference.speaker import SpeakerRecognition
from tiny_models import tiny_wavlm_mhfa

from speechbrain_ext.dataio.audio import read_audio
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig, save_wavlm
from speechbrain_ext.pretrained.checkpoints import load_embedding_model
from speechbrain_ext.pretrained.convert import to_reference_state
from speechbrain_ext.utils.io_utils import safe_torch_load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def convert(argv):
    spec = importlib.util.spec_from_file_location(
        "convert_original", os.path.join(ROOT, "recipes", "convert_original.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A fine-tuned model, its reference-layout checkpoint, a WavLM file."""
    folder = tmp_path_factory.mktemp("reference")
    torch.manual_seed(0)
    model = tiny_wavlm_mhfa(4, 8, 16).eval()
    classifier = torch.randn(11, 16)
    # The pre-trained WavLM: same architecture, other weights.
    save_wavlm(WavLM(WavLMConfig.tiny()), folder / "wavlm.pt")
    return model, classifier, folder


@pytest.mark.parametrize("ddp", [True, False])
def test_round_trip(reference, tiny_corpus, tmp_path, ddp):
    model, classifier, folder = reference
    state = to_reference_state(model, classifier, ddp=ddp)
    prefix = "module." if ddp else ""
    state[prefix + "__S__.model.mask_emb"] = torch.zeros(64)
    torch.save(state, tmp_path / "model000000015.model")
    output = tmp_path / "converted"
    convert(
        [
            "--checkpoint", str(tmp_path / "model000000015.model"),
            "--wavlm", str(folder / "wavlm.pt"),
            "--output_folder", str(output),
        ]
    )  # fmt: skip

    wav_path = os.path.join(
        tiny_corpus["data_folder"],
        open(tiny_corpus["train_list"]).readline().split()[1],
    )
    wav = read_audio(wav_path)[None]
    with torch.no_grad():
        expected = model(wav)
    exported = SpeakerRecognition.from_hparams(
        source=str(output), savedir=str(tmp_path / "sd")
    )
    torch.testing.assert_close(
        exported.encode_batch(wav), expected, atol=1e-5, rtol=0
    )

    # The training checkpoint carries its architecture.
    loaded, origin = load_embedding_model(str(output / "save"))
    assert origin.endswith("CKPT+converted")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    head = safe_torch_load(os.path.join(origin, "classifier.ckpt"))
    assert torch.equal(head["weight"], classifier)


def test_unknown_keys_and_mismatches_are_errors(reference, tmp_path):
    model, classifier, folder = reference
    args = ["--wavlm", str(folder / "wavlm.pt"), "--output_folder"]
    args.append(str(tmp_path / "out"))

    state = to_reference_state(model, classifier)
    state["module.__L__.extra_margin"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.model")
    with pytest.raises(SystemExit, match="keys outside .*extra_margin"):
        convert(["--checkpoint", str(tmp_path / "extra.model")] + args)

    state = to_reference_state(model, classifier)
    del state["module.__S__.backend.att_head.weight"]
    torch.save(state, tmp_path / "partial.model")
    with pytest.raises(SystemExit, match="backend.att_head.weight"):
        convert(["--checkpoint", str(tmp_path / "partial.model")] + args)

    wide = tiny_wavlm_mhfa(4, 8, 16, encoder_ffn_embed_dim=96)
    torch.save(to_reference_state(wide, None), tmp_path / "wide.model")
    with pytest.raises(SystemExit, match="does not fit.*shape mismatch"):
        convert(["--checkpoint", str(tmp_path / "wide.model")] + args)

    torch.save({"args": argparse.Namespace(a=1)}, tmp_path / "pickled.model")
    with pytest.raises(SystemExit, match="refused"):
        convert(["--checkpoint", str(tmp_path / "pickled.model")] + args)
    assert not (tmp_path / "out").exists()
