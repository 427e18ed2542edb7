"""GPU time per call of a fused LoRA-add Triton kernel (shrink + expand + add, one launch) against
``bmm`` + ``baddbmm_`` at the decode shape (16 rows, 1 token, D 2048, rank 16, O 2048 or 512), 64 calls
captured in one CUDA graph and replayed, so host launch time is out and in-graph launch gaps are in.
A record of a rejected experiment (docs/performance.md, "Tried, measured, not kept"), not part of the package:
needs CUDA and Triton.

    python experiments/kernels/fused_lora_in_cuda_graph.py    # JSON to $OUT

The error column of the stored report
(``experiments/reports/2026-11-24_h100_3301430_fused_lora_in_cuda_graph.json``) was computed against a reference taken
before the bmm timing loop had changed ``out``: it is meaningless there; fixed below.
"""
from __future__ import annotations
import json, os
import torch
import triton
import triton.language as tl


@triton.jit
def k2d(x_ptr, a_ptr, b_ptr, out_ptr, T, D, O, R, sxb, sxt, sab, sad, sbb, sbr, sob, sot, scaling,
        R_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_O: tl.constexpr):
    row_token = tl.program_id(0)
    row = row_token // T
    token = row_token % T
    ranks = tl.arange(0, R_PAD)
    rank_ok = ranks < R
    x_row = x_ptr + row * sxb + token * sxt
    a_row = a_ptr + row * sab
    acc = tl.zeros((BLOCK_D, R_PAD), dtype=tl.float32)
    for start in range(0, D, BLOCK_D):
        d = start + tl.arange(0, BLOCK_D)
        d_ok = d < D
        xv = tl.load(x_row + d, mask=d_ok, other=0.0).to(tl.float32)
        av = tl.load(a_row + d[:, None] * sad + ranks[None, :], mask=d_ok[:, None] & rank_ok[None, :], other=0.0)
        acc += xv[:, None] * av.to(tl.float32)
    xa = tl.sum(acc, axis=0)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < O
    bv = tl.load(b_ptr + row * sbb + ranks[:, None] * sbr + o[None, :], mask=rank_ok[:, None] & o_ok[None, :], other=0.0)
    delta = tl.sum(xa[:, None] * bv.to(tl.float32), axis=0) * scaling
    out_at = out_ptr + row * sob + token * sot + o
    cur = tl.load(out_at, mask=o_ok, other=0.0).to(tl.float32)
    tl.store(out_at, (cur + delta).to(out_ptr.dtype.element_ty), mask=o_ok)


def launch(out, x, A, B, s, block_d, block_o, warps, stages):
    rows, T, O = out.shape
    grid = (rows * T, triton.cdiv(O, block_o))
    k2d[grid](x, A, B, out, T, A.shape[1], O, A.shape[2], x.stride(0), x.stride(1), A.stride(0), A.stride(1),
              B.stride(0), B.stride(1), out.stride(0), out.stride(1), s, R_PAD=16, BLOCK_D=block_d, BLOCK_O=block_o,
              num_warps=warps, num_stages=stages)


def graph_us(fn, n=64, reps=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    g.replay(); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record(); torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (reps * n)


torch.manual_seed(0)
dt = torch.bfloat16
res = {}
for O in (2048, 512):
    x = torch.randn(16, 1, 2048, device="cuda", dtype=dt)
    A = torch.randn(16, 2048, 16, device="cuda", dtype=dt) / 45
    B = torch.randn(16, 16, O, device="cuda", dtype=dt) * 0.01
    out = torch.randn(16, 1, O, device="cuda", dtype=dt)
    r = {"bmm_baddbmm": graph_us(lambda: out.baddbmm_(torch.bmm(x, A), B, alpha=2.0))}
    ref = out.double() + 2.0 * (x.double() @ A.double() @ B.double())  # after the loop above changed out
    for block_d in (128, 256, 512):
        for block_o in (64, 128, 256):
            for warps in (4, 8):
                for stages in (2, 3):
                    o2 = out.clone()
                    launch(o2, x, A, B, 2.0, block_d, block_o, warps, stages)
                    err = float((o2.double() - ref).abs().max())
                    r[f"d{block_d}_o{block_o}_w{warps}_s{stages}"] = (round(graph_us(lambda: launch(out, x, A, B, 0.0, block_d, block_o, warps, stages)), 2), round(err, 4))
    r["bmm_baddbmm"] = round(r["bmm_baddbmm"], 2)
    best = sorted(((v[0], k) for k, v in r.items() if isinstance(v, tuple)))[:5]
    res[f"O{O}"] = {"bmm_baddbmm_us": r["bmm_baddbmm"], "best": best, "all": r}
    print(O, r["bmm_baddbmm"], best, flush=True)
if os.environ.get("OUT"):
    open(os.path.join(os.environ["OUT"], "fused_kernel_graph.json"), "w").write(json.dumps(res, indent=1))
