"""WavLM + MHFA embedding model: padding, gradients, freezing, back-end."""

import pytest
import torch

from speechbrain_ext.lobes.embedding_model import WavLMMHFA
from speechbrain_ext.lobes.mhfa import MHFA
from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig


def tiny_model(freeze_transformer=False):
    torch.manual_seed(0)
    config = WavLMConfig.tiny()
    mhfa = MHFA(
        n_layers=config.encoder_layers + 1,
        input_size=config.encoder_embed_dim,
        n_heads=4,
        compression_size=8,
        output_size=16,
    )
    return WavLMMHFA(WavLM(config), mhfa, freeze_transformer)


def test_padded_batch_equals_one_at_a_time():
    model = tiny_model().eval()
    lengths = [16000, 11234, 7001]
    wavs = [torch.randn(n) for n in lengths]
    batch = torch.zeros(3, max(lengths))
    for i, wav in enumerate(wavs):
        batch[i, : len(wav)] = wav
    wav_lens = torch.tensor(lengths, dtype=torch.float) / max(lengths)
    with torch.no_grad():
        batched = model(batch, wav_lens)
        alone = torch.cat([model(w[None]) for w in wavs])
    assert batched.shape == (3, 1, 16)
    assert torch.allclose(batched, alone, rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_transformer_but_not_the_cnn():
    model = tiny_model().train()
    model(torch.randn(2, 8000), torch.tensor([1.0, 0.7])).sum().backward()
    for name, param in model.named_parameters():
        if "feature_extractor" in name:
            assert param.grad is None, name
    layers = model.wavlm.transformer_layers()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for layer in layers
        for p in layer.parameters()
        if p.requires_grad and p.dim() > 1
    )
    assert model.mhfa.pooling_fc.weight.grad.abs().sum() > 0


def test_frozen_transformer_trains_only_the_back_end():
    model = tiny_model(freeze_transformer=True).train()
    model(torch.randn(2, 8000)).sum().backward()
    assert all(p.grad is None for p in model.wavlm.parameters())
    assert all(p.grad is not None for p in model.mhfa.parameters())


def test_back_end_on_precomputed_hidden_states_matches_full_forward():
    model = tiny_model().eval()
    wavs = torch.randn(2, 12000)
    wav_lens = torch.tensor([1.0, 0.6])
    with torch.no_grad():
        hidden = model.wavlm(wavs, wav_lens)
        frames = model.wavlm.valid_frames(wav_lens, 12000)
        assert torch.equal(
            model.forward_hidden(hidden, frames), model(wavs, wav_lens)
        )


def test_mismatched_back_end_is_a_clear_error():
    config = WavLMConfig.tiny()
    with pytest.raises(ValueError, match="n_layers=13"):
        WavLMMHFA(WavLM(config), MHFA(n_layers=13, input_size=64))
