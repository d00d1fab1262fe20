"""Whole decoders built by onnxruntime-genai's model builder, with onnxruntime's outputs as the
reference, for a prompt on an empty KV cache and one step on the cache it made:

  tests/genai/qwen3_decoder/   a tiny random Qwen3 (hidden 64, 2 layers, 4 heads, 2 KV heads,
                               q/k norms), `-p fp32 -e cpu`: GroupQueryAttention with separate
                               Q, K, V (after the norms), rotary caches, SkipSimplifiedLayerNorm
  tests/genai/gptoss_decoder/  a tiny random gpt-oss (4 experts, top-2, attention sinks),
                               likewise: its sliding-window layer keeps a ring-buffer cache
                               of 128 slots (sliding_window_cache)

Each also as genai builds it for a GPU (`-p fp16 -e cuda`: fp16 throughout, Qwen3's q/k norms
fused into GroupQueryAttention) in NAME_cuda_fp16/, its reference the fp32 build's outputs
(onnxruntime's CPU provider cannot run the CUDA build).

Each decoder folder: model.onnx (+ .data), genai_config.json, and prompt/ and step/ with one .npy
per input and output (named as the graph names them).

    python3 examples/export_genai_decoders.py OUT_DIR GENAI_WHEEL     (OUT_DIR: tests/genai)
    python3 examples/export_genai_decoders.py OUT_DIR --references-only  (the references again)

The wheel is only unpacked: its builder (models/builder.py) runs as a script; it needs
onnxruntime, as does the reference.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnxruntime as ort
import torch
import transformers

COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False)


def configs():
    return {
        "qwen3_decoder": transformers.Qwen3Config(intermediate_size=128, head_dim=16, **COMMON),
        "gptoss_decoder": transformers.GptOssConfig(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
                                                    head_dim=16, layer_types=["sliding_attention", "full_attention"],
                                                    sliding_window=128, **COMMON),
    }


def build(name, cfg, tools, out, precision="fp32", ep="cpu"):
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    src = tempfile.mkdtemp()
    model.save_pretrained(src)
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(128)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2",
                                         pad_token="t3").save_pretrained(src)
    built = tempfile.mkdtemp()
    r = subprocess.run([sys.executable, os.path.join(tools, "onnxruntime_genai/models/builder.py"), "-i", src, "-o",
                        built, "-p", precision, "-e", ep], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for f in ["model.onnx", "model.onnx.data", "genai_config.json"]:
        if os.path.exists(os.path.join(built, f)):
            shutil.copy(os.path.join(built, f), d)
    return d


def references(d):
    """Onnxruntime's outputs for 16 prompt tokens on an empty cache, then one token on it. A
    sliding-window layer's cache (gpt-oss's) is a ring buffer of the window's slots, which
    onnxruntime wants whole from the start: its past is that many slots, the valid ones first.
    Onnxruntime leaves a ring buffer's present slots past the valid length unwritten (whatever
    its allocation held); the reference has the past's slots there, as ppmoe passes them on."""
    s = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    kv = {i.name: i for i in s.get_inputs() if i.name.startswith("past")}
    heads, size = COMMON["num_key_value_heads"], 16
    window = json.load(open(os.path.join(d, "genai_config.json")))["model"]["decoder"].get(
        "sliding_window", {}).get("window_size", 0)
    ring = {n for n, i in kv.items() if "past_sliding_length" in [str(x) for x in i.shape]}
    prompt = {"input_ids": rng.integers(0, 128, (1, 16)).astype(np.int64),
              "attention_mask": np.ones((1, 16), np.int64)}
    prompt.update({n: np.zeros((1, heads, window if n in ring else 0, size), np.float32) for n in kv})
    names = [o.name for o in s.get_outputs()]

    def run(feeds, total):
        outs = s.run(None, feeds)
        for i, n in enumerate(names):
            past = n.replace("present", "past_key_values")
            if past in ring:
                outs[i][:, :, total:] = feeds[past][:, :, total:]
        return outs

    first = run(prompt, 16)
    step = {"input_ids": rng.integers(0, 128, (1, 1)).astype(np.int64),
            "attention_mask": np.ones((1, 17), np.int64)}
    step.update({n.replace("present", "past_key_values"): v for n, v in zip(names, first) if n.startswith("present")})
    second = run(step, 17)
    for tag, feeds, outs in [("prompt", prompt, first), ("step", step, second)]:
        t = os.path.join(d, tag)
        os.makedirs(t, exist_ok=True)
        for n, v in list(feeds.items()) + list(zip(names, outs)):
            np.save(os.path.join(t, f"{n}.npy"), v)
    print(d, "onnxruntime", ort.__version__, [o.shape for o in second], flush=True)


def half_references(fp32_dir, d):
    """The CUDA fp16 build's cases: the fp32 build's (the same weights), the cache inputs as
    fp16. Onnxruntime's CPU provider cannot run the CUDA build (its GroupQueryAttention fuses
    Qwen3's q/k norms, which the CPU provider refuses), so the reference is the fp32 build's
    output, which the fp16 model matches within fp16's precision."""
    for tag in ["prompt", "step"]:
        src, dst = os.path.join(fp32_dir, tag), os.path.join(d, tag)
        os.makedirs(dst, exist_ok=True)
        for f in sorted(os.listdir(src)):
            v = np.load(os.path.join(src, f))
            if f.startswith("past_key_values"):
                v = v.astype(np.float16)
            np.save(os.path.join(dst, f), v)
    print(d, "(the fp32 build's references; fp16 cache inputs)", flush=True)


def main():
    out = sys.argv[1]
    if sys.argv[2:] == ["--references-only"]:
        for name in configs():
            references(os.path.join(out, name))
            half_references(os.path.join(out, name), os.path.join(out, name + "_cuda_fp16"))
        return
    wheel = sys.argv[2]
    tools = tempfile.mkdtemp()
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tools, [n for n in z.namelist() if n.startswith("onnxruntime_genai/models/")])
    for name, cfg in configs().items():
        fp32 = build(name, cfg, tools, out)
        references(fp32)
        # What genai builds for a GPU: fp16 weights and activations, CUDA's fused forms.
        half_references(fp32, build(name + "_cuda_fp16", cfg, tools, out, "fp16", "cuda"))


if __name__ == "__main__":
    main()
