"""Measure the local JAX device: GEMMs, attention-like batched matmuls, memory copies.

Each kernel is a jitted JAX function on the default device. It is compiled, run twice to warm
up, then timed ``repeats`` times with ``block_until_ready``; the row's ``latency_s`` is the
minimum (plan key ``statistic = "min"``, the default) or the median of those calls. On a shared
machine other processes only ever add time, and multi-threaded kernels suffer most (one
descheduled thread stalls the others at the join), so the least-disturbed call is the most
reproducible figure; kernels are also measured in a seeded random order so that slow drifts
of the load spread over all shapes. The wall time therefore includes the per-call
dispatch of JAX, which is this device's "launch" overhead and is what ``launch_s`` fits.

Rows use the measured-kernel schema of ``../shared/data/README.md`` (and ``memcpy``):

- ``gemm``: ``A[m,k] @ B[k,n]`` in ``fp32`` and ``bf16`` (on a GPU ``bf16`` and ``fp16``),
  output in the input dtype.
- ``attention_prefill``: causal ``softmax(Q K^T / sqrt(d)) V`` written as einsum + mask +
  softmax (GQA: query heads share KV heads). XLA materialises the full score matrix, unlike a
  fused FlashAttention kernel; the fitted ``prefill_eff_*`` absorbs that.
- ``attention_decode``: one query token per sequence against ``kv_len`` cached tokens.
- ``memcpy``: ``y = x + 1`` over ``bytes`` with the input buffer donated (read and write each
  byte once, no page faults of a fresh output buffer).

A provenance record (device kind, platform, JAX/jaxlib versions, CPU model or GPU driver when
known, host, time) is written next to the CSV as ``<output>.json``.
"""

import csv
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


PROFILE_OPS = ("gemm", "attention_prefill", "attention_decode", "memcpy")

_HEADER = (
    "device",
    "op",
    "dtype",
    "kv_dtype",
    "m",
    "n",
    "k",
    "batch",
    "seq_len",
    "kv_len",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "bytes",
    "latency_s",
)
_JNP = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_provenance() -> dict:
    """Where and with what the profile was measured (JSON-ready)."""
    import jaxlib

    dev = jax.devices()[0]
    info = {
        "platform": dev.platform,
        "device_kind": str(dev.device_kind),
        "num_devices": jax.device_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jaxlib, "__version__", "unknown"),
        "host": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count": _cpu_count(),
        "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if dev.platform == "gpu":
        info["gpu_driver"] = _gpu_driver()
    return info


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_device_name() -> str:
    """``cpu`` on a CPU; the device kind as a slug on an accelerator."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in str(dev.device_kind).lower())
    return "-".join(p for p in slug.split("-") if p)


def time_kernel(
    fn, args, repeats: int, budget_s: float = 0.5, donate: bool = False, statistic: str = "min"
) -> float:
    """Seconds of ``fn(*args)`` over timed calls after compile + two warm-up calls: the
    ``statistic`` (``min`` or ``median``) of the timed calls.

    ``donate``: ``fn`` donates its single argument; its output is fed back as the next input.
    At most ``repeats`` calls, fewer when one call is long (about ``budget_s`` in all, at
    least 3).
    """

    def call(a):
        out = fn(*a)
        jax.block_until_ready(out)
        return (out,) if donate else a

    args = call(args)  # compile
    args = call(args)
    t = time.perf_counter()
    args = call(args)
    one = time.perf_counter() - t
    n = int(max(3, min(repeats, budget_s / max(one, 1e-9))))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        args = call(args)
        times.append(time.perf_counter() - t)
    if statistic == "median":
        return statistics.median(times)
    return min(times)


def _gemm_fn():
    # HIGHEST: an fp32 row is a true fp32 GEMM, as the model's fp32 peak assumes. XLA's default
    # precision runs fp32 operands on a GPU's tf32 tensor cores (7x the fp32 rate on H100);
    # 16-bit operands and CPU GEMMs are the same at either precision.
    return jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))


def _prefill_fn(h: int, hkv: int):
    def f(q, k, v):
        b, s, _, d = q.shape
        qg = q.reshape(b, s, hkv, h // hkv, d)
        sc = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k) * (1.0 / np.sqrt(d))
        mask = jnp.tril(jnp.ones((s, s), dtype=bool))
        sc = jnp.where(mask, sc, jnp.asarray(-1e30, sc.dtype))
        p = jax.nn.softmax(sc.astype(jnp.float32), axis=-1).astype(q.dtype)
        o = jnp.einsum("bhgqk,bkhd->bqhgd", p, v)
        return o.reshape(b, s, h, d)

    return jax.jit(f)


def _decode_fn(h: int, hkv: int):
    def f(q, k, v):
        b, _, d = q.shape
        qg = q.reshape(b, hkv, h // hkv, d)
        sc = jnp.einsum("bhgd,bkhd->bhgk", qg, k) * (1.0 / np.sqrt(d))
        p = jax.nn.softmax(sc.astype(jnp.float32), axis=-1).astype(q.dtype)
        return jnp.einsum("bhgk,bkhd->bhgd", p, v).reshape(b, h, d)

    return jax.jit(f)


def _memcpy_fn():
    return jax.jit(lambda x: x + jnp.asarray(1, x.dtype), donate_argnums=0)


# The shape hold-out check of a CPU profile (tests/test_profile.py, benchmarks/bench_calibrate.py
# --live-holdout): fp32 GEMMs large enough to time on a shared 2-core machine (>= ~50 us) and
# at most 3e8 FLOP (~3 ms), since larger ones switch to multi-threaded kernels that a loaded
# machine slows by 3x or more at random; six (n, k) shape groups, so that a hold-out split by
# shape group leaves shapes the fit never saw.
CPU_HOLDOUT_PLAN = {
    "gemm_dtypes": ("fp32",),
    "gemm_nk": ((512, 1024), (1024, 1024), (1024, 512), (2048, 512), (512, 2048), (1024, 2048)),
    "gemm_m": (1, 8, 16, 64, 128, 256),
    "gemm_max_flop": 3e8,
    "attn_dtypes": ("fp32",),
    "prefill": (),
    "prefill_seq": (),
    "decode": (),
    "decode_kv": (),
    "memcpy_bytes": tuple(1 << p for p in range(20, 27, 2)),
    "repeats": 5,
    "budget_s": 0.04,
    "passes": 2,
}


def profile_plan(quick: bool, platform_name: str) -> dict:
    """Shapes and dtypes to measure (``quick``: the reduced set, ≤ 60 s on 2 CPU cores)."""
    gpu = platform_name != "cpu"
    if quick:
        # CPU: kernels of at most ~3e8 FLOP (~3 ms), which XLA runs without the thread pool
        # handoffs that a loaded machine slows at random (see module docstring)
        plan = {
            "gemm_dtypes": ("fp32",) if not gpu else ("bf16",),
            "gemm_nk": (
                (512, 1024),
                (1024, 1024),
                (1024, 512),
                (2048, 512),
                (512, 2048),
                (1024, 2048),
            ),
            "gemm_m": (1, 8, 32, 128, 256),
            "gemm_max_flop": 3e8 if not gpu else 1e12,
            "attn_dtypes": ("fp32",) if not gpu else ("bf16",),
            "prefill": ((1, 8, 8, 64), (2, 8, 2, 64)),  # batch, heads, kv heads, head_dim
            "prefill_seq": (64, 128, 256),
            "decode": ((8, 8, 8, 64), (16, 8, 2, 64)),
            "decode_kv": (512, 2048, 4096),
            "memcpy_bytes": tuple(1 << p for p in range(18, 27, 2)),
            "repeats": 7,
            "budget_s": 0.1,
            # CPU: every kernel twice, in two shuffled orders, keeping its best (a one-pass
            # idle profile had m=8 GEMMs 2-3x off their neighbours at random)
            "passes": 2 if not gpu else 1,
        }
    else:
        plan = {
            "gemm_dtypes": ("fp32", "bf16") if not gpu else ("bf16", "fp16", "fp32"),
            "gemm_nk": (
                (512, 512),
                (1024, 1024),
                (2048, 1024),
                (1024, 2048),
                (2048, 2048),
                (4096, 1024),
                (1024, 4096),
                (4096, 4096),
            ),
            "gemm_m": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
            "gemm_max_flop": 4e9 if not gpu else 1e13,
            "attn_dtypes": ("fp32",) if not gpu else ("bf16",),
            "prefill": ((1, 8, 8, 64), (2, 8, 2, 64), (1, 16, 4, 128), (4, 4, 4, 64)),
            "prefill_seq": (64, 128, 256, 512, 1024),
            "decode": ((1, 8, 8, 64), (8, 8, 8, 64), (16, 8, 2, 64), (32, 16, 4, 128)),
            "decode_kv": (256, 1024, 4096, 16384),
            "memcpy_bytes": tuple(1 << p for p in range(14, 29)),
            "repeats": 15,
            "budget_s": 0.5,
        }
    if gpu and not quick:
        plan["gemm_nk"] = plan["gemm_nk"] + ((8192, 8192), (16384, 4096))
        plan["gemm_m"] = plan["gemm_m"] + (4096, 8192, 16384)
        plan["prefill_seq"] = plan["prefill_seq"] + (2048, 4096, 8192)
        plan["decode_kv"] = plan["decode_kv"] + (65536,)
        plan["memcpy_bytes"] = plan["memcpy_bytes"] + tuple(1 << p for p in range(29, 33))
    return plan


def _tasks(device: str, plan: dict, ops, repeats: int | None, key):
    """``[(row, thunk)]``: the row's columns and a function that times it (seconds)."""
    reps = repeats or plan["repeats"]
    budget = plan["budget_s"]
    stat = plan.get("statistic", "min")
    tasks = []
    if "memcpy" in ops:
        f = _memcpy_fn()
        for nb in plan["memcpy_bytes"]:

            def run(nb=nb, f=f):
                x = jnp.ones(nb // 4, jnp.float32)
                return time_kernel(f, (x,), reps, budget, donate=True, statistic=stat)

            tasks.append(({"op": "memcpy", "dtype": "fp32", "bytes": nb}, run))
    if "gemm" in ops:
        f = _gemm_fn()
        for dt in plan["gemm_dtypes"]:
            for n, k in plan["gemm_nk"]:
                for m in plan["gemm_m"]:
                    if 2.0 * m * n * k > plan["gemm_max_flop"]:
                        continue

                    def run(m=m, n=n, k=k, dt=dt, f=f):
                        a = jax.random.normal(key, (m, k), _JNP[dt])
                        b = jax.random.normal(key, (k, n), _JNP[dt])
                        return time_kernel(f, (a, b), reps, budget, statistic=stat)

                    tasks.append(({"op": "gemm", "dtype": dt, "m": m, "n": n, "k": k}, run))
    for op, shapes, lens, make in (
        ("attention_prefill", "prefill", "prefill_seq", _prefill_fn),
        ("attention_decode", "decode", "decode_kv", _decode_fn),
    ):
        if op not in ops:
            continue
        for dt in plan["attn_dtypes"]:
            for bsz, h, hkv, d in plan[shapes]:
                f = make(h, hkv)
                for L in plan[lens]:

                    def run(f=f, bsz=bsz, h=h, hkv=hkv, d=d, L=L, dt=dt, op=op):
                        qshape = (bsz, L, h, d) if op == "attention_prefill" else (bsz, h, d)
                        q = jax.random.normal(key, qshape, _JNP[dt])
                        kv = jax.random.normal(key, (bsz, L, hkv, d), _JNP[dt])
                        return time_kernel(f, (q, kv, kv), reps, budget, statistic=stat)

                    length = {"seq_len": L} if op == "attention_prefill" else {"kv_len": L}
                    row = {
                        "op": op,
                        "dtype": dt,
                        "kv_dtype": dt,
                        "batch": bsz,
                        **length,
                        "num_heads": h,
                        "num_kv_heads": hkv,
                        "head_dim": d,
                    }
                    tasks.append((row, run))
    return [({"device": device, **row}, run) for row, run in tasks]


def profile_device(
    output: str | Path,
    quick: bool = False,
    repeats: int | None = None,
    ops=PROFILE_OPS,
    device_name: str | None = None,
    plan: dict | None = None,
    shuffle_seed: int | None = 0,
    max_seconds: float | None = None,
) -> dict:
    """Measure the default JAX device and write ``output`` (CSV) and ``output.json``.

    **Arguments:** ``output`` path; ``quick`` the reduced plan; ``repeats`` timed calls per
    kernel (default from the plan); ``ops`` a subset of ``PROFILE_OPS``; ``device_name`` the
    ``device`` column (default :func:`default_device_name`); ``plan`` overrides
    :func:`profile_plan` (tests use small plans); ``shuffle_seed`` measures the kernels in
    a seeded random order (``None``: plan order), so that slow drifts of a shared machine's
    load spread over all shapes instead of biasing the ones measured last; ``max_seconds``
    stops measuring new kernels once that much time has passed (the first kernel is always
    measured) and writes the rows measured so far: with the shuffled order, a random subset
    of the plan. The provenance records how many of the planned kernels were measured.

    **Returns:** ``{"rows": int, "provenance": dict}``.
    """
    prov = device_provenance()
    plan = plan or profile_plan(quick, prov["platform"])
    device = device_name or default_device_name()
    key = jax.random.PRNGKey(0)
    tasks = _tasks(device, plan, ops, repeats, key)
    # ``passes`` > 1 measures everything again in another order and keeps each kernel's best
    # pass (a burst of load on a shared machine then spoils one pass, not the row)
    lat = np.full(len(tasks), np.inf)
    t_start = time.perf_counter()
    stopped = False
    for p in range(int(plan.get("passes", 1))):
        order = np.arange(len(tasks))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed + p).permutation(len(tasks))
        for i in order:
            lat[i] = min(lat[i], tasks[i][1]())
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                stopped = True
                break
        if stopped:
            break
    rows = [{**row, "latency_s": float(t)} for (row, _), t in zip(tasks, lat) if np.isfinite(t)]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_HEADER)
        for r in rows:
            w.writerow([f"{r[c]:.6g}" if c == "latency_s" else r.get(c, "") for c in _HEADER])
    prov = {
        **prov,
        "device": device,
        "quick": quick,
        "ops": list(ops),
        "kernels_planned": len(tasks),
        "kernels_measured": len(rows),
        "stopped_at_max_seconds": max_seconds if stopped else None,
        "plan": plan,
    }
    Path(str(output) + ".json").write_text(json.dumps(prov, indent=2, default=list) + "\n")
    return {"rows": len(rows), "provenance": {k: v for k, v in prov.items() if k != "plan"}}
