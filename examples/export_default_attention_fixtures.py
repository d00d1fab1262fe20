"""Fixtures of whole LMs exported with the default attention (sdpa: what `from_pretrained`
gives, and what users export), for every MoE architecture of transformers 5.17 whose LM
exports through torch.onnx's dynamo exporter with batched_mm experts, plus the Qwen3-MoE and
DeepSeek-V3 blocks (Qwen3-MoE's and GraniteMoE's in the dynamo, TorchScript bmm and TorchScript
eager forms), and Qwen3-MoE's LM in bf16 and in fp16.
Tiny random configs (hidden 64, 2 layers, 4 experts, 16 tokens), fp32, PyTorch's reference
output beside each (export_fixtures.py's layout and fixture.json).

  python3 examples/export_default_attention_fixtures.py [OUT_DIR]      (default tests/fixtures)

`moe_layers` in fixture.json is the number of MoE layers ppmoe raises: two per LM (PhiMoE's
sparsemixer routing too, since session 27).
DeepSeek-V3's LM does not export (torch.export fails in its attention), so its first MoE block
stands for it. gpt-oss's block (its `mlp`) returns its routing scores beside its output: both are
graph outputs, with both references.
"""
import os
import sys

import torch
import transformers as T

sys.path.insert(0, os.path.dirname(__file__))
import export_fixtures as ef  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
ef.OUT = OUT
COMMON = dict(vocab_size=128, hidden_size=ef.HIDDEN, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1,
              tie_word_embeddings=False)


def configs():
    base = ef.configs()
    return {
        "mixtral": (base["mixtral"], 2),
        "qwen2moe": (base["qwen2moe"], 2),
        "olmoe": (base["olmoe"], 2),
        "qwen3moe": (T.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=64, num_experts=4,
                                      num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=True,
                                      mlp_only_layers=[], head_dim=16, **COMMON), 2),
        "granitemoe": (T.GraniteMoeConfig(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
                                          **COMMON), 2),
        "gptoss": (T.GptOssConfig(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                                  layer_types=["full_attention", "full_attention"], sliding_window=128,
                                  **COMMON), 2),
        "phimoe": (T.PhimoeConfig(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, **COMMON), 2),
    }


def deepseek_block(x):
    """DeepSeek-V3's first MoE block (its LM does not export): 8 routed experts in 2 groups,
    the best group kept, top-2, sigmoid scores with a score-correction bias (set to random
    values here: the model's own starts at zero, which would test nothing), renormalised,
    times a routed scaling factor of 2.5, and one shared expert."""
    cfg = T.DeepseekV3Config(intermediate_size=128, moe_intermediate_size=32, n_routed_experts=8,
                             num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1,
                             first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=None,
                             qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                             routed_scaling_factor=2.5, **COMMON)
    cfg._experts_implementation = "batched_mm"
    torch.manual_seed(1234)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    name, block = ef.moe_block(model)
    with torch.no_grad():
        block.gate.e_score_correction_bias.copy_(torch.randn(8, generator=torch.Generator().manual_seed(5)) * 0.1)
    meta = dict(arch="deepseekv3", experts_implementation="batched_mm", exporter="dynamo", kind="block",
                input_name="hidden_states", block=f"model.layers.0.{name}", moe_layers=1)
    ef.save_fixture("deepseekv3_block_dynamo", ef.FirstOutput(block), (x,), True, meta)


def gptoss_block(model, x):
    """gpt-oss's first MoE block (its `mlp`), which returns its routing scores beside its output,
    as the model keeps them: the raise must leave that value to the graph. Both outputs'
    references are saved."""
    import json
    import numpy as np
    import onnx
    mlp = model.model.layers[0].mlp
    d = os.path.join(OUT, "gptoss_block_dynamo")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    with torch.no_grad():
        refs = mlp(x)
    torch.onnx.export(mlp, (x,), path, dynamo=True)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    ins, outs = [i.name for i in m.graph.input], [o.name for o in m.graph.output]
    np.save(os.path.join(d, f"{ins[0]}.npy"), x.numpy())
    for name, r in zip(outs, refs):
        np.save(os.path.join(d, f"{name}.npy"), r.numpy())
    info = dict(arch="gptoss", experts_implementation="batched_mm", exporter="dynamo", kind="block",
                input_name=ins[0], block="model.layers.0.mlp (returns (output, router_scores))",
                moe_layers=1, inputs=ins, outputs=outs, nodes=len(m.graph.node),
                opset=[(o.domain, o.version) for o in m.opset_import], torch=torch.__version__,
                transformers=T.__version__, ops=sorted({n.op_type for n in m.graph.node}))
    json.dump(info, open(os.path.join(d, "fixture.json"), "w"), indent=1)
    print("gptoss_block_dynamo nodes", info["nodes"], flush=True)


class HalfLogits(torch.nn.Module):
    """A half-precision LM's logits as float32 (the reference's file type)."""
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits.float()


def half_lms(ids):
    """Qwen3-MoE's LM built and exported in bf16 and in fp16 (`.to(dtype)`: weights and
    arithmetic in that type), the usual form of real checkpoints."""
    for dtype, tag in [(torch.bfloat16, "bf16"), (torch.float16, "fp16")]:
        cfg, layers = configs()["qwen3moe"]
        cfg._experts_implementation = "batched_mm"
        torch.manual_seed(1234)
        model = T.AutoModelForCausalLM.from_config(cfg).eval().to(dtype)
        meta = dict(arch="qwen3moe", experts_implementation="batched_mm", exporter="dynamo", kind="lm",
                    input_name="input_ids", attention="sdpa (the default)", dtype=str(dtype),
                    moe_layers=layers)
        ef.save_fixture(f"qwen3moe_lm_{tag}_sdpa", HalfLogits(model), (ids,), True, meta)


def block_of(model):
    """The first decoder layer's MoE block: by its class (`...SparseMoeBlock`, `...MoE`), not
    just a name with "moe" in it (GraniteMoE's norms are `GraniteMoeRMSNorm`)."""
    layer = model.model.layers[0]
    for name, mod in layer.named_children():
        cls = type(mod).__name__
        if "Sparse" in cls or cls.endswith("MoE") or cls.endswith("Moe"):
            return name, mod
    return ef.moe_block(model)


def block_forms(x):
    """Qwen3-MoE's and GraniteMoE's first MoE block in the three exporter forms of the older
    fixtures: dynamo and TorchScript with batched_mm experts, TorchScript with the eager
    per-expert loop."""
    for arch in ["qwen3moe", "granitemoe"]:
        for impl, dynamo, tag in [("batched_mm", True, "block_dynamo"), ("batched_mm", False, "block_ts_bmm"),
                                  ("eager", False, "block_ts_eager")]:
            cfg, _ = configs()[arch]
            cfg._experts_implementation = impl
            torch.manual_seed(1234)
            model = T.AutoModelForCausalLM.from_config(cfg).eval()
            name, block = block_of(model)
            meta = dict(arch=arch, experts_implementation=impl, exporter="dynamo" if dynamo else "torchscript",
                        kind="block", input_name="hidden_states", block=f"model.layers.0.{name}", moe_layers=1)
            ef.save_fixture(f"{arch}_{tag}", ef.FirstOutput(block), (x,), dynamo, meta)


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, ef.TOKENS, ef.HIDDEN, generator=g)
    ids = torch.randint(0, 128, (1, ef.TOKENS), generator=g)
    for arch, (cfg, layers) in configs().items():
        cfg._experts_implementation = "batched_mm"
        torch.manual_seed(1234)
        # The default attention: from_config picks sdpa as from_pretrained does.
        model = T.AutoModelForCausalLM.from_config(cfg).eval()
        attention = model.config._attn_implementation
        meta = dict(arch=arch, experts_implementation="batched_mm", exporter="dynamo", kind="lm",
                    input_name="input_ids", attention=f"{attention} (the default)", moe_layers=layers)
        ef.save_fixture(f"{arch}_lm_sdpa", ef.Logits(model), (ids,), True, meta)
        if arch == "deepseekv3":
            continue
        if arch == "gptoss":
            gptoss_block(model, x)
    block_forms(x)
    deepseek_block(x)
    half_lms(ids)


if __name__ == "__main__":
    main()
