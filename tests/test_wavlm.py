"""WavLM: parity with Hugging Face transformers, padding, checkpoints."""

import json
import logging
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from speechbrain_ext.lobes.wavlm import (
    WavLM,
    WavLMCheckpointError,
    WavLMConfig,
    load_wavlm,
    parse_conv_feature_layers,
    save_wavlm,
    state_dict_from_hf,
    state_dict_to_hf,
)
from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    UnsafeCheckpointError,
)

transformers = pytest.importorskip("transformers")

# Post-LN with group norm (Base/Base+) and pre-LN with layer norms (Large).
CONFIGS = {
    "base_like": WavLMConfig.tiny(),
    "large_like": WavLMConfig.tiny(
        extractor_mode="layer_norm",
        conv_bias=True,
        layer_norm_first=True,
        normalize=True,
    ),
}
LENGTHS = [16000, 11200, 5000, 800]  # samples; 800 is only 2 frames


def relative_error(ours, reference):
    """Largest absolute difference over the largest reference magnitude."""
    return float((ours - reference).abs().max() / reference.abs().max())


def assert_close(ours, reference, tolerance=1e-4):
    assert ours.shape == reference.shape
    assert relative_error(ours, reference) < tolerance


def random_hf_model(config, seed=0):
    """A Hugging Face WavLMModel with every parameter randomised (norms,
    biases and gates too, so that a mis-mapped tensor is visible)."""
    torch.manual_seed(seed)
    hf_config = transformers.WavLMConfig(**config.to_hf_config())
    model = transformers.WavLMModel(hf_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_attn_embed" in name:
                param.normal_(0.0, 2.0)
            elif param.dim() == 1 or "gru_rel_pos_const" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def ours_from_hf(hf_model, config):
    state, dropped = state_dict_from_hf(
        hf_model.state_dict(), config.extractor_mode
    )
    assert dropped == []
    model = WavLM(config).eval()
    model.load_state_dict(state)
    return model


def hf_hidden_states(hf_model, wavs, normalize):
    if normalize:  # done by the Hugging Face feature extractor, not model
        wavs = F.layer_norm(wavs, wavs.shape[-1:])
    with torch.no_grad():
        out = hf_model(wavs, output_hidden_states=True)
    return torch.stack(out.hidden_states)


def padded_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(LENGTHS), max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        wavs[i, :n] = torch.randn(n, generator=generator)
    # Garbage beyond each end must not matter.
    wavs[1, LENGTHS[1] :] = 5.0
    wav_lens = torch.tensor(LENGTHS, dtype=torch.float64) / max(LENGTHS)
    return wavs, wav_lens


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_transformers_unpadded(name):
    config = CONFIGS[name]
    hf_model = random_hf_model(config)
    model = ours_from_hf(hf_model, config)
    wavs = torch.randn(3, 16000)
    reference = hf_hidden_states(hf_model, wavs, config.normalize)
    with torch.no_grad():
        hidden = model(wavs)
    assert hidden.shape == (config.encoder_layers + 1, 3, 49, 64)
    for layer in range(hidden.shape[0]):
        assert_close(hidden[layer], reference[layer])

    # ... and back: our weights in a fresh Hugging Face model.
    fresh = transformers.WavLMModel(hf_model.config).eval()
    fresh.load_state_dict(
        state_dict_to_hf(model.state_dict(), config.extractor_mode)
    )
    assert_close(hf_hidden_states(fresh, wavs, config.normalize), reference)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_padded_batch_equals_transformers_one_at_a_time(name):
    config = CONFIGS[name]
    hf_model = random_hf_model(config, seed=1)
    model = ours_from_hf(hf_model, config)
    wavs, wav_lens = padded_batch()
    with torch.no_grad():
        hidden = model(wavs, wav_lens)
    frames = model.frame_lengths(torch.tensor(LENGTHS))
    for i, n in enumerate(LENGTHS):
        alone = hf_hidden_states(
            hf_model, wavs[i : i + 1, :n], config.normalize
        )
        assert alone.shape[2] == frames[i]
        assert_close(hidden[:, i, : frames[i]], alone[:, 0])
        assert not hidden[:, i, frames[i] :].any()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_padded_batch_equals_ours_one_at_a_time(name):
    torch.manual_seed(2)
    model = WavLM(CONFIGS[name]).eval()
    wavs, wav_lens = padded_batch(seed=3)
    with torch.no_grad():
        hidden = model(wavs, wav_lens)
        frames = model.frame_lengths(torch.tensor(LENGTHS))
        for i, n in enumerate(LENGTHS):
            alone = model(wavs[i : i + 1, :n])
            assert_close(hidden[:, i, : frames[i]], alone[:, 0])


def test_padding_changes_unmasked_group_norm():
    """The check above can fail: plain group norm over the padded length
    (what Hugging Face does) gives different valid frames."""
    config = CONFIGS["base_like"]
    hf_model = random_hf_model(config, seed=4)
    wavs, _ = padded_batch()
    wavs[1:] = 0.0
    wavs[1, : LENGTHS[1]] = wavs[0, : LENGTHS[1]]
    padded = hf_hidden_states(hf_model, wavs[:2], normalize=False)
    alone = hf_hidden_states(hf_model, wavs[1:2, : LENGTHS[1]], False)
    frames = alone.shape[2]
    assert relative_error(padded[:, 1, :frames], alone[:, 0]) > 1e-3


def test_frame_lengths_match_outputs_and_real_model():
    model = WavLM(WavLMConfig.tiny()).eval()
    base_plus = WavLMConfig.base_plus()
    samples = torch.tensor([400, 719, 720, 16000, 48000, 48240])
    expected = base_plus.frame_lengths(samples)
    assert torch.equal(model.frame_lengths(samples), expected)
    assert expected.tolist() == [1, 1, 2, 49, 149, 150]
    with torch.no_grad():
        for n, t in zip(samples.tolist(), expected.tolist()):
            assert model(torch.randn(1, n)).shape[2] == t
    assert model.frame_lengths(399) == 0
    frames = model.valid_frames(torch.tensor([1.0, 0.5]), 16000)
    assert frames.tolist() == [49, 24]


def test_too_short_input_is_refused():
    model = WavLM(WavLMConfig.tiny()).eval()
    with pytest.raises(ValueError, match="receptive field"):
        model(torch.randn(2, 1000), torch.tensor([1.0, 0.3]))
    with pytest.raises(ValueError, match="receptive field"):
        model(torch.randn(1, 399))


def test_gradients_reach_transformer_but_never_the_cnn():
    torch.manual_seed(5)
    model = WavLM(WavLMConfig.tiny()).train()
    hidden = model(torch.randn(2, 16000), torch.tensor([1.0, 0.6]))
    hidden[-1].square().mean().backward()
    for layer in model.transformer_layers():
        for name, param in layer.named_parameters():
            assert param.grad is not None, name
            assert param.grad.abs().sum() > 0, name
    for param in model.feature_extractor.parameters():
        assert param.grad is None
        assert not param.requires_grad
    # Even when a user switches gradients back on, the CNN gets none.
    model.zero_grad()
    model.requires_grad_(True)
    model(torch.randn(1, 8000)).sum().backward()
    assert all(p.grad is None for p in model.feature_extractor.parameters())
    assert model.post_extract_proj.weight.grad is not None


def test_eval_is_deterministic_and_train_uses_dropout():
    torch.manual_seed(6)
    model = WavLM(WavLMConfig.tiny(dropout=0.2)).eval()
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        assert torch.equal(model(wavs), model(wavs))
        model.train()
        assert not torch.equal(model(wavs), model(wavs))


def test_layerdrop_repeats_hidden_states_in_training_only():
    torch.manual_seed(7)
    config = WavLMConfig.tiny(encoder_layers=3, encoder_layerdrop=1.0)
    model = WavLM(config).train()
    with torch.no_grad():
        hidden = model(torch.randn(1, 8000))
        assert all(torch.equal(hidden[0], h) for h in hidden[1:])
        model.eval()
        hidden = model(torch.randn(1, 8000))
        assert not torch.equal(hidden[0], hidden[1])


@pytest.mark.parametrize(
    "preset, expected_millions",
    [("base", 94.38), ("base_plus", 94.38), ("large", 315.45)],
)
def test_parameter_counts_match_transformers(preset, expected_millions):
    config = getattr(WavLMConfig, preset)()
    with torch.device("meta"):
        ours = WavLM(config)
        hf_model = transformers.WavLMModel(
            transformers.WavLMConfig(**config.to_hf_config())
        )
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf_model.parameters())
    assert abs(count / 1e6 - expected_millions) < 0.01
    hf_names = set(hf_model.state_dict())
    assert set(state_dict_to_hf(ours.state_dict(), config.extractor_mode)) == (
        hf_names
    )


def test_original_cfg_round_trip_and_safe_parsing():
    base_plus_cfg = {
        "extractor_mode": "default",
        "encoder_layers": 12,
        "conv_feature_layers": (
            "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
        ),
        "relative_position_embedding": True,
        "gru_rel_pos": True,
        "max_distance": 800,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "feature_grad_mult": 0.1,
        "mask_prob": 0.65,
    }
    config = WavLMConfig.from_original_cfg(base_plus_cfg)
    assert config == WavLMConfig.base_plus(
        extra={"feature_grad_mult": 0.1, "mask_prob": 0.65}
    )
    cfg = config.to_original_cfg()
    for key, value in base_plus_cfg.items():
        assert cfg[key] == value
    assert WavLMConfig.from_original_cfg(cfg) == config
    for bad in ["__import__('os').getcwd()", "[(512,10)]", "[(1,1,1)] * 10**9"]:
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_feature_layers(bad)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_config_round_trip(name):
    config = CONFIGS[name]
    hf_config = transformers.WavLMConfig(**config.to_hf_config())
    back = WavLMConfig.from_hf_config(hf_config, normalize=config.normalize)
    assert back == config


def write_original_checkpoint(model, path, extra_keys=True):
    state = dict(model.state_dict())
    if extra_keys:
        dim = model.config.encoder_embed_dim
        state["mask_emb"] = torch.rand(dim)
        state["label_embs_concat"] = torch.rand(504, dim)
        state["final_proj.weight"] = torch.rand(dim, dim)
    torch.save({"cfg": model.config.to_original_cfg(), "model": state}, path)


def test_original_layout_loads_and_logs_ignored_keys(tmp_path, caplog):
    torch.manual_seed(8)
    model = WavLM(CONFIGS["large_like"]).eval()
    path = tmp_path / "WavLM-Tiny.pt"
    write_original_checkpoint(model, path)
    with caplog.at_level(logging.INFO, logger="speechbrain_ext.lobes.wavlm"):
        loaded = load_wavlm(path)
    assert "final_proj.weight, label_embs_concat, mask_emb" in caplog.text
    assert not loaded.training
    assert loaded.config == model.config
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        assert torch.equal(loaded(wavs), model(wavs))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(9)
    model = WavLM(CONFIGS["base_like"]).eval()
    path = tmp_path / "out" / "wavlm.pt"
    save_wavlm(model, path)
    assert os.listdir(tmp_path / "out") == ["wavlm.pt"]  # no temp files
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) == {"cfg", "model"}
    assert isinstance(checkpoint["cfg"]["conv_feature_layers"], str)
    loaded = load_wavlm(path)
    assert loaded.config == model.config
    wavs, wav_lens = padded_batch()
    with torch.no_grad():
        assert torch.equal(loaded(wavs, wav_lens), model(wavs, wav_lens))


@pytest.mark.parametrize("weights", ["safetensors", "bin", "legacy_bin"])
def test_hf_folder_loads(tmp_path, weights):
    config = CONFIGS["base_like"]
    hf_model = random_hf_model(config, seed=10)
    folder = tmp_path / "hf"
    hf_model.save_pretrained(folder)
    if weights != "safetensors":
        os.remove(folder / "model.safetensors")
        state = hf_model.state_dict()
        if weights == "legacy_bin":  # older transformers' weight-norm names
            prefix = "encoder.pos_conv_embed.conv."
            state[prefix + "weight_g"] = state.pop(
                prefix + "parametrizations.weight.original0"
            )
            state[prefix + "weight_v"] = state.pop(
                prefix + "parametrizations.weight.original1"
            )
        torch.save(state, folder / "pytorch_model.bin")
    model = load_wavlm(folder)
    assert not model.training
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        hidden = model(wavs)
    assert_close(hidden, hf_hidden_states(hf_model, wavs, normalize=False))


def test_hf_folder_reads_normalize_from_preprocessor_config(tmp_path):
    hf_model = random_hf_model(CONFIGS["base_like"], seed=11)
    hf_model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True})
    )
    assert load_wavlm(tmp_path).config.normalize


def test_wrong_shapes_are_named(tmp_path):
    model = WavLM(WavLMConfig.tiny(encoder_ffn_embed_dim=96))
    path = tmp_path / "bad.pt"
    state = model.state_dict()
    cfg = WavLMConfig.tiny().to_original_cfg()
    torch.save({"cfg": cfg, "model": state}, path)
    with pytest.raises(WavLMCheckpointError) as error:
        load_wavlm(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert "encoder.layers.0.fc1.weight (96, 64) in checkpoint vs " in message
    assert "(128, 64) in model" in message


def test_missing_and_unexpected_keys_are_named(tmp_path):
    model = WavLM(WavLMConfig.tiny())
    state = dict(model.state_dict())
    del state["encoder.layers.1.fc2.bias"]
    state["encoder.layers.2.fc2.bias"] = torch.zeros(64)
    path = tmp_path / "bad.pt"
    torch.save({"cfg": model.config.to_original_cfg(), "model": state}, path)
    with pytest.raises(WavLMCheckpointError) as error:
        load_wavlm(path)
    message = str(error.value)
    assert "missing keys: encoder.layers.1.fc2.bias" in message
    assert "unexpected keys: encoder.layers.2.fc2.bias" in message


def test_hf_folder_with_wrong_shapes_is_named(tmp_path):
    hf_model = random_hf_model(CONFIGS["base_like"])
    hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WavLMCheckpointError, match="shape mismatch"):
        load_wavlm(tmp_path)


def _side_effect(marker):
    """What the malicious pickle would run: create ``marker``."""
    with open(marker, "w") as f:
        f.write("executed")
    return {}


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _side_effect, (self.marker,)


def test_pickle_needing_code_is_refused_and_not_executed(tmp_path):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"cfg": {}, "model": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        load_wavlm(path)
    assert not os.path.exists(marker)
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert os.path.exists(marker)


def test_plain_pickle_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises((UnsafeCheckpointError, CorruptFileError)):
        load_wavlm(path)
    assert not os.path.exists(marker)


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "wavlm.pt"
    save_wavlm(WavLM(WavLMConfig.tiny()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="wavlm.pt"):
        load_wavlm(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(WavLMCheckpointError, match="not a WavLM checkpoint"):
        load_wavlm(path)
    torch.save(
        {"cfg": {"conv_feature_layers": "os.system('x')"}, "model": {}}, path
    )
    with pytest.raises(WavLMCheckpointError, match="bad cfg"):
        load_wavlm(path)
    with pytest.raises(FileNotFoundError):
        load_wavlm(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_wavlm(tmp_path)


def test_corrupt_safetensors_is_refused(tmp_path):
    hf_model = random_hf_model(CONFIGS["base_like"])
    hf_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        load_wavlm(tmp_path)


ARBITRARY = {
    "no_position_bias": WavLMConfig.tiny(
        relative_position_embedding=False, gru_rel_pos=False
    ),
    "ungated_bias_relu": WavLMConfig.tiny(
        gru_rel_pos=False, activation_fn="relu", encoder_layers=3
    ),
    "no_projection_odd_kernel": WavLMConfig.tiny(
        encoder_embed_dim=32, conv_pos=15, conv_pos_groups=2
    ),
}


@pytest.mark.parametrize("name", sorted(ARBITRARY))
def test_arbitrary_configs_pad_and_round_trip(name, tmp_path):
    config = ARBITRARY[name]
    torch.manual_seed(12)
    model = WavLM(config).eval()
    assert (model.post_extract_proj is None) == (name.startswith("no_proj"))
    wavs, wav_lens = padded_batch(seed=13)
    with torch.no_grad():
        hidden = model(wavs, wav_lens)
        assert hidden.shape[0] == config.encoder_layers + 1
        frames = model.frame_lengths(torch.tensor(LENGTHS))
        for i, n in enumerate(LENGTHS):
            alone = model(wavs[i : i + 1, :n])
            assert_close(hidden[:, i, : frames[i]], alone[:, 0])
    save_wavlm(model, tmp_path / "model.pt")
    loaded = load_wavlm(tmp_path / "model.pt")
    assert loaded.config == config
    with torch.no_grad():
        assert torch.equal(loaded(wavs, wav_lens), hidden)


def test_config_from_dict_as_in_hparams():
    fields = {"conv_layers": [[32, 10, 5], [32, 3, 2], [32, 7, 4], [32, 9, 8]]}
    model = WavLM(
        dict(
            fields,
            encoder_layers=1,
            encoder_embed_dim=64,
            encoder_attention_heads=4,
        )
    )
    assert model.config.conv_layers == WavLMConfig.tiny().conv_layers
    assert len(model.transformer_layers()) == 1
    with pytest.raises(ValueError, match="divisible"):
        WavLMConfig.tiny(encoder_attention_heads=5)
