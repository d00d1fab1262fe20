"""Fixtures for the MoE families that the Hugging Face exports do not cover.

  gptoss_genai_moe/   family A: a tiny random gpt-oss built by onnxruntime-genai's model builder
                      (fp32, CPU), cut down to layer 0's router and fused com.microsoft.MoE node
                      (onnx.utils.extract_model), with PyTorch's output of the same HF block.
  gshard_top2/        family D: a DeepSpeed/GShard-style top-2 gating MoE layer (einsum dispatch
                      `sec,sm->ecm`, experts, einsum combine `sec,ecm->sm`, capacity factor 1.0),
                      exported by torch (TorchScript exporter, opset 17), with PyTorch's output.
  gshard_top2_dynamo/ the same layer through the dynamo exporter.

Runs on the GPU machine (torch, transformers, onnx, onnxruntime there; no GPU needed):
  python3 examples/export_family_fixtures.py OUT_DIR GENAI_WHEEL
The genai wheel is only unpacked: its builder is a script (builder.py), run as one.
"""
import json, math, os, shutil, subprocess, sys, tempfile, traceback, zipfile

import numpy as np
import onnx
import torch
import torch.nn.functional as F
import transformers

OUT = sys.argv[1]
WHEEL = sys.argv[2] if len(sys.argv) > 2 else None
H = 64


def safe(name):
    """File names for values: what `ppmoe run` does to output names."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def record(d, model_path, args, ref, meta):
    m = onnx.load(model_path)
    in_names = [i.name for i in m.graph.input]
    out_names = [o.name for o in m.graph.output]
    for name, a in zip(in_names, args):
        np.save(os.path.join(d, f"{safe(name)}.npy"), a)
    np.save(os.path.join(d, f"{safe(out_names[0])}.npy"), ref)
    info = dict(meta, inputs=in_names, outputs=out_names, nodes=len(m.graph.node),
                opset=[(o.domain, o.version) for o in m.opset_import], input_name=safe(in_names[0]),
                torch=torch.__version__, transformers=transformers.__version__,
                ops=sorted({(n.domain + "." if n.domain else "") + n.op_type for n in m.graph.node}))
    try:
        import onnxruntime as ort
        s = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        got = s.run(None, dict(zip(in_names, args)))[0]
        info["onnxruntime_rel_err"] = float(np.linalg.norm(got.reshape(ref.shape) - ref) / np.linalg.norm(ref))
    except Exception as e:
        info["onnxruntime_error"] = str(e)[:400]
    json.dump(info, open(os.path.join(d, "fixture.json"), "w"), indent=1)
    print(d, info.get("onnxruntime_rel_err"), info.get("onnxruntime_error"), flush=True)


def gptoss():
    cfg = transformers.GptOssConfig(vocab_size=128, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
                                    layer_types=["full_attention", "full_attention"], sliding_window=128,
                                    initializer_range=0.1, tie_word_embeddings=False)
    cfg._experts_implementation = "eager"
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    # Random init leaves the expert biases zero: give them values so that the test sees them.
    with torch.no_grad():
        for layer in model.model.layers:
            e = layer.mlp.experts
            e.gate_up_proj_bias.normal_(0, 0.1)
            e.down_proj_bias.normal_(0, 0.1)
            layer.mlp.router.bias.normal_(0, 0.1)
    src = tempfile.mkdtemp()
    model.save_pretrained(src)
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f"t{i}": i for i in range(128)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2", pad_token="t3")
    fast.save_pretrained(src)
    tools = tempfile.mkdtemp()
    with zipfile.ZipFile(WHEEL) as z:
        z.extractall(tools, [n for n in z.namelist() if n.startswith("onnxruntime_genai/models/")])
    built = tempfile.mkdtemp()
    cmd = [sys.executable, os.path.join(tools, "onnxruntime_genai/models/builder.py"), "-i", src, "-o", built,
           "-p", "fp32", "-e", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(r.stdout[-3000:], r.stderr[-5000:], flush=True)
    full = os.path.join(built, "model.onnx")
    m = onnx.load(full, load_external_data=False)
    moe = [n for n in m.graph.node if n.op_type in ("MoE", "QMoE") and "layers.0" in n.name]
    assert moe, [n.op_type for n in m.graph.node][:80]
    moe = moe[0]
    producers = {o: n for n in m.graph.node for o in n.output}
    # The router: MatMul (+ Add bias) producing the MoE's router_probs input.
    r_in = moe.input[1]
    node = producers[r_in]
    while node.op_type != "MatMul":
        node = producers[node.input[0]]
    root = node.input[0]
    d = os.path.join(OUT, "gptoss_genai_moe")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    # onnx.utils.extract_model runs the checker, which does not know the builder's contrib ops
    # of the other layers: cut with the Extractor itself.
    em = onnx.utils.Extractor(onnx.load(full)).extract_model([root], [moe.output[0]])
    onnx.save_model(em, path, save_as_external_data=False)
    g = torch.Generator().manual_seed(7)
    in_vi = em.graph.input[0].type.tensor_type.shape.dim
    rank = len(in_vi)
    x = torch.randn(1, 16, H, generator=g)
    with torch.no_grad():
        out = model.model.layers[0].mlp(x)
        out = out[0] if isinstance(out, tuple) else out
    args = [x.numpy() if rank == 3 else x.reshape(16, H).numpy()]
    ref = out.numpy() if rank == 3 else out.reshape(16, H).numpy()
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in moe.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    record(d, path, args, ref, dict(arch="gptoss", exporter="onnxruntime-genai builder 0.18.0 (fp32, cpu)",
                                      kind="moe_subgraph", moe_attributes=attrs, moe_node=moe.name))


class GShardTop2(torch.nn.Module):
    """DeepSpeed's top2gating (no noise on the second choice) with einsum dispatch and combine."""

    def __init__(self, d_model=H, d_ff=128, experts=4, capacity_factor=1.0, min_capacity=4):
        super().__init__()
        self.wg = torch.nn.Linear(d_model, experts, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(experts, d_model, d_ff) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(experts, d_ff, d_model) * 0.1)
        self.e, self.cf, self.min_capacity = experts, capacity_factor, min_capacity

    def forward(self, x):  # x: [S, M]
        logits = self.wg(x)
        gates = F.softmax(logits, dim=1)
        s, e = gates.shape
        capacity = max(math.ceil(s / e * self.cf * 2), self.min_capacity)
        indices1 = torch.argmax(gates, dim=1)
        mask1 = F.one_hot(indices1, num_classes=e)
        logits_except1 = logits.masked_fill(mask1.bool(), float("-inf"))
        indices2 = torch.argmax(logits_except1, dim=1)
        mask2 = F.one_hot(indices2, num_classes=e)
        locations1 = torch.cumsum(mask1, dim=0) - 1
        locations2 = torch.cumsum(mask2, dim=0) - 1 + torch.sum(mask1, dim=0, keepdim=True)
        mask1 = mask1 * torch.lt(locations1, capacity)
        mask2 = mask2 * torch.lt(locations2, capacity)
        locations1_s = torch.sum(locations1 * mask1, dim=1)
        locations2_s = torch.sum(locations2 * mask2, dim=1)
        mask1_f, mask2_f = mask1.float(), mask2.float()
        gates1_s = torch.einsum("se,se->s", gates, mask1_f)
        gates2_s = torch.einsum("se,se->s", gates, mask2_f)
        denom = torch.clamp(gates1_s + gates2_s, min=torch.finfo(gates.dtype).eps)
        gates1_s, gates2_s = gates1_s / denom, gates2_s / denom
        gates1 = torch.einsum("s,se->se", gates1_s, mask1_f)
        gates2 = torch.einsum("s,se->se", gates2_s, mask2_f)
        loc1 = F.one_hot(locations1_s, num_classes=capacity).float()
        loc2 = F.one_hot(locations2_s, num_classes=capacity).float()
        combine = torch.einsum("se,sc->sec", gates1, loc1) + torch.einsum("se,sc->sec", gates2, loc2)
        dispatch = combine.bool().to(x.dtype)
        dispatched = torch.einsum("sec,sm->ecm", dispatch, x)
        h = F.gelu(torch.einsum("ecm,emf->ecf", dispatched, self.w1))
        expert_out = torch.einsum("ecf,efm->ecm", h, self.w2)
        return torch.einsum("sec,ecm->sm", combine, expert_out)


def gshard():
    torch.manual_seed(99)
    layer = GShardTop2().eval()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, H, generator=g)
    with torch.no_grad():
        ref = layer(x)
    for name, dynamo in (("gshard_top2", False), ("gshard_top2_dynamo", True)):
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "model.onnx")
        kw = dict(dynamo=dynamo)
        if not dynamo:
            kw.update(opset_version=17, input_names=["x"], output_names=["y"])
        torch.onnx.export(layer, (x,), path, **kw)
        m = onnx.load(path)
        onnx.save_model(m, path, save_as_external_data=False)
        for f in os.listdir(d):
            if f.endswith(".data"):
                os.remove(os.path.join(d, f))
        record(d, path, [x.numpy()], ref.numpy(), dict(arch="gshard", exporter="dynamo" if dynamo else "torchscript",
                                                    kind="moe_layer", capacity_factor=1.0, top_k=2))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for job in (gshard, gptoss):
        try:
            job()
        except Exception:
            traceback.print_exc()
