"""experiments.power_law_draw_spread: the workload's busiest-rank draws and the measured
load elasticity of the power-law MoE rows."""

import numpy as np

from diffperf.calibrate._predict_moe import sample_busiest_rank_load
from diffperf.ops._moe import busiest_rank_load
from experiments.power_law_draw_spread import measured_elasticities


def test_busiest_load_draws_match_the_expected_load():
    rng = np.random.default_rng(0)
    # one rank holds every expert: its load is the mean, exactly 1 in every draw
    one = sample_busiest_rank_load(1024.0, 8.0, 128.0, 1.0, 1.2, 50, rng)
    np.testing.assert_allclose(one, 1.0, rtol=1e-12)
    # Qwen3-235B-shaped, EP 32 at 1024 tokens: the draws' mean is the expectation that
    # busiest_rank_load computes by quadrature (measured 3.84 vs 3.74, 2.7% apart)
    lam = sample_busiest_rank_load(1024.0, 8.0, 128.0, 32.0, 1.2, 2000, rng)
    assert lam.min() >= 1.0  # the busiest of 32 ranks carries at least the mean
    np.testing.assert_allclose(
        lam.mean(), float(busiest_rank_load(1024, 8, 128, 32, 1.2)), rtol=0.05
    )


def test_measured_elasticity_from_balanced_twin():
    # three power-law rows and their balanced twins; expected loads 4, 4, 2 and the latency
    # ratios 2 (= 4^0.5), 8 (= 4^1.5, clipped to 1) and 0.9 (faster than balanced: 0)
    n_pairs = 3
    cols = {
        "model": np.array(["m"] * (2 * n_pairs)),
        "latency_s": np.array([1.0, 1.0, 1.0, 2.0, 8.0, 0.9]),
    }
    tokens = np.array([64.0, 128.0, 256.0, 64.0, 128.0, 256.0])
    ones = np.ones(2 * n_pairs)
    skew = np.array([0.0, 0.0, 0.0, 1.2, 1.2, 1.2])
    lam = np.array([1.0, 1.0, 1.0, 4.0, 4.0, 2.0])
    args = [tokens, ones, ones, ones, ones, ones, 8.0 * ones, skew, lam]
    eps = measured_elasticities(cols, np.arange(2 * n_pairs), args)
    np.testing.assert_allclose(eps, [0.0, 0.0, 0.0, 0.5, 1.0, 0.0], atol=1e-12)
    # a power-law row without a balanced twin (other ep) gets 0
    args[6] = np.array([8.0, 8.0, 8.0, 16.0, 8.0, 8.0])
    eps = measured_elasticities(cols, np.arange(2 * n_pairs), args)
    np.testing.assert_allclose(eps, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0], atol=1e-12)
