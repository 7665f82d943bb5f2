"""Benchmark of the CKKS engine against TenSEAL's `CKKSVector.mm`, measured in the same run.

    python bench/bench_crypto.py            # full run (~10 min on 2 cores)
    python bench/bench_crypto.py --quick    # one repetition, sampler on 8,192 slots (~3 min)

Prints medians over repetitions: products (576x576, 576x1536, 1536x576) with the ratio to TenSEAL
`mm`, the LM head (576 x 49,152) and mixture embedding (49,152 x 576) cold (encoding) and warm
(cached diagonals), the prefix sum over 49,152 slots with the error of `c - r`, the error of every
sampler stage against the float64 twin, ciphertext and upload sizes, and cached-diagonal memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.engine import Engine  # noqa: E402
from crypto.keys import create_secret_context, load_public_context, public_context_bytes  # noqa: E402
from crypto.keys_wire import RotationPlan
from crypto.matmul import PlainMatrix, matmul  # noqa: E402
from crypto.matmul_plan import plan_matmul  # noqa: E402
from crypto.ops import CkksOps, local_refresh, sampler_rotation_plan  # noqa: E402
from crypto.params import CKKS_40, CKKS_DEFAULT, CKKSParams  # noqa: E402
from crypto.prefix import prefix_sum  # noqa: E402
from crypto.vector import decrypt_vector, encrypt_vector  # noqa: E402
from crypto.vector_wire import vector_nbytes  # noqa: E402
from model.vector_ops import NumpyOps  # noqa: E402

D, MLP, V, LAYERS, KV = 576, 1536, 49_152, 30, 192
G1 = (0.0, 2126 / 1024, 0.0, -1359 / 1024)
F1 = (0.0, 1.5, 0.0, -0.5)
F = (0.0, 0.0, 3.0, -2.0)


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """Median wall time over `reps` calls, and the last result."""
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def sampler_stages(ops: Any, q: Any, r: float) -> dict[str, Any]:
    """The full sampler circuit of DESIGN.md section 2, written once against VectorOps."""
    stages: dict[str, Any] = {}
    x = ops.add_const(ops.prefix_sum(q), -r)
    stages["c - r"] = x
    for _ in range(15):
        x = ops.cubic(ops.ensure_levels(x, 2), G1)
    stages["amp = g1^15"] = x
    for coeffs in (G1, G1, F1, F1, F1):
        x = ops.cubic(ops.ensure_levels(x, 2), coeffs)
    x = ops.mul_const(ops.add_const(ops.ensure_levels(x, 1), 1.0), 0.5)
    stages["H"] = x
    for _ in range(5):
        x = ops.cubic(ops.ensure_levels(x, 2), F)
    stages["s = S(c - r)"] = x
    prev = ops.shift_right(ops.ensure_levels(x, 1))
    x = ops.ensure_levels(x, 1)
    one_hot = ops.mul(ops.add_const(ops.mul_const(prev, -1.0), 1.0), x)
    stages["I"] = one_hot
    stages["I' = f(I)"] = ops.cubic(ops.ensure_levels(one_hot, 2), F)
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repetition, sampler on 8,192 slots")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for medians (default 3)")
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    rng = np.random.default_rng(0)
    p = CKKS_DEFAULT
    S = p.slot_count
    print(f"preset {p.name}: N={p.poly_modulus_degree} chain={p.coeff_mod_bit_sizes} scale=2^{p.scale_bits}")

    shapes = {"576x576": (D, D), "576x1536": (D, MLP), "1536x576": (MLP, D)}
    big = {"LM head 576x49152": (D, V), "mixture 49152x576": (V, D)}
    plans = {k: plan_matmul(m, n, S) for k, (m, n) in {**shapes, **big}.items()}
    rot = sampler_rotation_plan(S)
    for pl in plans.values():
        rot = rot.union(pl.rotation_plan())
    secret = create_secret_context(p)
    t = time.perf_counter()
    upload = public_context_bytes(secret, rot)
    print(
        f"public context (plan: {len(rot.steps)} steps + conj): {len(upload) / 1e6:.1f} MB, "
        f"{time.perf_counter() - t:.2f} s"
    )
    print(
        "public context without Galois keys: "
        f"{len(public_context_bytes(secret, RotationPlan())) / 1e6:.1f} MB"
    )
    eng = Engine.for_worker(load_public_context(upload))

    # --- TenSEAL baseline in the same run ---
    tctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, -1, [60, 40, 40, 60])
    tctx.global_scale = 2.0**40
    tctx.generate_galois_keys()
    full = tctx.copy()
    full.make_context_public()
    print(
        "TenSEAL public context with all Galois keys: "
        f"{len(full.serialize(save_galois_keys=True)) / 1e6:.1f} MB"
    )

    print(
        "\n| product | TenSEAL mm (s) | ours warm (s) | ours cold (s) | ratio (mm / warm) | rotations "
        "| plaintexts | max err |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (m, n) in shapes.items():
        x = rng.uniform(-1, 1, m)
        w = rng.uniform(-1, 1, (m, n)) / np.sqrt(m)
        tv = ts.ckks_vector(tctx, x.tolist())
        t_ts, _ = timed(lambda tv=tv, w=w: tv.mm(w.tolist()), reps)
        mat, pl = PlainMatrix(w), plans[name]
        v = encrypt_vector(secret, x)
        t_cold, _ = timed(lambda v=v, mat=mat, pl=pl: matmul(eng, v, mat, pl, level=1), 1)
        t_warm, y = timed(lambda v=v, mat=mat, pl=pl: matmul(eng, v, mat, pl, level=1), max(reps, 3))
        err = np.abs(decrypt_vector(secret, y) - x @ w).max()
        print(
            f"| {name} | {t_ts:.2f} | {t_warm:.3f} | {t_cold:.3f} | {t_ts / t_warm:.0f}x | {pl.rotations} "
            f"| {pl.plaintexts} | {err:.1e} |"
        )
    print("\n| product | cold (s) | warm (s) | rotations | plaintexts | cached MB | max err |")
    print("|---|---|---|---|---|---|---|")
    for name, (m, n) in big.items():
        x = rng.uniform(0, 1, m) / (m if m == V else 1)
        w = rng.uniform(-1, 1, (m, n)) / np.sqrt(m)
        mat, pl = PlainMatrix(w), plans[name]
        v = encrypt_vector(secret, x)
        t_cold, _ = timed(lambda v=v, mat=mat, pl=pl: matmul(eng, v, mat, pl, level=1), 1)
        t_warm, y = timed(lambda v=v, mat=mat, pl=pl: matmul(eng, v, mat, pl, level=1), reps)
        err = np.abs(decrypt_vector(secret, y) - x @ w).max()
        print(
            f"| {name} | {t_cold:.2f} | {t_warm:.2f} | {pl.rotations} | {pl.plaintexts} "
            f"| {mat.cached_bytes / 1e6:.0f} | {err:.1e} |"
        )
        del mat

    # --- prefix sum over the vocabulary, two scales ---
    z = rng.standard_normal(V) * 3
    q = np.exp(z - z.max())
    q = (q / q.sum()).astype(np.float16).astype(np.float64)
    r = 0.4321
    print("\n| preset | prefix sum 49,152 (s) | max abs err of c - r |")
    print("|---|---|---|")
    for prm in (CKKS_DEFAULT, CKKS_40):
        sec = secret if prm == p else create_secret_context(prm)
        e2 = (
            eng
            if prm == p
            else Engine.for_worker(load_public_context(public_context_bytes(sec, sampler_rotation_plan(S))))
        )
        v = encrypt_vector(sec, q)
        t_pre, c = timed(lambda v=v, e2=e2: prefix_sum(e2, v), reps)
        cr = decrypt_vector(sec, c) - r
        print(
            f"| {prm.name} (2^{prm.scale_bits}) | {t_pre:.3f} | {np.abs(cr - (np.cumsum(q) - r)).max():.1e} |"
        )

    # --- full sampler circuit, error per stage ---
    n_s = 8192 if args.quick else V
    qs = q[:n_s] / q[:n_s].sum()
    ops = CkksOps(eng, local_refresh(secret))
    t = time.perf_counter()
    enc = sampler_stages(ops, encrypt_vector(secret, qs), r)
    t_s = time.perf_counter() - t
    ref = sampler_stages(NumpyOps(), qs, r)
    print(
        f"\nsampler step on {n_s} slots: {t_s:.1f} s, {ops.refreshes} refreshes "
        f"({ops.refreshed_ciphertexts} ciphertexts)"
    )
    print("| stage | max abs err vs float64 twin |")
    print("|---|---|")
    for name, val in enc.items():
        print(f"| {name} | {np.abs(decrypt_vector(secret, val) - ref[name]).max():.1e} |")

    # --- sizes and memory ---
    fresh = encrypt_vector(secret, q[:S])
    used = encrypt_vector(secret, q[:S], level=0)
    print(
        f"\nciphertext bytes: fresh (level {p.depth}) {vector_nbytes(fresh)}, "
        f"used (level 0) {vector_nbytes(used)}"
    )
    print(
        f"vocabulary vector ({V} values, {-(-V // S)} ciphertexts): "
        f"{vector_nbytes(encrypt_vector(secret, q)) / 1e6:.1f} MB fresh"
    )
    print_memory(p)


def print_memory(p: CKKSParams) -> None:
    """Estimated cached-diagonal memory for the default model (plan counts x plaintext size at level 1)."""
    per_pt = p.poly_modulus_degree * 2 * 8  # level 1: two primes
    layer = {"q, o": (D, D, 2), "k, v": (D, KV, 2), "gate, up": (D, MLP, 2), "down": (MLP, D, 1)}
    total_layer = 0
    for name, (m, n, count) in layer.items():
        pts = plan_matmul(m, n, p.slot_count).plaintexts * count
        total_layer += pts
        print(f"  {name}: {pts} plaintexts per layer")
    head = plan_matmul(D, V, p.slot_count).plaintexts
    mix = plan_matmul(V, D, p.slot_count).plaintexts
    gb = (total_layer * LAYERS + head + mix) * per_pt / 1e9
    print(
        f"cached diagonals, whole default model at level 1: {total_layer} plaintexts/layer x {LAYERS} layers "
        f"+ LM head {head} + mixture {mix} = {gb:.1f} GB "
        f"({per_pt / 1e3:.0f} KB each; estimate from plan counts)"
    )


if __name__ == "__main__":
    main()
