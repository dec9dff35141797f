"""Dynamic noise level: psi table, bins, k-NN against brute force, faithful/clean, persistence, batch invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddad_core.config import DDADConfig
from ddad_core.noise_level import NoiseLevelEstimator, embed_block, noise_step_for_bin

# docs/method.md 6.3, the unit-test vector: kappa 0..10 -> T-hat, step size s and first visited timestep.
PSI_TABLE = [20, 20, 20, 20, 30, 40, 50, 60, 60, 70, 80]
STEP_TABLE = [2, 2, 2, 2, 3, 4, 5, 6, 6, 7, 8]
FIRST_T_TABLE = [18, 18, 18, 18, 27, 36, 45, 54, 54, 63, 72]


def test_psi_table():
    got = [noise_step_for_bin(k) for k in range(11)]
    assert got == PSI_TABLE
    assert [t // 10 for t in got] == STEP_TABLE
    assert [t - t // 10 for t in got] == FIRST_T_TABLE
    assert noise_step_for_bin(torch.arange(11)).tolist() == PSI_TABLE


def test_bin_index_right_closed():
    est = NoiseLevelEstimator(DDADConfig())
    est.bin_edges = torch.linspace(0.0, 10.0, 11, dtype=torch.float64)
    y = torch.tensor([-1.0, 0.0, 0.5, 1.0, 1.0001, 9.99, 10.0, 10.5])
    assert est.bin_index(y).tolist() == [0, 0, 1, 1, 2, 10, 10, 10]


def _brute_knn(queries, bank, k, exclude_index=None):
    out = []
    for i, q in enumerate(queries):
        d = np.abs(bank - q).sum(axis=1)
        if exclude_index is not None:
            d = np.delete(d, i)
        out.append(np.sort(d)[:k].mean())
    return np.array(out)


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_fit_matches_brute_force(mode):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(30, 12)).astype(np.float32)
    est = NoiseLevelEstimator(DDADConfig(knn_k=5, knn_mode=mode)).fit(torch.from_numpy(bank))
    expected = _brute_knn(bank, bank, 5, exclude_index=True if mode == "clean" else None)
    np.testing.assert_allclose(est.train_distances.numpy(), expected, rtol=1e-5)
    edges = np.histogram_bin_edges(expected, bins=10)
    np.testing.assert_allclose(est.bin_edges.numpy(), edges, rtol=1e-5)
    if mode == "faithful":
        # The self-match (distance 0) is one of the k: mean = (sum of the 4 nearest others) / 5.
        assert expected[0] == pytest.approx(np.sort(np.abs(bank - bank[0]).sum(1))[1:5].sum() / 5)
    queries = rng.normal(size=(7, 12)).astype(np.float32)
    np.testing.assert_allclose(
        est.distances(torch.from_numpy(queries)).numpy(), _brute_knn(queries, bank, 5), rtol=1e-5
    )


def test_noise_steps_and_batch_invariance():
    cfg = DDADConfig(knn_k=3)
    rng = np.random.default_rng(1)
    est = NoiseLevelEstimator(cfg).fit(torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32)))
    queries = torch.from_numpy(rng.normal(size=(9, 8)).astype(np.float32) * np.linspace(0.5, 4, 9)[:, None])
    batch = est.noise_steps_from_embeddings(queries)
    single = torch.cat([est.noise_steps_from_embeddings(q[None]) for q in queries])
    assert torch.equal(batch, single)
    assert set(batch.tolist()) <= set(PSI_TABLE)
    # Far-away queries get the largest noise level.
    assert est.noise_steps_from_embeddings(queries * 100).tolist() == [80] * 9


def test_forward_pools_block2_and_fixed_mode():
    cfg = DDADConfig(knn_k=2, dic_pool_size=4)
    feats = torch.randn(6, 5, 8, 8)
    emb = embed_block(feats, 4)
    assert emb.shape == (6, 5 * 16)
    assert embed_block(torch.randn(2, 3, 2, 2), 16).shape == (2, 12)  # smaller than the pool: kept as is
    est = NoiseLevelEstimator(cfg).fit(emb)
    assert est(feats).shape == (6,) and est(feats).dtype == torch.long
    fixed = NoiseLevelEstimator(DDADConfig(dynamic_noise=False))
    assert fixed(feats).tolist() == [80] * 6


def test_state_round_trip():
    cfg = DDADConfig(knn_k=4, knn_mode="clean")
    est = NoiseLevelEstimator(cfg).fit(torch.randn(20, 6))
    again = NoiseLevelEstimator.from_tensors(cfg, est.tensors())
    q = torch.randn(5, 6)
    assert torch.equal(est.noise_steps_from_embeddings(q), again.noise_steps_from_embeddings(q))
    with pytest.raises(ValueError):
        NoiseLevelEstimator.from_tensors(DDADConfig(num_bins=5), est.tensors())


def test_small_bank_warns_and_clean_needs_two():
    with pytest.warns(UserWarning, match="k=2"):
        NoiseLevelEstimator(DDADConfig()).fit(torch.randn(2, 3))
    with pytest.raises(ValueError):
        NoiseLevelEstimator(DDADConfig(knn_mode="clean")).fit(torch.randn(1, 3))
    with pytest.raises(RuntimeError):
        NoiseLevelEstimator(DDADConfig()).distances(torch.randn(1, 3))
