"""Small graphs of single contrib ops with onnxruntime's outputs as the reference, for ops that
real exporters emit (onnxruntime-genai's model builder) where no whole model of ours runs yet:

  tests/ops/rms_norms/   com.microsoft.SkipSimplifiedLayerNormalization (x + skip + bias,
                         normalised, and the sum as output 3) feeding SimplifiedLayerNormalization

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


if __name__ == "__main__":
    rms_norms(sys.argv[1] if len(sys.argv) > 1 else "tests/ops")
