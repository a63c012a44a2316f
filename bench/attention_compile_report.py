"""Compile the attention kernels for Hopper (sm_90a) WITHOUT a GPU and print the compiler's report.

For each kernel and configuration: registers per thread, spill bytes, shared memory, and the number of
Hopper matrix instructions (``wgmma``) and async copies (``cp.async``, i.e. software-pipelined loads)
in the PTX. Uses the ``ptxas`` that ships inside the triton wheel. Arguments get the same 16-divisibility
hints that Triton's JIT gives them at run time when pointers and strides are 16-aligned (true for
contiguous ``[T, H, d]`` tensors with d a multiple of 16).

    python bench/attention_compile_report.py [--head-dim 64] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile


import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from eventrec.ops import attention_triton as at

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _signature(fn, dtype: str, consts: dict) -> tuple[dict, dict]:
    ptr_types = {name: f"*{dtype}" for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    ptr_types.update({"LSE": "*fp32", "DELTA": "*fp32", "BIAS": "*fp32", "DBIAS_OUT": "*fp32", "TS": "*i32",
                      "q_offsets": "*i64", "kv_offsets": "*i64", "work_seq": "*i32", "work_blk": "*i32"})
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def compile_report(fn, dtype: str, consts: dict, num_warps: int, num_stages: int) -> dict:
    sig, attrs = _signature(fn, dtype, consts)
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = kernel.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    res = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                         text=True)
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spill = re.search(r"(\d+) bytes spill stores", res.stderr)
    return {
        "regs": int(regs.group(1)) if regs else -1,
        "spill": int(spill.group(1)) if spill else -1,
        "smem": kernel.metadata.shared,
        "wgmma": ptx.count("wgmma.mma_async"),
        "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--quick", action="store_true", help="default configs only")
    ap.add_argument("--dispatch", action="store_true",
                    help="compile exactly what the dispatch launches for several dtypes, head dims and query "
                         "lengths (checks that everything compiles; reports spills)")
    args = ap.parse_args()
    if args.dispatch:
        dispatch_report()
        return
    d = args.head_dim
    cfg = at.default_config(d)
    d_p2 = max(16, at._next_pow2(d))
    fwd_cfgs = [(cfg.fwd_m, cfg.fwd_n, cfg.fwd_warps, cfg.fwd_stages)]
    dkdv_cfgs = [(cfg.dkdv_m, cfg.dkdv_n, cfg.dkdv_warps, cfg.dkdv_stages)]
    dq_cfgs = [(cfg.dq_m, cfg.dq_n, cfg.dq_warps, cfg.dq_stages)]
    if not args.quick:
        fwd_cfgs += [(128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)]
        dkdv_cfgs += [(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 3), (16, 64, 4, 3)]
        dq_cfgs += [(128, 32, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3)]
    print(f"| kernel | causal | bias | BLOCK_M | BLOCK_N | warps | stages | regs | spill B | smem B | wgmma | cp.async |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for causal in (False, True):
        for bias in (False, True):
            common = dict(HEAD_DIM=d, D_P2=d_p2, CAUSAL=causal, HAS_BIAS=bias, NUM_BUCKETS=32)
            jobs = [("fwd", at._attn_fwd_kernel, c, {}) for c in dict.fromkeys(fwd_cfgs)]
            jobs += [("dkdv", at._attn_bwd_dkdv_kernel, c, {}) for c in dict.fromkeys(dkdv_cfgs)]
            jobs += [("dq", at._attn_bwd_dq_kernel, c, {"DBIAS": bias, "NB_P2": 32}) for c in dict.fromkeys(dq_cfgs)]
            for name, fn, (bm, bn, w, s), extra in jobs:
                r = compile_report(fn, args.dtype, dict(common, BLOCK_M=bm, BLOCK_N=bn, **extra), w, s)
                print(f"| {name} | {causal} | {bias} | {bm} | {bn} | {w} | {s} | {r['regs']} | {r['spill']} | "
                      f"{r['smem']} | {r['wgmma']} | {r['cp_async']} |", flush=True)


def dispatch_report() -> None:
    print("| dtype | d | op | causal | bias | kernel | BLOCK_M | BLOCK_N | warps | stages | regs | spill B | smem B |"
          " wgmma | cp.async |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    cases = [(dt, d) for dt in ("bf16", "fp16") for d in (32, 64, 96, 128)] + [("fp32", 64)]
    for dtype, d in cases:
        d_p2 = max(16, at._next_pow2(d))
        ops = [("self", c, b, None) for c in (False, True) for b in (False, True)]
        ops += [("pool Q=4", False, False, 4), ("pool Q=16384", False, False, 16384)]
        for op, causal, bias, max_q in ops:
            cfg = at.default_config(d, max_q)
            common = dict(HEAD_DIM=d, D_P2=d_p2, CAUSAL=causal, HAS_BIAS=bias, NUM_BUCKETS=32)
            jobs = [("fwd", at._attn_fwd_kernel, (cfg.fwd_m, cfg.fwd_n, cfg.fwd_warps, cfg.fwd_stages), {}),
                    ("dkdv", at._attn_bwd_dkdv_kernel, (cfg.dkdv_m, cfg.dkdv_n, cfg.dkdv_warps, cfg.dkdv_stages), {}),
                    ("dq", at._attn_bwd_dq_kernel, (cfg.dq_m, cfg.dq_n, cfg.dq_warps, cfg.dq_stages),
                     {"DBIAS": bias, "NB_P2": 32})]
            for name, fn, (bm, bn, w, st), extra in jobs:
                try:
                    r = compile_report(fn, dtype, dict(common, BLOCK_M=bm, BLOCK_N=bn, **extra), w, st)
                    cells = f"{r['regs']} | {r['spill']} | {r['smem']} | {r['wgmma']} | {r['cp_async']}"
                except Exception as exc:  # noqa: BLE001
                    cells = f"COMPILE ERROR: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} | | | |"
                print(f"| {dtype} | {d} | {op} | {causal} | {bias} | {name} | {bm} | {bn} | {w} | {st} | {cells} |",
                      flush=True)


if __name__ == "__main__":
    main()
