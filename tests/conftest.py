import os


# The suite's time is XLA compiling one-off programs (gradients of whole serving models,
# optimiser ascents), not running them. Without LLVM optimisation and the CPU fusion emitters
# the whole suite took 618 s instead of 971-1098 s on 2 cores (2026-11-29) and every test
# passed the same. Set before JAX starts its backend; flags the caller set come after these,
# so they win. Subprocesses that set their own XLA_FLAGS (test_sweep) replace them. Unoptimised
# kernels also run slower (elementwise ones 2-3x on this CPU), so the tests that time this
# machine (test_profile) profile it in a subprocess with the caller's own flags, kept in
# DIFFPERF_TESTS_CALLER_XLA_FLAGS.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("DIFFPERF_TESTS_CALLER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = f"{_FAST_COMPILE} {os.environ['DIFFPERF_TESTS_CALLER_XLA_FLAGS']}".strip()

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
