"""Export real-size MoE models to ONNX, with PyTorch's reference outputs at 16 tokens.

These are the sizes users deploy (gigabytes of weights): they are made on demand into a cache
folder by `scripts/scale-check`, never committed. Each folder holds model.onnx (+ its external
data file), one .npy per input and output (named after the ONNX graph's names), and
fixture.json (what it is, in the committed fixtures' format).

  qwen3_block_fp32/    Qwen3-30B-A3B's MoE block (hidden 2048, 128 experts, top-8, expert FFN
                       768), fp32, dynamic token dimension ([1, tokens, 2048])
  qwen2moe_block_fp32/ Qwen1.5-MoE-A2.7B's MoE block (hidden 2048, 60 experts, top-4, expert
                       FFN 1408, a sigmoid-gated shared expert of FFN 5632), fp32, dynamic token
                       dimension
  mixtral_block_fp32/  Mixtral-8x7B's MoE block (hidden 4096, 8 experts, top-2, FFN 14336),
                       fp32, dynamic token dimension
  mixtral_lm_bf16/     a 2-layer Mixtral-8x7B-shaped causal LM (vocabulary 32000) built in bf16,
                       with the default attention implementation (sdpa), dynamic sequence
  mixtral_lm_bf16_batched/ mixtral_lm_bf16 with a dynamic batch too (pipeline microbatches cut
                       the batch; scripts/lm-gpu)
  mixtral_lm_bf16_sdpa/ the same at hidden 64 (a few hundred KB): committed under
                       tests/fixtures for CI (`... export_scale_models.py tests/fixtures
                       mixtral_lm_bf16_sdpa`)

Export uses the exporter users use (`torch.onnx.export(dynamo=True)`) with the batched_mm
experts (the default grouped_mm form does not export); the references are computed with the
eager experts (batched_mm would gather a [tokens * k, 2F, H] weight tensor: far too large).

Usage: python3 examples/export_scale_models.py CACHE_DIR [NAME ...]
"""
import gc, json, os, sys, time

import numpy as np
import torch
import transformers

# The wrappers the committed fixtures were exported with: an MoE block's hidden states, an
# LM's logits.
from export_fixtures import FirstOutput, Logits

TOKENS = 16


def qwen3_block():
    cfg = transformers.Qwen3MoeConfig(
        vocab_size=128, hidden_size=2048, num_hidden_layers=1, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, intermediate_size=6144,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], max_position_embeddings=4096, tie_word_embeddings=False)
    return cfg, torch.float32, "block"


def qwen2moe_block():
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=128, hidden_size=2048, num_hidden_layers=1, num_attention_heads=16,
        num_key_value_heads=16, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
        intermediate_size=5632, num_experts=60, num_experts_per_tok=4, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=4096,
        tie_word_embeddings=False)
    return cfg, torch.float32, "block"


def mixtral_block():
    cfg = transformers.MixtralConfig(
        vocab_size=128, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=4096, sliding_window=None, tie_word_embeddings=False)
    return cfg, torch.float32, "block"


def mixtral_lm():
    cfg = transformers.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768, sliding_window=None, tie_word_embeddings=False)
    return cfg, torch.bfloat16, "lm"


def mixtral_lm_tiny():
    """The same export as mixtral_lm_bf16 at hidden 64: the committed fixture of CI's tests."""
    cfg = transformers.MixtralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=256, sliding_window=None, tie_word_embeddings=False,
        initializer_range=0.1)
    return cfg, torch.bfloat16, "lm"


def mixtral_lm_batched():
    """mixtral_lm_bf16 with a dynamic batch too, for pipeline microbatches (scripts/lm-gpu)."""
    cfg, dtype, _ = mixtral_lm()
    return cfg, dtype, "lm_batched"


def mixtral_lm_tiny_batched():
    """The same at hidden 64: to try the batched export and its compile quickly."""
    cfg, dtype, _ = mixtral_lm_tiny()
    return cfg, dtype, "lm_batched"


MODELS = {"qwen3_block_fp32": qwen3_block, "qwen2moe_block_fp32": qwen2moe_block, "mixtral_block_fp32": mixtral_block, "mixtral_lm_bf16": mixtral_lm,
          "mixtral_lm_bf16_sdpa": mixtral_lm_tiny, "mixtral_lm_bf16_batched": mixtral_lm_batched,
          "mixtral_lm_bf16_sdpa_batched": mixtral_lm_tiny_batched}


def build(make):
    cfg, dtype, kind = make()
    cfg._experts_implementation = "eager"
    arch = type(cfg).__name__.replace("Config", "").lower()
    torch.manual_seed(1234)
    prev = torch.get_default_dtype()
    # Built directly in the target type: a bf16 LM never exists in fp32 (memory).
    torch.set_default_dtype(dtype)
    try:
        lm = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    finally:
        torch.set_default_dtype(prev)
    if kind == "block":
        module = FirstOutput(lm.model.layers[0].mlp).eval()
        x = torch.randn(1, TOKENS, cfg.hidden_size, generator=torch.Generator().manual_seed(7), dtype=dtype)
        dyn = ({1: torch.export.Dim("tokens", min=2, max=65536)},)
    elif kind == "lm":
        module = Logits(lm).eval()
        x = torch.randint(0, cfg.vocab_size, (1, TOKENS), generator=torch.Generator().manual_seed(7))
        dyn = ({1: torch.export.Dim("sequence", min=2, max=32768)},)
    else:
        # A dynamic batch as well: the example has 2 rows, since torch.export fixes a
        # dimension whose example size is 1.
        module = Logits(lm).eval()
        x = torch.randint(0, cfg.vocab_size, (2, TOKENS), generator=torch.Generator().manual_seed(7))
        dyn = ({0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("sequence", min=2, max=32768)},)
    return lm, module, x, dyn, arch, kind


def export(name, out_dir):
    d = os.path.join(out_dir, name)
    if os.path.exists(os.path.join(d, "fixture.json")):
        print(f"{name}: present in {d}", flush=True)
        return
    os.makedirs(d, exist_ok=True)
    t0 = time.time()
    lm, module, x, dyn, arch, kind = build(MODELS[name])
    with torch.no_grad():
        ref = module(x)
    lm.set_experts_implementation("batched_mm")
    path = os.path.join(d, "model.onnx")
    with torch.no_grad():
        torch.onnx.export(module, (x,), path, dynamo=True, dynamic_shapes=dyn, external_data=True,
                          optimize=True)
    import onnx
    m = onnx.load(path, load_external_data=False)
    in_names = [i.name for i in m.graph.input]
    out_names = [o.name for o in m.graph.output]
    np.save(os.path.join(d, f"{in_names[0]}.npy"), x.float().numpy() if x.is_floating_point() else x.numpy())
    np.save(os.path.join(d, f"{out_names[0]}.npy"), ref.float().numpy())
    # The fields of the committed fixtures' fixture.json, which the tests read.
    info = dict(name=name, arch=arch, experts_implementation="batched_mm", exporter="dynamo",
                attention="sdpa (the default)", kind="moe_subgraph" if kind == "block" else "lm",
                input_name=in_names[0], inputs=in_names, outputs=out_names, nodes=len(m.graph.node),
                opset=[(o.domain, o.version) for o in m.opset_import],
                weight_bytes=sum(p.numel() * p.element_size() for p in module.parameters()),
                dtype=str(next(module.parameters()).dtype), tokens=TOKENS, torch=torch.__version__,
                transformers=transformers.__version__, seconds=round(time.time() - t0, 1),
                ops=sorted({n.op_type for n in m.graph.node}))
    with open(os.path.join(d, "fixture.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"{name}: {info['nodes']} nodes, {info['weight_bytes'] / 2**30:.2f} GiB of weights, "
          f"{info['seconds']} s -> {d}", flush=True)
    del lm, module, m
    gc.collect()


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else ".scale-models"
    names = sys.argv[2:] or list(MODELS)
    for n in names:
        if n not in MODELS:
            sys.exit(f"unknown model '{n}' (known: {', '.join(MODELS)})")
        export(n, out_dir)


if __name__ == "__main__":
    main()
