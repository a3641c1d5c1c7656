"""RDINO's embedding regulariser, pinned to its formulas computed here in
float64 numpy (not through the implementation).

Tolerance: the implementation runs in float32 on [16, 6] embeddings of
unit scale; each covariance entry sums 16 products (relative error ~16 x
6e-8 = 1e-6), the squares double it and the sums over 30 entries add ~30 x
6e-8: a relative tolerance of 1e-5 bounds it with margin.
"""

import numpy as np
import pytest
import torch

from speechbrain_ext.nnet.embedding_regularization import (
    EmbeddingRegularizer,
    diversity_and_redundancy,
    regularization_weight,
)

RTOL = 1e-5


def reference_terms(x, eps=1e-4):
    """RDINO's variance hinge and off-diagonal covariance penalty."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    std = np.sqrt(x.var(axis=0, ddof=1) + eps)
    diversity = np.maximum(0.0, 1.0 - std).mean()
    cov = np.cov(x, rowvar=False)  # divides by N - 1
    redundancy = (cov**2).sum() - (np.diag(cov) ** 2).sum()
    return diversity, redundancy / x.shape[1]


def test_terms_match_the_formulas():
    rng = np.random.default_rng(0)
    # Dimensions of different spreads: some below the hinge, some above,
    # and correlated columns.
    x = rng.normal(size=(16, 6)) * np.array([0.2, 0.5, 0.9, 1.5, 3.0, 0.1])
    x[:, 5] += 0.8 * x[:, 0]
    diversity, redundancy = diversity_and_redundancy(
        torch.tensor(x, dtype=torch.float32)
    )
    want_div, want_red = reference_terms(x)
    assert want_div > 0.1 and want_red > 0.01
    np.testing.assert_allclose(float(diversity), want_div, rtol=RTOL)
    np.testing.assert_allclose(float(redundancy), want_red, rtol=RTOL)


def test_regulariser_averages_global_crops_and_combines_student_and_teacher():
    rng = np.random.default_rng(1)
    batch, dim = 8, 5
    # Crop-major rows: 2 global crops then 1 local crop (left out).
    student = rng.normal(size=(3 * batch, dim)) * 0.7
    teacher = rng.normal(size=(2 * batch, dim)) * 1.3
    regularizer = EmbeddingRegularizer(
        n_global_crops=2, std_coeff=10.0, cov_coeff=1.0
    )
    got = regularizer(
        torch.tensor(student, dtype=torch.float32),
        torch.tensor(teacher, dtype=torch.float32),
    )
    s_div, s_red = reference_terms(
        (student[:batch] + student[batch : 2 * batch]) / 2
    )
    t_div, t_red = reference_terms((teacher[:batch] + teacher[batch:]) / 2)
    want = 10.0 * (s_div + t_div) / 2 + 1.0 * (s_red + t_red)
    np.testing.assert_allclose(float(got), want, rtol=RTOL)


def test_gradients_reach_the_student_and_spread_a_collapsed_embedding():
    torch.manual_seed(0)
    # Nearly one direction (a perfectly symmetric start would stay so).
    collapsed = torch.randn(8, 1) * torch.ones(1, 4) * 0.05
    collapsed = (collapsed + 0.005 * torch.randn(8, 4)).requires_grad_()
    singular = torch.linalg.svdvals(
        collapsed.detach() - collapsed.detach().mean(0)
    )
    assert singular[1] < 0.2 * singular[0]
    teacher = torch.randn(8, 4)
    regularizer = EmbeddingRegularizer(n_global_crops=1)
    before = diversity_and_redundancy(collapsed.detach())
    optimiser = torch.optim.SGD([collapsed], lr=0.5)
    for _ in range(100):
        optimiser.zero_grad()
        regularizer(collapsed, teacher).backward()
        optimiser.step()
    after = diversity_and_redundancy(collapsed.detach())
    assert before[0] > 0.9 and after[0] < 0.1 * before[0]
    singular = torch.linalg.svdvals(
        collapsed.detach() - collapsed.detach().mean(0)
    )
    assert singular[1] > 0.3 * singular[0]  # no longer one direction


def test_weight_schedule_is_rdinos_linspace_then_constant():
    schedule = np.linspace(0.05, 0.2, 10)
    for epoch in range(10):
        assert regularization_weight(epoch + 0.5, 0.2) == pytest.approx(
            schedule[epoch], abs=1e-12
        )
    assert regularization_weight(10, 0.2) == 0.2
    assert regularization_weight(57.3, 0.2) == 0.2
    assert regularization_weight(0, 0.3, warmup_epochs=0) == 0.3


def test_one_utterance_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 utterances"):
        diversity_and_redundancy(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="n_global_crops"):
        EmbeddingRegularizer(n_global_crops=2)(
            torch.zeros(6, 3), torch.zeros(5, 3)
        )
