"""Whole decoders built by onnxruntime-genai's model builder, with onnxruntime's outputs as the
reference, for a prompt on an empty KV cache and one step on the cache it made:

  tests/genai/qwen3_decoder/   a tiny random Qwen3 (hidden 64, 2 layers, 4 heads, 2 KV heads,
                               q/k norms), `-p fp32 -e cpu`: GroupQueryAttention with separate
                               Q, K, V (after the norms), rotary caches, SkipSimplifiedLayerNorm
  tests/genai/gptoss_decoder/  a tiny random gpt-oss (4 experts, top-2), likewise: its
                               sliding-window layers keep a ring-buffer cache
                               (sliding_window_cache), which ppmoe refuses by name; no reference

Each decoder folder: model.onnx (+ .data), genai_config.json, and prompt/ and step/ with one .npy
per input and output (named as the graph names them).

    python3 examples/export_genai_decoders.py OUT_DIR GENAI_WHEEL     (OUT_DIR: tests/genai)

The wheel is only unpacked: its builder (models/builder.py) runs as a script; it needs
onnxruntime, as does the reference.
"""
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


def build(name, cfg, tools, out):
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
                        built, "-p", "fp32", "-e", "cpu"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for f in ["model.onnx", "model.onnx.data", "genai_config.json"]:
        if os.path.exists(os.path.join(built, f)):
            shutil.copy(os.path.join(built, f), d)
    return d


def references(d):
    """Onnxruntime's outputs for 16 prompt tokens on an empty cache, then one token on it."""
    s = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    kv = {i.name: i for i in s.get_inputs() if i.name.startswith("past")}
    heads, size = COMMON["num_key_value_heads"], 16
    prompt = {"input_ids": rng.integers(0, 128, (1, 16)).astype(np.int64),
              "attention_mask": np.ones((1, 16), np.int64)}
    prompt.update({n: np.zeros((1, heads, 0, size), np.float32) for n in kv})
    names = [o.name for o in s.get_outputs()]
    first = s.run(None, prompt)
    step = {"input_ids": rng.integers(0, 128, (1, 1)).astype(np.int64),
            "attention_mask": np.ones((1, 17), np.int64)}
    step.update({n.replace("present", "past_key_values"): v for n, v in zip(names, first) if n.startswith("present")})
    second = s.run(None, step)
    for tag, feeds, outs in [("prompt", prompt, first), ("step", step, second)]:
        t = os.path.join(d, tag)
        os.makedirs(t, exist_ok=True)
        for n, v in list(feeds.items()) + list(zip(names, outs)):
            np.save(os.path.join(t, f"{n}.npy"), v)
    print(d, "onnxruntime", ort.__version__, [o.shape for o in second], flush=True)


def main():
    out, wheel = sys.argv[1], sys.argv[2]
    tools = tempfile.mkdtemp()
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tools, [n for n in z.namelist() if n.startswith("onnxruntime_genai/models/")])
    for name, cfg in configs().items():
        d = build(name, cfg, tools, out)
        if name == "qwen3_decoder":
            references(d)
        else:
            print(d, "(no reference: onnxruntime's sliding-window cache needs a 128-slot ring buffer)", flush=True)


if __name__ == "__main__":
    main()
