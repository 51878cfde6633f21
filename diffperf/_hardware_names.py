"""Names of the hardware quantities that searches vary, shared by every command.

Pure Python (no JAX), so the command-line parser can use it before the JAX backend starts
(`diffperf sweep` must be able to call ``jax.distributed.initialize()`` after parsing).

- :data:`HARDWARE_PARAMS`: what ``optimize --optimize-hardware`` searches (absolute values).
- :data:`RESOURCE_TO_PARAM`: the ``sensitivity``/``project``/``sweep`` resource names
  (``scale.<resource>`` factors) of the same quantities.

Either spelling is accepted everywhere: :func:`canonical_hardware_param` and
:func:`canonical_resource` translate (dashes read as underscores, case ignored).
"""

HARDWARE_PARAMS = (
    "flops",
    "hbm_bandwidth",
    "hbm_capacity",
    "scaleup_bandwidth",
    "domain_size",
    "nic_bandwidth",
)

RESOURCE_TO_PARAM = {
    "flops": "flops",
    "hbm_bw": "hbm_bandwidth",
    "hbm_capacity": "hbm_capacity",
    "scaleup_bw": "scaleup_bandwidth",
    "scaleout_bw": "nic_bandwidth",
}
_PARAM_TO_RESOURCE = {p: r for r, p in RESOURCE_TO_PARAM.items()}


def _normal(name) -> str:
    return str(name).strip().lower().replace("-", "_")


def canonical_hardware_param(name) -> str:
    """The :data:`HARDWARE_PARAMS` spelling of ``name`` (``hbm_bw`` -> ``hbm_bandwidth``);
    unknown names come back normalised, for the caller's error message."""
    n = _normal(name)
    return RESOURCE_TO_PARAM.get(n, n)


def canonical_resource(name) -> str:
    """The resource spelling of ``name`` (``hbm_bandwidth`` -> ``hbm_bw``); unknown names
    come back normalised, for the caller's error message."""
    n = _normal(name)
    return _PARAM_TO_RESOURCE.get(n, n)
