#!/usr/bin/env python3
"""Rows per expert under `ppmoe bench --moe`'s random router, and what the warpgroup projections
make of them: the passes of PASS rows (each reads its expert's weight tile once) and the rows
multiplied in m64 blocks (a warpgroup's wgmma), against the rows routed. For the README's
accounting of the persistent projections (see "What limits those two").

    python3 scripts/pass-count.py [TOKENS,...]      (needs numpy)
"""
import sys

import numpy as np

SHAPES = (("mixtral-8x7b", 8, 2), ("qwen3-30b-a3b", 128, 8), ("deepseek-v3-ish(64e)", 64, 8))
PASS, BLOCK, DRAWS = 128, 64, 200


def main() -> None:
    tokens = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "448,512,576,4096").split(",")]
    rng = np.random.default_rng(0)
    print("shape | tokens | passes | passes if one per expert | m64-block rows / rows")
    for name, experts, k in SHAPES:
        for t in tokens:
            passes, padded = [], []
            for _ in range(DRAWS):
                # Random logits: top-k of a softmax is top-k of the logits.
                chosen = np.argsort(-rng.standard_normal((t, experts)), axis=1)[:, :k]
                rows = np.bincount(chosen.ravel(), minlength=experts)
                passes.append(np.ceil(rows / PASS).sum())
                padded.append((np.ceil(rows / BLOCK) * BLOCK).sum() / rows.sum())
            used = min(experts, t * k)
            print(f"{name} | {t} | {np.mean(passes):.1f} | {used} | {np.mean(padded):.3f}")


if __name__ == "__main__":
    main()
