"""The Hugging Face model in PyTorch beside `ppmoe bench` of the same LM: the 2-layer
Mixtral-8x7B-shaped causal LM of examples/export_scale_models.py (mixtral_lm_bf16), in bf16, with
the grouped_mm experts and sdpa attention (transformers' defaults on a GPU), one forward of
BATCH x SEQ tokens timed with CUDA events after warm-up; prints the median and writes JSON.

    python3 scripts/hf_lm_bench.py BATCH SEQ [JSON_OUT]
"""
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import export_scale_models as esm  # noqa: E402
import transformers  # noqa: E402


def main():
    batch, seq = int(sys.argv[1]), int(sys.argv[2])
    out = sys.argv[3] if len(sys.argv) > 3 else None
    # The LM as the exporter builds it (bf16 throughout), then on the GPU with the experts
    # transformers uses there.
    lm = esm.build(esm.mixtral_lm)[0]
    lm.set_experts_implementation("grouped_mm")
    lm = lm.to("cuda")
    cfg = lm.config
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")
    times = []
    with torch.no_grad():
        for i in range(13):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            lm(input_ids=ids, use_cache=False)
            e.record()
            e.synchronize()
            if i >= 3:
                times.append(s.elapsed_time(e))
    ms = statistics.median(times)
    row = {"case": "hf mixtral_lm_bf16 (grouped_mm, sdpa)", "batch": batch, "seq": seq,
           "attention": lm.config._attn_implementation, "median_ms": ms,
           "tokens_per_s": batch * seq / (ms * 1e-3), "torch": torch.__version__,
           "transformers": transformers.__version__}
    print(f"{row['case']}, {batch} x {seq} tokens: {ms:.3f} ms, {row['tokens_per_s']:.0f} tokens/s "
          f"(attention {row['attention']})", flush=True)
    if out:
        json.dump(row, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
