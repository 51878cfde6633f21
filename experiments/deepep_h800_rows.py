"""Derive tests/data/deepep_h800.csv from the DeepEP README's published H800 figures.

Run: ``python -m experiments.deepep_h800_rows`` (numpy only, ~1 s). Writes the CSV.

Source: deepseek-ai/DeepEP README, "Performance" (H800, ~160 GB/s NVLink, one ConnectX-7
400 Gb/s InfiniBand NIC per GPU, ~50 GB/s). Two tables:

* Normal (high-throughput) kernels, "DeepSeek-V3/R1 pretraining setting": 4096 tokens per
  rank, hidden 7168, top-4 groups, top-8 experts, FP8 dispatch, BF16 combine; the README
  reports only the *bottleneck bandwidth* (intranode EP8: 153 / 158 GB/s NVLink; internode
  EP16/32/64: 43/58/51 GB/s dispatch, 43/57/50 GB/s combine, RDMA).
* Low-latency kernels with pure RDMA, "typical DeepSeek-V3/R1 production setting": 128
  tokens per rank, hidden 7168, top-8 experts, FP8 dispatch, BF16 combine; the README
  reports the latency (EP8..256: dispatch 77/118/155/173/192/194 us, combine
  114/195/273/314/369/360 us). Those are used as is.

HT latency = counted bytes / published bandwidth, with the bytes DeepEP's benchmark
counts (tests/test_internode.py, tests/test_intranode.py of the same repository):

* internode: ``num_rdma_token_sent`` = sum over tokens of the number of distinct *nodes*
  (RDMA ranks) holding one of the token's experts, the rank's own node included; bytes =
  that x hidden x 2 (BF16), x ``(1 + 4/128)/2`` for FP8 (one fp32 scale per 128 values).
  Routing: scores ``|randn| + 1`` iid, group score = max over the node's experts, the
  top ``min(nodes, 4)`` nodes kept, then the top-8 experts among them (256 experts).
* intranode: the tokens each rank *receives* (``recv_x.numel()``, all 8 sources incl.
  itself, one copy per distinct destination rank) x hidden x 2 (x the FP8 factor).

Expected counts are Monte-Carlo means of that routing (fixed seed, 16 x 4096 tokens; the
standard error is < 0.1%).
"""

import csv
from pathlib import Path

import numpy as np


HIDDEN, TOPK, EXPERTS, RANKS_PER_NODE = 7168, 8, 256, 8
FP8_FACTOR = (1 + 4 / 128) / 2
HT_TOKENS, LL_TOKENS = 4096, 128
# (ep, dispatch GB/s, combine GB/s): DeepEP README, normal kernels, H800 + CX7 400 Gb/s
HT = [(8, 153.0, 158.0), (16, 43.0, 43.0), (32, 58.0, 57.0), (64, 51.0, 50.0)]
# (ep, dispatch us, combine us): DeepEP README, low-latency kernels, pure RDMA
LL = [
    (8, 77, 114),
    (16, 118, 195),
    (32, 155, 273),
    (64, 173, 314),
    (128, 192, 369),
    (256, 194, 360),
]

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "deepep_h800.csv"


def _topk_idx(rng, n, scores_groups: int, topk_groups: int):
    """DeepEP test routing: top-8 experts of |randn|+1 scores within the top groups."""
    scores = np.abs(rng.standard_normal((n, EXPERTS))) + 1.0
    if scores_groups > 1 and topk_groups < scores_groups:
        g = scores.reshape(n, scores_groups, -1).max(-1)
        keep = np.argsort(-g, axis=1)[:, :topk_groups]
        mask = np.zeros((n, scores_groups), bool)
        np.put_along_axis(mask, keep, True, axis=1)
        scores = np.where(np.repeat(mask, EXPERTS // scores_groups, axis=1), scores, 0.0)
    return np.argsort(-scores, axis=1)[:, :TOPK]


def distinct(idx, per: int):
    """Mean number of distinct owners (expert // per) per token."""
    own = idx // per
    s = np.sort(own, axis=1)
    return float(np.mean(1 + np.sum(s[:, 1:] != s[:, :-1], axis=1)))


def ht_counted_tokens(ep: int, seed: int = 0, reps: int = 16) -> float:
    """Token copies per rank that DeepEP's benchmark divides by to get its bandwidth."""
    rng = np.random.default_rng(seed)
    nodes = ep // RANKS_PER_NODE
    vals = []
    for _ in range(reps):
        if nodes == 1:
            idx = _topk_idx(rng, HT_TOKENS, 1, 1)
            # rank received = sum over the 8 sources of tokens hitting it = 8 x 4096 x P(hit)
            vals.append(HT_TOKENS * distinct(idx, EXPERTS // ep))
        else:
            idx = _topk_idx(rng, HT_TOKENS, nodes, min(nodes, 4))
            vals.append(HT_TOKENS * distinct(idx, EXPERTS // nodes))
    return float(np.mean(vals))


def rows():
    out = []
    for ep, bw_d, bw_c in HT:
        copies = ht_counted_tokens(ep)
        for op, dtype, bpe, bw in (
            ("moe_dispatch", "fp8", 2 * FP8_FACTOR, bw_d),
            ("moe_combine", "bf16", 2.0, bw_c),
        ):
            nbytes = copies * HIDDEN * bpe
            out.append(
                dict(
                    device="h800",
                    op=op,
                    implementation="deepep_ht",
                    dtype=dtype,
                    ep=ep,
                    hidden=HIDDEN,
                    topk=TOPK,
                    num_experts=EXPERTS,
                    tokens=HT_TOKENS,
                    latency_s=f"{nbytes / (bw * 1e9):.4e}",
                    published_gb_per_s=bw,
                    counted_bytes=f"{nbytes:.5e}",
                )
            )
    for ep, t_d, t_c in LL:
        for op, dtype, t in (("moe_dispatch", "fp8", t_d), ("moe_combine", "bf16", t_c)):
            out.append(
                dict(
                    device="h800",
                    op=op,
                    implementation="deepep_ll",
                    dtype=dtype,
                    ep=ep,
                    hidden=HIDDEN,
                    topk=TOPK,
                    num_experts=EXPERTS,
                    tokens=LL_TOKENS,
                    latency_s=f"{t * 1e-6:.4e}",
                    published_gb_per_s="",
                    counted_bytes="",
                )
            )
    return out


def main():
    rs = rows()
    with open(OUT, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rs[0]))
        w.writeheader()
        w.writerows(rs)
    for r in rs:
        print(r["op"], r["implementation"], r["ep"], r["latency_s"], r["counted_bytes"])


if __name__ == "__main__":
    main()
