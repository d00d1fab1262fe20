"""Small graphs of single contrib ops with onnxruntime's outputs as the reference, for ops that
real exporters emit (onnxruntime-genai's model builder) where no whole model of ours runs yet:

  tests/ops/rms_norms/   com.microsoft.SkipSimplifiedLayerNormalization (x + skip + bias,
                         normalised, and the sum as output 3) feeding SimplifiedLayerNormalization
  tests/ops/gqa_window_sinks/  com.microsoft.GroupQueryAttention with packed QKV, rotary, a local
                         window of 3 over 8 tokens and attention sinks

    python3 examples/export_op_checks.py [OUT_DIR]      (default tests/ops; needs onnxruntime)
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP, helper


def rms_norms(out):
    h = 8
    rng = np.random.default_rng(3)
    vi = lambda n: helper.make_tensor_value_info(n, TP.FLOAT, [2, 3, h])
    init = lambda n, mu: helper.make_tensor(n, TP.FLOAT, [h], rng.normal(mu, 0.1, h).astype(np.float32))
    skip = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "g1", "b"],
                            ["y", "unused_mean", "unused_inv", "sum"], domain="com.microsoft", epsilon=1e-6,
                            name="skip_norm")
    norm = helper.make_node("SimplifiedLayerNormalization", ["sum", "g2"], ["z"], axis=-1, epsilon=1e-5,
                            name="norm")
    g = helper.make_graph([skip, norm], "rms_norms", [vi("x"), vi("skip")], [vi("y"), vi("sum"), vi("z")],
                          [init("g1", 1.0), init("g2", 1.0), init("b", 0.0)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    d = os.path.join(out, "rms_norms")
    os.makedirs(d, exist_ok=True)
    onnx.save(m, os.path.join(d, "model.onnx"))
    feeds = {n: rng.normal(0, 1, (2, 3, h)).astype(np.float32) for n in ["x", "skip"]}
    for n, v in feeds.items():
        np.save(os.path.join(d, f"{n}.npy"), v)
    got = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for n, v in zip(["y", "sum", "z"], got):
        np.save(os.path.join(d, f"{n}.npy"), v)
    print(d, f"onnxruntime {ort.__version__}")


def gqa_window_sinks(out):
    """GroupQueryAttention with packed QKV, rotary caches, a local window of 3 over 8 tokens
    and attention sinks: the parts of the lowering no genai decoder of ours exercises."""
    n, kv, d, s = 4, 2, 16, 8
    w = (n + 2 * kv) * d
    rng = np.random.default_rng(5)
    vi = lambda name, shape: helper.make_tensor_value_info(name, TP.FLOAT, shape)
    pos = np.arange(32)[:, None] * (1.0 / (10000 ** (np.arange(0, d, 2) / d)))[None, :]
    inits = [helper.make_tensor("seqlens_k", TP.INT32, [1], [s - 1]), helper.make_tensor("total", TP.INT32, [], [s]),
             helper.make_tensor("cos", TP.FLOAT, [32, d // 2], np.cos(pos).astype(np.float32).ravel()),
             helper.make_tensor("sin", TP.FLOAT, [32, d // 2], np.sin(pos).astype(np.float32).ravel()),
             helper.make_tensor("sinks", TP.FLOAT, [n], rng.normal(0, 1, n).astype(np.float32))]
    node = helper.make_node("GroupQueryAttention",
                            ["qkv", "", "", "", "", "seqlens_k", "total", "cos", "sin", "", "", "sinks"],
                            ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=n,
                            kv_num_heads=kv, local_window_size=3, do_rotary=1, rotary_interleaved=0, name="gqa")
    g = helper.make_graph([node], "gqa", [vi("qkv", [1, s, w])],
                          [vi("out", [1, s, n * d]), vi("present_key", [1, kv, s, d]),
                           vi("present_value", [1, kv, s, d])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    dd = os.path.join(out, "gqa_window_sinks")
    os.makedirs(dd, exist_ok=True)
    onnx.save(m, os.path.join(dd, "model.onnx"))
    x = rng.normal(0, 1, (1, s, w)).astype(np.float32)
    np.save(os.path.join(dd, "qkv.npy"), x)
    got = ort.InferenceSession(os.path.join(dd, "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"qkv": x})
    for name, v in zip(["out", "present_key", "present_value"], got):
        np.save(os.path.join(dd, f"{name}.npy"), v)
    print(dd, f"onnxruntime {ort.__version__}")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/ops"
    rms_norms(out)
    gqa_window_sinks(out)
