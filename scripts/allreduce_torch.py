"""PyTorch's all-reduce (torch.distributed, NCCL), the reference for `ppmoe bench --all-reduce`:
f32 sum in place at the same sizes, timed with CUDA events after a barrier, the slowest rank's
time per iteration, median of ITERS. Run one process per GPU:

    torchrun --nproc-per-node 2 scripts/allreduce_torch.py 32M,64M,256M [JSON_OUT]
"""
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist


def size(t):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = t.strip()
    return int(t[:-1]) * units[t[-1].upper()] if t[-1].upper() in units else int(t)


def main():
    sizes = [size(t) for t in sys.argv[1].split(",")]
    out = sys.argv[2] if len(sys.argv) > 2 else None
    warmup, iters = 5, 20
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    rows = []
    for b in sizes:
        x = torch.zeros(b // 4, dtype=torch.float32, device="cuda")
        for _ in range(warmup):
            dist.all_reduce(x)
        times = []
        for _ in range(iters):
            dist.barrier()
            torch.cuda.synchronize()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            dist.all_reduce(x)
            e.record()
            e.synchronize()
            t = torch.tensor([s.elapsed_time(e)], device="cuda")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            times.append(t.item())
        ms = statistics.median(times)
        algbw = b / (ms * 1e-3) / 1e9
        busbw = algbw * 2 * (n - 1) / n
        rows.append({"bytes": b, "ranks": n, "median_ms": ms, "algbw_gbs": algbw, "busbw_gbs": busbw})
        if rank == 0:
            print(f"torch all_reduce f32 {b / (1 << 20):.1f} MiB over {n} ranks: {ms:.3f} ms, "
                  f"algbw {algbw:.1f} GB/s, busbw {busbw:.1f} GB/s", flush=True)
    if rank == 0 and out:
        json.dump({"torch": torch.__version__, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
                   "rows": rows}, open(out, "w"), indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
