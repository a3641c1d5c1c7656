"""MHFA back-end: shapes, parameter count, masking of padded frames."""

import pytest
import torch

from speechbrain_ext.lobes.mhfa import MHFA


def small_mhfa():
    torch.manual_seed(0)
    return MHFA(
        n_layers=4, input_size=12, n_heads=3, compression_size=5, output_size=7
    )


def test_default_sizes_and_parameter_count():
    mhfa = MHFA()
    expected = (
        2 * 13  # layer weights for keys and values
        + 2 * (768 * 128 + 128)  # compression of keys and values
        + (128 * 64 + 64)  # attention head logits
        + (64 * 128 * 256 + 256)  # output projection
    )
    assert sum(p.numel() for p in mhfa.parameters()) == expected
    hidden = torch.randn(13, 2, 20, 768)
    assert mhfa(hidden).shape == (2, 256)


def test_layer_weights_start_uniform():
    mhfa = MHFA(n_layers=5)
    assert torch.equal(mhfa.weights_k, torch.ones(5))
    assert torch.equal(mhfa.weights_v, torch.ones(5))


def test_padded_frames_do_not_change_the_embedding():
    mhfa = small_mhfa().eval()
    hidden = torch.randn(4, 2, 30, 12)
    frames = torch.tensor([30, 20])
    reference = mhfa(hidden, frames)
    garbage = hidden.clone()
    garbage[:, 1, 20:] = 1e3 * torch.randn(4, 10, 12)
    # Masked frames get attention weight exactly 0, so whatever they hold
    # adds exact zeros to the same sums: equal bit for bit.
    assert torch.equal(mhfa(garbage, frames), reference)


def test_a_padded_row_equals_the_utterance_alone():
    # The padded batch and the utterance alone are different matrix shapes,
    # grouped differently by BLAS; in float64 that grouping costs about
    # gamma(n) ~ n * 1.1e-16 for the longest chain here (n < 100), so 1e-12
    # is a bound, and any leak of the padding (order 1e-2) fails it.
    mhfa = small_mhfa().eval().double()
    hidden = torch.randn(4, 2, 30, 12, dtype=torch.float64)
    batched = mhfa(hidden, torch.tensor([30, 20]))
    alone = mhfa(hidden[:, 1:2, :20])
    torch.testing.assert_close(alone, batched[1:2], rtol=0, atol=1e-12)


def test_without_mask_padding_changes_the_embedding():
    mhfa = small_mhfa().eval()
    hidden = torch.randn(4, 1, 30, 12)
    assert not torch.allclose(mhfa(hidden), mhfa(hidden[:, :, :20]))


def test_wrong_number_of_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="expects 4 stacked hidden states"):
        small_mhfa()(torch.randn(3, 1, 10, 12))


def test_gradients_reach_every_parameter():
    mhfa = small_mhfa()
    mhfa(torch.randn(4, 2, 10, 12), torch.tensor([10, 5])).sum().backward()
    for name, param in mhfa.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
