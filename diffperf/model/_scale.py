"""Scale a model architecture to a parameter count that does not exist yet.

``scale_model(spec, params_target)`` widens and deepens a reference architecture along one
family rule so that "what would serving a 10T-parameter model of this kind need?" is answerable:

- width: ``hidden_size`` and every width that grows with it (attention heads at fixed
  ``head_dim``, dense FFN width, expert width, MLA ranks) by ``a``; GQA keeps its KV-head
  count (Llama-3.1 keeps 8 KV heads from 8B to 405B), so the query groups grow;
- depth: ``num_layers`` (and the dense-prefix and sliding-window layer counts, in proportion)
  by ``a**depth_exponent``;
- experts (MoE): ``num_experts`` by ``a**expert_exponent``, a multiple of 8 (top-k and shared
  experts kept).

With parameters roughly ``L · d²``, the count grows like ``a**(2 + depth_exponent)``.
The default ``depth_exponent = 1.0`` reproduces the dense Llama-3.1 family: scaling
Llama-3.1-8B (d 4096, 32 heads, 32 layers, FFN 14336) to 405B parameters gives d 16384,
128 heads, 124 layers, FFN 54160, against the released 405B's 16384 / 128 / 126 / 53248
(tests/test_project.py). Kaplan et al. (2020, fig. 5) found the loss nearly flat over a wide
range of aspect ratios, so the split stays a modelling choice. ``a`` is found by
bisection on the exact count of the rounded architecture (heads a multiple of 8 and of the
KV heads, layers integer, FFN widths multiples of 128), then the FFN (or expert) width is
solved for exactly and rounded to a multiple of 16, so the result is within
``3 · 16 · d · L · experts`` parameters (< 0.5%) of the target.
"""

import math

import numpy as np

from ._spec import ModelSpec


class ScaleError(ValueError):
    """An impossible scaling request (names the argument and value)."""


def _f(x) -> float:
    return float(np.asarray(x))


def _round_to(x: float, q: float) -> float:
    return max(q, q * round(x / q))


def _scaled(spec: ModelSpec, a: float, depth_exponent: float, expert_exponent: float, name: str):
    heads0 = _f(spec.num_heads)
    kvh = _f(spec.num_kv_heads)
    head_dim = _f(spec.head_dim)
    # heads: a multiple of 8 (tensor parallelism over an 8-GPU node splits them) and, for
    # GQA, of the KV heads (each query group keeps one KV head)
    step = 8.0 if heads0 >= 8 else 1.0
    if spec.attention == "gqa" and kvh < heads0:
        step = float(math.lcm(int(step), int(kvh)))
    heads = _round_to(heads0 * a, step)
    if spec.attention == "gqa" and kvh >= heads0:  # MHA stays MHA
        kvh_new = heads
    else:
        kvh_new = kvh
    d0 = _f(spec.hidden_size)
    hidden = _round_to(d0 * a, 128.0)
    if spec.attention == "gqa" and abs(heads0 * head_dim - d0) < 1e-6:
        hidden = heads * head_dim  # keep d = heads · head_dim where the reference has it
    depth = a**depth_exponent
    layers0 = _f(spec.num_layers)
    layers = max(1.0, float(round(layers0 * depth)))
    dense = min(layers, float(round(_f(spec.num_dense_layers) * depth)))
    if spec.has_moe:
        dense = min(dense, layers - 1.0)
    sliding = min(layers, float(round(_f(spec.num_sliding_layers) * depth)))
    experts0 = _f(spec.num_experts)
    experts = experts0
    if spec.has_moe and expert_exponent > 0:  # a multiple of 8 so expert parallelism splits them
        experts = _round_to(experts0 * a**expert_exponent, 8.0 if experts0 >= 8 else 1.0)
    w = hidden / d0

    def width(x):
        v = _f(x)
        return _round_to(v * w, 128.0) if v > 0 else 0.0

    def rank(x):
        v = _f(x)
        return _round_to(v * w, 64.0) if v > 0 else 0.0

    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    fields.update(
        name=name,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kvh_new,
        num_layers=layers,
        num_dense_layers=dense,
        num_sliding_layers=sliding,
        ffn_intermediate=width(spec.ffn_intermediate),
        moe_intermediate=width(spec.moe_intermediate),
        num_experts=experts,
        q_lora_rank=rank(spec.q_lora_rank),
        kv_lora_rank=rank(spec.kv_lora_rank),
    )
    return ModelSpec(**fields)


def _with(spec: ModelSpec, **changes) -> ModelSpec:
    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    fields.update(changes)
    return ModelSpec(**fields)


def scale_model(
    spec: ModelSpec,
    params_target: float,
    *,
    depth_exponent: float = 1.0,
    expert_exponent: float = 0.0,
    name: str | None = None,
) -> ModelSpec:
    """A plausible architecture of ``spec``'s family with ``params_target`` parameters.

    **Arguments:**
    - ``spec``: the reference architecture (any attention variant, dense or MoE).
    - ``params_target``: total parameters wanted (embeddings included), e.g. ``10e12``.
    - ``depth_exponent``: layers grow like ``a**depth_exponent`` when widths grow by ``a``.
    - ``expert_exponent``: MoE only, experts grow like ``a**expert_exponent``.
    - ``name``: of the result (default ``"<name>-scaled-<N>B"``).

    **Returns:** a `ModelSpec` whose :meth:`~ModelSpec.param_count` is within 0.5% of
    ``params_target`` (module docstring). Raises :class:`ScaleError` for a target below
    what one layer of the family holds or a non-finite/negative argument.
    """
    p = float(params_target)
    if not (math.isfinite(p) and p > 0):
        raise ScaleError(f"params_target = {params_target!r} must be a finite positive number")
    for k, v in (("depth_exponent", depth_exponent), ("expert_exponent", expert_exponent)):
        if not (math.isfinite(v) and 0 <= v <= 3):
            raise ScaleError(f"{k} = {v!r} must be in [0, 3]")
    label = name or (
        f"{spec.name}-scaled-{p / 1e12:.4g}T" if p >= 1e12 else f"{spec.name}-scaled-{p / 1e9:.4g}B"
    )

    def count(a):
        return _f(_scaled(spec, a, depth_exponent, expert_exponent, label).param_count())

    lo, hi = 1e-3, 1e3
    if count(hi) < p:
        raise ScaleError(f"params_target = {p:.3g} is beyond 1000x the width of {spec.name}")
    if count(lo) > p:
        raise ScaleError(
            f"params_target = {p:.3g} is below the smallest {spec.name}-shaped model "
            f"({count(lo):.3g} parameters: embeddings and one layer)"
        )
    for _ in range(80):  # geometric bisection on the rounded architecture's exact count
        mid = math.sqrt(lo * hi)
        if count(mid) < p:
            lo = mid
        else:
            hi = mid
    a = hi if abs(count(hi) - p) < abs(count(lo) - p) else lo
    out = _scaled(spec, a, depth_exponent, expert_exponent, label)
    # solve the FFN (dense models) or expert width (MoE) exactly: the count is affine in it
    field = "moe_intermediate" if spec.has_moe else "ffn_intermediate"
    w0 = _f(getattr(out, field))
    if w0 > 0:
        c0 = _f(out.param_count())
        c1 = _f(_with(out, **{field: w0 + 128.0}).param_count())
        per = (c1 - c0) / 128.0
        if per > 0:
            w = _round_to(w0 + (p - c0) / per, 16.0)
            out = _with(out, **{field: w})
    return out
