"""Exports the StableHLO fixtures: a GShard top-2 MoE layer written in JAX (the algorithm of
examples/export_family_fixtures.py's PyTorch GShardTop2: DeepSpeed's top2gating with einsum
dispatch and combine), as StableHLO in generic op form, with JAX's outputs.

  jax_gshard_top2/          the layer under plain jax.jit (one device)
  jax_gshard_top2_a2a/      the same layer under shard_map over 4 devices: tokens split over
                            'x', experts split over 'x', dispatch and return as two
                            all_to_all; the capacity is computed per source shard, as such
                            programs do

  jax_silu_a2a/             the shard_map layer with its experts' activation written as
                            jax.nn.silu, which JAX lowers to a private function the expert work
                            calls

  jax_scan_layers/          two MoE layers (softmax router, jax.lax.top_k, SiLU experts) as
                            jax.lax.scan over their stacked weights: a stablehlo.while

  jax_moe_block/            a Mixtral-like transformer block in JAX (RMSNorm, causal attention
                            with RoPE, top-2 router -> softmax, SwiGLU experts computed densely
                            and combined by the routing weights): the ops a JAX transformer
                            lowers to (rsqrt, top-k, sine/cosine, slices, concatenate, ...)

Each folder: model.mlir (generic form), x.npy (the tokens), the weights as wg.npy, w1.npy,
w2.npy and together as weights.safetensors (named by their argument of @main: arg1, arg2,
arg3, as ppmoe's --weights binds them), out.npy (JAX's output), fixture.json.

Run where JAX is (the GPU machine has it), on the CPU with four host devices:

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python3 examples/export_jax_fixtures.py tests/fixtures
"""

import json
import math
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

S, M, F, E, DEVICES = 64, 64, 128, 4, 4
CAPACITY_FACTOR, MIN_CAPACITY = 0.5, 2


def capacity(tokens):
    return max(math.ceil(tokens / E * CAPACITY_FACTOR * 2), MIN_CAPACITY)


def gating(x, wg):
    """Top-2 gating with capacity: the combine weights [S, E, C] and the dispatch mask."""
    logits = x @ wg
    gates = jax.nn.softmax(logits, axis=1)
    s, e = gates.shape
    cap = capacity(s)
    idx1 = jnp.argmax(gates, axis=1)
    mask1 = jax.nn.one_hot(idx1, e, dtype=jnp.int32)
    logits_except1 = jnp.where(mask1.astype(bool), -jnp.inf, logits)
    idx2 = jnp.argmax(logits_except1, axis=1)
    mask2 = jax.nn.one_hot(idx2, e, dtype=jnp.int32)
    loc1 = jnp.cumsum(mask1, axis=0) - 1
    loc2 = jnp.cumsum(mask2, axis=0) - 1 + jnp.sum(mask1, axis=0, keepdims=True)
    mask1 = mask1 * (loc1 < cap)
    mask2 = mask2 * (loc2 < cap)
    loc1_s = jnp.sum(loc1 * mask1, axis=1)
    loc2_s = jnp.sum(loc2 * mask2, axis=1)
    m1, m2 = mask1.astype(jnp.float32), mask2.astype(jnp.float32)
    g1 = jnp.einsum("se,se->s", gates, m1)
    g2 = jnp.einsum("se,se->s", gates, m2)
    denom = jnp.maximum(g1 + g2, jnp.finfo(jnp.float32).eps)
    g1, g2 = g1 / denom, g2 / denom
    gates1 = jnp.einsum("s,se->se", g1, m1)
    gates2 = jnp.einsum("s,se->se", g2, m2)
    l1 = jax.nn.one_hot(loc1_s, cap, dtype=jnp.float32)
    l2 = jax.nn.one_hot(loc2_s, cap, dtype=jnp.float32)
    combine = jnp.einsum("se,sc->sec", gates1, l1) + jnp.einsum("se,sc->sec", gates2, l2)
    dispatch = (combine != 0).astype(x.dtype)
    return combine, dispatch


def experts(dispatched, w1, w2):
    h = jax.nn.gelu(jnp.einsum("ecm,emf->ecf", dispatched, w1), approximate=False)
    return jnp.einsum("ecf,efm->ecm", h, w2)


def layer(x, wg, w1, w2):
    combine, dispatch = gating(x, wg)
    dispatched = jnp.einsum("sec,sm->ecm", dispatch, x)
    return jnp.einsum("sec,ecm->sm", combine, experts(dispatched, w1, w2))


def layer_a2a(x, wg, w1, w2, experts=experts):
    """One shard's part: its tokens, all router columns, its experts."""
    combine, dispatch = gating(x, wg)
    dispatched = jnp.einsum("sec,sm->ecm", dispatch, x)
    # [E, C, M] -> [E/n, n*C, M]: each device gets its experts' slots from every source shard.
    dispatched = jax.lax.all_to_all(dispatched, "x", split_axis=0, concat_axis=1, tiled=True)
    out = experts(dispatched, w1, w2)
    out = jax.lax.all_to_all(out, "x", split_axis=1, concat_axis=0, tiled=True)
    return jnp.einsum("sec,ecm->sm", combine, out)


def experts_silu(dispatched, w1, w2):
    """The experts written the usual way, with jax.nn.silu: JAX lowers it to a private function
    that the expert work calls (func.call between the two all_to_alls)."""
    h = jax.nn.silu(jnp.einsum("ecm,emf->ecf", dispatched, w1))
    return jnp.einsum("ecf,efm->ecm", h, w2)


def layer_a2a_silu(x, wg, w1, w2):
    return layer_a2a(x, wg, w1, w2, experts=experts_silu)


def scan_layer(x, w):
    """One MoE layer written the usual way: softmax router, jax.lax.top_k, renormalised,
    SiLU experts computed densely and combined by the routing weights, a residual."""
    wg, w1, w2 = w
    vals, idx = jax.lax.top_k(jax.nn.softmax(x @ wg, axis=-1), 2)
    vals = vals / vals.sum(-1, keepdims=True)
    out = jnp.einsum("esf,efm->esm", jax.nn.silu(jnp.einsum("sm,emf->esf", x, w1)), w2)
    mask = jax.nn.one_hot(idx, w1.shape[0]) * vals[..., None]
    return x + jnp.einsum("ske,esm->sm", mask, out)


def scan_model(x, wg, w1, w2):
    """Layers as JAX models stack them: jax.lax.scan over the stacked weights (a
    stablehlo.while whose body slices its layer's weights by the counter)."""
    h, _ = jax.lax.scan(lambda h, w: (scan_layer(h, w), None), x, (wg, w1, w2))
    return h


NH, HD = 4, 16


def rms(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * w


def rope(x):
    s, _, d = x.shape
    half = d // 2
    pos = jnp.arange(s, dtype=jnp.float32)
    freqs = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    ang = pos[:, None] * freqs[None, :]
    cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def moe_block(x, n1, wq, wk, wv, wo, n2, wr, w1, w3, w2):
    s = x.shape[0]
    h = rms(x, n1)
    q, k, v = ((h @ w).reshape(s, NH, HD) for w in (wq, wk, wv))
    q, k = rope(q), rope(k)
    att = jnp.einsum("qhd,khd->hqk", q, k) / math.sqrt(HD)
    causal = jnp.tril(jnp.ones((s, s), dtype=bool))
    att = jax.nn.softmax(jnp.where(causal[None], att, -1e9), axis=-1)
    x = x + jnp.einsum("hqk,khd->qhd", att, v).reshape(s, NH * HD) @ wo
    h = rms(x, n2)
    vals, idx = jax.lax.top_k(h @ wr, 2)
    w = jax.nn.softmax(vals, axis=-1)
    combine = jnp.sum(jax.nn.one_hot(idx, E, dtype=jnp.float32) * w[..., None], axis=1)
    act = jax.nn.silu(jnp.einsum("sm,emf->esf", h, w1)) * jnp.einsum("sm,emf->esf", h, w3)
    y = jnp.einsum("esf,efm->esm", act, w2)
    return x + jnp.einsum("se,esm->sm", combine, y)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def save_block(root, lowered, args, out):
    d = os.path.join(root, "jax_moe_block")
    os.makedirs(d, exist_ok=True)
    text = lowered.compiler_ir("stablehlo").operation.get_asm(print_generic_op_form=True)
    with open(os.path.join(d, "model.mlir"), "w") as f:
        f.write(text)
    arrays = [np.asarray(a) for a in args]
    np.save(os.path.join(d, "x.npy"), arrays[0])
    write_safetensors(os.path.join(d, "weights.safetensors"), {f"arg{i}": a for i, a in enumerate(arrays) if i > 0})
    np.save(os.path.join(d, "out.npy"), np.asarray(out))
    meta = dict(arch="Mixtral-like block (JAX)", exporter=f"jax {jax.__version__}, compiler_ir('stablehlo'), generic op form",
                kind="stablehlo", inputs=["x"], weights="weights.safetensors (arg1 .. arg10)", outputs=["out"])
    with open(os.path.join(d, "fixture.json"), "w") as f:
        json.dump(meta, f, indent=2)
    ops = sorted({l.split('"')[1] for l in text.splitlines() if '= "' in l or l.strip().startswith('"')})
    print(f"jax_moe_block: {len(text)} chars; ops: {' '.join(ops)}")


def save(root, name, lowered, args, out, notes):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    text = lowered.compiler_ir("stablehlo").operation.get_asm(print_generic_op_form=True)
    with open(os.path.join(d, "model.mlir"), "w") as f:
        f.write(text)
    x, wg, w1, w2 = (np.asarray(a) for a in args)
    np.save(os.path.join(d, "x.npy"), x)
    for n, a in (("wg", wg), ("w1", w1), ("w2", w2)):
        np.save(os.path.join(d, f"{n}.npy"), a)
    write_safetensors(os.path.join(d, "weights.safetensors"), {"arg1": wg, "arg2": w1, "arg3": w2})
    np.save(os.path.join(d, "out.npy"), np.asarray(out))
    meta = dict(arch="gshard top-2 (JAX)", exporter=f"jax {jax.__version__}, compiler_ir('stablehlo'), generic op form",
                kind="stablehlo", inputs=["x", "wg", "w1", "w2"], outputs=["out"], tokens=S, hidden=M, ffn=F,
                experts=E, **notes)
    with open(os.path.join(d, "fixture.json"), "w") as f:
        json.dump(meta, f, indent=2)
    ops = sorted({l.split('"')[1] for l in text.splitlines() if '= "' in l or l.strip().startswith('"')})
    print(f"{name}: {len(text)} chars; ops: {' '.join(ops)}")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    key = jax.random.PRNGKey(0)
    kx, kg, k1, k2 = jax.random.split(key, 4)
    x = jax.random.normal(kx, (S, M), jnp.float32)
    wg = jax.random.normal(kg, (M, E), jnp.float32) * 0.3
    w1 = jax.random.normal(k1, (E, M, F), jnp.float32) * 0.1
    w2 = jax.random.normal(k2, (E, F, M), jnp.float32) * 0.1
    args = (x, wg, w1, w2)

    plain = jax.jit(layer)
    save(root, "jax_gshard_top2", plain.lower(*args), args, plain(*args), dict(capacity=capacity(S)))

    mesh = Mesh(np.array(jax.devices()[:DEVICES]), ("x",))
    sharded = jax.jit(jax.shard_map(layer_a2a, mesh=mesh, in_specs=(P("x"), P(), P("x"), P("x")), out_specs=P("x")))
    out = sharded(*args)
    save(root, "jax_gshard_top2_a2a", sharded.lower(*args), args, out,
         dict(devices=DEVICES, capacity_per_shard=capacity(S // DEVICES)))
    silu = jax.jit(jax.shard_map(layer_a2a_silu, mesh=mesh, in_specs=(P("x"), P(), P("x"), P("x")), out_specs=P("x")))
    save(root, "jax_silu_a2a", silu.lower(*args), args, silu(*args),
         dict(devices=DEVICES, capacity_per_shard=capacity(S // DEVICES), activation="jax.nn.silu (a func.call)"))
    kl = jax.random.split(jax.random.PRNGKey(2), 4)
    layers = 2
    scan_args = (jax.random.normal(kl[0], (16, M)), jax.random.normal(kl[1], (layers, M, E)) * 0.3,
                 jax.random.normal(kl[2], (layers, E, M, F)) * 0.1, jax.random.normal(kl[3], (layers, E, F, M)) * 0.1)
    scanned = jax.jit(scan_model)
    save(root, "jax_scan_layers", scanned.lower(*scan_args), scan_args, scanned(*scan_args),
         dict(layers=layers, loop="jax.lax.scan over the stacked layer weights"))
    ks = jax.random.split(jax.random.PRNGKey(1), 12)
    nrm = lambda k, shape, sc: jax.random.normal(k, shape, jnp.float32) * sc
    xb = nrm(ks[0], (16, M), 1.0)
    block_args = (xb, 1.0 + nrm(ks[1], (M,), 0.1), nrm(ks[2], (M, M), 0.1), nrm(ks[3], (M, M), 0.1), nrm(ks[4], (M, M), 0.1),
                  nrm(ks[5], (M, M), 0.1), 1.0 + nrm(ks[6], (M,), 0.1), nrm(ks[7], (M, E), 0.3), nrm(ks[8], (E, M, F), 0.1),
                  nrm(ks[9], (E, M, F), 0.1), nrm(ks[10], (E, F, M), 0.1))
    blk = jax.jit(moe_block)
    save_block(root, blk.lower(*block_args), block_args, blk(*block_args))
    # The sharded program is not the plain one: each shard drops by its own capacity.
    print("max |a2a - plain| =", float(jnp.max(jnp.abs(out - plain(*args)))))


if __name__ == "__main__":
    main()
