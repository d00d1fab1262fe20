"""Export tiny random Hugging Face MoE models to ONNX, with PyTorch's reference outputs.

Runs on a machine with torch, transformers, onnx and onnxruntime (the GPU machine; the GPU is
not needed). For each architecture (Mixtral, Qwen2-MoE, OLMoE) it writes, under OUT:

  <arch>_lm_dynamo/       the whole causal LM, torch.onnx.export(dynamo=True), batched_mm experts
  <arch>_block_dynamo/    the first MoE block alone, dynamo=True, batched_mm experts
  <arch>_block_ts_bmm/    the first MoE block, TorchScript exporter (dynamo=False), batched_mm
  <arch>_block_ts_eager/  the first MoE block, TorchScript exporter, eager per-expert loop

Each folder holds model.onnx, one .npy per input and per output (named after the ONNX graph's
input and output names), and fixture.json describing it. One extra fixture stores the Mixtral
block with its weights in an external data file, to test `*.onnx.data` resolution.

Usage: python3 examples/export_fixtures.py OUT_DIR
"""
import json, os, sys, traceback

import numpy as np
import torch
import transformers

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
TOKENS = 16
HIDDEN = 64


def configs():
    common = dict(vocab_size=128, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1,
                  tie_word_embeddings=False)
    return {
        "mixtral": transformers.MixtralConfig(intermediate_size=128, num_local_experts=4,
                                              num_experts_per_tok=2, sliding_window=None, **common),
        "qwen2moe": transformers.Qwen2MoeConfig(intermediate_size=128, moe_intermediate_size=64,
                                                shared_expert_intermediate_size=128, num_experts=4,
                                                num_experts_per_tok=2, decoder_sparse_step=1,
                                                norm_topk_prob=False, mlp_only_layers=[],
                                                use_sliding_window=False, **common),
        "olmoe": transformers.OlmoeConfig(intermediate_size=128, num_experts=4, num_experts_per_tok=2,
                                          norm_topk_prob=False, **common),
    }


def build(arch, cfg, experts_impl):
    cfg._experts_implementation = experts_impl
    cfg._attn_implementation = "eager"
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    return model


def moe_block(model):
    layer = model.model.layers[0]
    for name, mod in layer.named_children():
        cls = type(mod).__name__.lower()
        if "attention" not in cls and ("moe" in cls or "sparse" in cls):
            return name, mod
    raise RuntimeError(f"no MoE block in {type(layer).__name__}: {[type(m).__name__ for m in layer.children()]}")


class FirstOutput(torch.nn.Module):
    """MoE blocks return (hidden, router_logits) in some versions: keep the hidden states."""
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states):
        out = self.inner(hidden_states)
        return out[0] if isinstance(out, tuple) else out


class Logits(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


def save_fixture(name, module, args, dynamo, meta):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    with torch.no_grad():
        ref = module(*args)
    kw = dict(dynamo=dynamo)
    if not dynamo:
        kw.update(opset_version=17, input_names=[meta["input_name"]], output_names=["output"])
    torch.onnx.export(module, args, path, **kw)
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m)
    in_names = [i.name for i in m.graph.input]
    out_names = [o.name for o in m.graph.output]
    np.save(os.path.join(d, f"{in_names[0]}.npy"), args[0].cpu().numpy())
    np.save(os.path.join(d, f"{out_names[0]}.npy"), ref.cpu().numpy())
    info = dict(meta, inputs=in_names, outputs=out_names, nodes=len(m.graph.node),
                opset=[(o.domain, o.version) for o in m.opset_import],
                torch=torch.__version__, transformers=transformers.__version__,
                ops=sorted({n.op_type for n in m.graph.node}))
    try:
        import onnxruntime as ort
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = s.run(None, {in_names[0]: args[0].cpu().numpy()})[0]
        r = ref.cpu().numpy()
        info["onnxruntime_rel_err"] = float(np.linalg.norm(got - r) / np.linalg.norm(r))
    except Exception as e:  # recorded, not fatal: the reference is PyTorch's
        info["onnxruntime_error"] = str(e)[:500]
    with open(os.path.join(d, "fixture.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(name, "nodes", info["nodes"], "ort", info.get("onnxruntime_rel_err"), flush=True)
    return m


def main():
    os.makedirs(OUT, exist_ok=True)
    report = {}
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, TOKENS, HIDDEN, generator=g)
    ids = torch.randint(0, 128, (1, TOKENS), generator=g)
    for arch, cfg in configs().items():
        jobs = [
            (f"{arch}_lm_dynamo", "batched_mm", True, "lm"),
            (f"{arch}_block_dynamo", "batched_mm", True, "block"),
            (f"{arch}_block_ts_bmm", "batched_mm", False, "block"),
            (f"{arch}_block_ts_eager", "eager", False, "block"),
        ]
        for name, impl, dynamo, what in jobs:
            try:
                model = build(arch, cfg, impl)
                meta = dict(arch=arch, experts_implementation=impl,
                            exporter="dynamo" if dynamo else "torchscript", kind=what)
                if what == "lm":
                    meta["input_name"] = "input_ids"
                    save_fixture(name, Logits(model), (ids,), dynamo, meta)
                else:
                    bname, block = moe_block(model)
                    meta.update(input_name="hidden_states", block=f"model.layers.0.{bname}",
                                block_class=type(block).__name__)
                    m = save_fixture(name, FirstOutput(block), (x,), dynamo, meta)
                    if name == "mixtral_block_dynamo":
                        import onnx, shutil
                        ext = os.path.join(OUT, "mixtral_block_external")
                        os.makedirs(ext, exist_ok=True)
                        onnx.save_model(m, os.path.join(ext, "model.onnx"), save_as_external_data=True,
                                        all_tensors_to_one_file=True, location="model.onnx.data",
                                        size_threshold=0)
                        for f in os.listdir(os.path.join(OUT, name)):
                            if f.endswith(".npy") or f == "fixture.json":
                                shutil.copy(os.path.join(OUT, name, f), ext)
                report[name] = "ok"
            except Exception as e:
                traceback.print_exc()
                report[name] = f"failed: {type(e).__name__}: {str(e)[:300]}"
    with open(os.path.join(OUT, "export_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
