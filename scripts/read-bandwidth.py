# On a GPU machine: how fast PyTorch reads 1.2 GB of bf16 (the size of Qwen3-30B-A3B's expert
# weights per layer) — a sum, a copy (read and write, as the peer script's floor counts it) and
# a matmul with 8 columns — median of 20 with CUDA events: what a weight-bound layer's floor
# can be held against (the peer script's floor takes the copy's rate).
#
#   python3 scripts/read-bandwidth.py
import torch
def t(f, n=20):
    for _ in range(3): f()
    torch.cuda.synchronize(); xs = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); torch.cuda.synchronize(); xs.append(a.elapsed_time(b))
    xs.sort(); return xs[len(xs) // 2]
w = torch.randn(128 * 3 * 768, 2048, device="cuda", dtype=torch.bfloat16)
by = w.numel() * 2
y = torch.empty_like(w)
x = torch.randn(2048, 8, device="cuda", dtype=torch.bfloat16)
for name, f, bytes_ in [("sum", lambda: w.sum(dtype=torch.float32), by), ("copy (read+write)", lambda: y.copy_(w), 2 * by), ("matmul w @ x[2048,8]", lambda: w @ x, by)]:
    ms = t(f); print(f"{name}: {ms:.4f} ms, {bytes_ / ms / 1e9:.3f} TB/s over {by / 1e9:.3f} GB read")
