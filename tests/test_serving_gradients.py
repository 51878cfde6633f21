"""Every serving scheme: derivatives of every metric w.r.t. every hardware leaf, every relaxed
deployment variable and the workload's continuous leaves, against finite differences.

Directions are relative (each leaf scaled by ``exp(eps * v_i)``) so leaves of different units
and magnitudes move by comparable fractions. Forward mode (``jax.jvp``) is used because it
compiles in seconds where reverse mode takes minutes on 2 CPU cores; both modes differentiate
the same primal program (reverse mode is JAX's transpose of the same linearisation), and the
defects these tests exist for (derivatives of root searches, saturated branches, NaNs) live in
that primal program. Reverse-mode checks run under ``-m slow`` in each scheme's own tests.

Leaves left out of the FD comparison (their derivatives are still checked finite): those read
through the quantisation staircases (GEMM tiles and waves, prefill chunks, heads per device),
whose derivative is a straight-through surrogate by design: the forward value is a staircase,
so a finite difference is 0 inside a step and unbounded across one, and deployments sit on
step edges (tp = 2 puts n = 2048 exactly on a 128-wide tile edge). They are the tile/slot
structure, the parallel degrees, the token budget and the prompt length (and its cached
fraction), the prompts per prefill iteration, and the MoE load imbalance (it scales the tokens
each expert's grouped GEMM gets, ``m_e``, which ``ceil(m_e / tile_m)`` quantises: in the
compute-bound prefill its straight-through slope put d log TTFT of closed-loop AFD at 0.078
against a finite difference of 0.049, stable from eps 1e-3 to 1e-7, while every other leaf
agreed within 5%). The relaxed continuous variables (instances, batch limits, micro-batches,
pool sizes) and every other hardware and workload leaf are compared, to 10%: leaves that move
the decode batch (instances, clients) also pick up the straight-through slope of the tile
ceilings at the solved batch, measured 4-10% off the finite-difference slope; the defects
these tests exist for are orders of magnitude (a root-search derivative of 1e10 against 2).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffperf.deploy import AFD, Aggregated, Disaggregated, Workload
from diffperf.hardware import load_hardware
from diffperf.model import load_model
from diffperf.stages import make_plan


TAU = 0.05
METRICS = (
    "ttft_s",
    "ttft_pct_s",
    "tpot_s",
    "throughput_tok_s_per_device",
    "request_latency_s",
    "memory_margin_frac",
    "decode_batch",
    "utilisation",
    "penalty",
)
# leaves read through quantisation staircases (see module docstring), by field name
_STAIRCASE = frozenset(
    {
        "tile_m_elems",
        "tile_n_elems",
        "num_tile_slots",
        "scaleup_domain_size",
        "tp",
        "pp",
        "dp",
        "ep",
        "moe_tp",
        "attention_tp",
        "ffn_moe_tp",
        "max_num_tokens",
        "isl_tokens",
        "prefix_hit_rate",
        "prefill_max_batch",
        "imbalance",
    }
)


@pytest.fixture(scope="module")
def hw():
    return load_hardware("gb200")


@pytest.fixture(scope="module")
def dense():
    return load_model("llama-3.1-8b")


@pytest.fixture(scope="module")
def moe():
    return load_model("qwen3-30b-a3b")


def _schemes(dense, moe):
    p_dense = make_plan(dense, tp=2)
    p_moe = make_plan(moe, tp=4)
    return {
        "aggregated": (dense, Aggregated(p_dense, 3.0, 96.0, 4096.0)),
        "disaggregated": (dense, Disaggregated(p_dense, p_dense, 2.0, 3.0, 4.0, 96.0)),
        "afd": (
            moe,
            AFD(
                p_moe,
                2.0,
                4.0,
                attention_devices=6.0,
                ffn_devices=4.0,
                microbatches=2.5,
                decode_batch=96.0,
            ),
        ),
    }


def _workload(mode, rate, n):
    return Workload(
        isl_tokens=2000.0,
        osl_tokens=400.0,
        prefix_hit_rate=0.2,
        concurrency=n,
        arrival_rate_per_s=rate,
        load_mode=mode,
    )


def _free_mask(tree):
    """True for leaves whose finite differences are meaningful (module docstring)."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [getattr(p[-1], "name", None) not in _STAIRCASE for p, _ in paths]


def _perturbed_metrics(tree, model, eps, v):
    """Metrics at every float leaf ``x_i -> x_i exp(eps v_i)`` of ``tree = (hw, scheme, w)``."""
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    flat, treedef = jax.tree_util.tree_flatten(params)
    leaves = [x * jnp.exp(eps * v[i]) for i, x in enumerate(flat)]
    h, s, w = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
    m = s.metrics(h, model, w, TAU)
    return jnp.stack([getattr(m, k) for k in METRICS])


@eqx.filter_jit
def _jvp(tree, model, eps, v):
    """(metrics, d metrics / d eps) at ``eps`` along ``v`` (one compile per scheme and mode)."""
    return jax.jvp(lambda e: _perturbed_metrics(tree, model, e, v), (eps,), (jnp.ones(()),))


def _n_leaves(tree) -> int:
    return len(jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array)))


# AFD's forward-mode compile alone takes 1-2 min on 2 idle cores (4-10 min on a loaded one),
# so its cases run with -m slow.
_AFD = pytest.mark.slow
_CASES = [
    ("aggregated", "open"),
    # closed-loop aggregated derivatives are also checked against FD in test_aggregated.py
    pytest.param("aggregated", "closed", marks=pytest.mark.slow),
    ("disaggregated", "open"),
    # closed-loop P/D: the same root solve as the open loop, plus a reverse-mode check in
    # test_disaggregated.py; under -m slow for CI time
    pytest.param("disaggregated", "closed", marks=pytest.mark.slow),
    pytest.param("afd", "open", marks=_AFD),
    pytest.param("afd", "closed", marks=_AFD),
]


@pytest.mark.parametrize(("scheme_name", "mode"), _CASES)
def test_directional_derivatives_match_finite_differences(hw, dense, moe, scheme_name, mode):
    model, scheme = _schemes(dense, moe)[scheme_name]
    # moderate load: inside every regime's smooth interior (not at a saturation kink)
    w = _workload(mode, rate=2.0, n=64.0)
    tree = (hw, scheme, w)
    n = _n_leaves(tree)
    free = np.asarray(_free_mask(eqx.filter(tree, eqx.is_inexact_array)), dtype=float)
    rng = np.random.default_rng(7)
    directions = [rng.normal(size=n) * free for _ in range(2)]
    # plus the workload alone (its leaves come last in the tree)
    only_w = np.zeros(n)
    only_w[-_n_leaves(w) :] = 1.0
    directions.append(only_w * free)
    eps = 1e-6
    for v in directions:
        v = jnp.asarray(v)
        val, d = _jvp(tree, model, jnp.zeros(()), v)
        hi, _ = _jvp(tree, model, jnp.asarray(eps), v)
        lo, _ = _jvp(tree, model, jnp.asarray(-eps), v)
        fd = (np.asarray(hi) - np.asarray(lo)) / (2 * eps)
        assert np.all(np.isfinite(np.asarray(val))) and np.all(np.isfinite(np.asarray(d)))
        scale = np.abs(np.asarray(val)) + 1e-12  # compare relative rates d log(metric)
        np.testing.assert_allclose(
            np.asarray(d) / scale, fd / scale, rtol=0.1, atol=1e-3, err_msg=str(METRICS)
        )


@pytest.mark.parametrize(
    "scheme_name", ["aggregated", "disaggregated", pytest.param("afd", marks=_AFD)]
)
def test_derivatives_finite_when_saturated_or_out_of_memory(hw, dense, moe, scheme_name):
    model, scheme = _schemes(dense, moe)[scheme_name]
    rng = np.random.default_rng(3)
    # far past capacity (open) and 100k clients with huge batches that cannot fit (closed)
    for w, s in (
        (_workload("open", rate=1e5, n=64.0), scheme),
        (_workload("closed", rate=2.0, n=1e5), _bigger_batches(scheme)),
    ):
        tree = (hw, s, w)
        val, d = _jvp(tree, model, jnp.zeros(()), jnp.asarray(rng.normal(size=_n_leaves(tree))))
        assert np.all(np.isfinite(np.asarray(val))), dict(zip(METRICS, np.asarray(val)))
        assert np.all(np.isfinite(np.asarray(d))), dict(zip(METRICS, np.asarray(d)))


def _bigger_batches(scheme):
    for field in ("max_batch", "decode_max_batch", "decode_batch"):
        if hasattr(scheme, field):
            return eqx.tree_at(
                lambda s, f=field: getattr(s, f), scheme, jnp.asarray(65536.0, dtype=float)
            )
    raise AssertionError(type(scheme).__name__)
