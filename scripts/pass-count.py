#!/usr/bin/env python3
"""Rows per expert under `ppmoe bench --moe`'s random router, and what the warpgroup projections
make of them: the passes of PASS rows (each reads its expert's weight tile once), the rows
multiplied in m64 blocks (a warpgroup's wgmma) against the rows routed, and the operands' bytes
copied into shared memory by both projections (every tile copies its weight rows' and its rows'
chunks over the whole inner dimension): the tiles the projections take (128 rows by 256 weight
rows, the rows' box 128 whatever the pass holds), against 256 rows by 128 weight rows with only
the m64 blocks that hold rows copied (a geometry not built; its best case). For the README's
accounting of the persistent projections (see "What limits those two").

    python3 scripts/pass-count.py [TOKENS,...]      (needs numpy)
"""
import sys

import numpy as np

# name, hidden, ffn, experts, k
SHAPES = (
    ("mixtral-8x7b", 4096, 14336, 8, 2),
    ("qwen3-30b-a3b", 2048, 768, 128, 8),
    ("deepseek-v3-ish(64e)", 7168, 2048, 64, 8),
)
PASS, BLOCK, DRAWS = 128, 64, 200


def copied(rows: np.ndarray, hidden: int, ffn: int, pass_rows: int, tile_n: int, trim: bool) -> float:
    """Bytes (bf16) both projections copy into shared memory for experts of `rows` rows: per
    pass and column tile, the tile's weight rows and the pass's rows (all `pass_rows`, or only
    the m64 blocks holding rows where `trim`), each over the projection's inner dimension."""
    total = 0.0
    for r in rows[rows > 0]:
        for p in range(int(np.ceil(r / pass_rows))):
            held = min(pass_rows, r - p * pass_rows)
            copied_rows = np.ceil(held / BLOCK) * BLOCK if trim else pass_rows
            # First projection (gate and up: 2 ffn weight rows, inner hidden), second (hidden
            # weight rows, inner ffn).
            for out, inner in ((2 * ffn, hidden), (hidden, ffn)):
                tiles = np.ceil(out / tile_n)
                total += tiles * (tile_n + copied_rows) * inner * 2
    return total


def main() -> None:
    tokens = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "448,512,576,4096").split(",")]
    rng = np.random.default_rng(0)
    print("shape | tokens | passes | passes if one per expert | m64-block rows / rows"
          " | GB copied, 128x256 tiles | GB copied, 256x128 tiles (rows trimmed)")
    for name, hidden, ffn, experts, k in SHAPES:
        for t in tokens:
            passes, padded, now, wide = [], [], [], []
            for d in range(DRAWS):
                # Random logits: top-k of a softmax is top-k of the logits.
                chosen = np.argsort(-rng.standard_normal((t, experts)), axis=1)[:, :k]
                rows = np.bincount(chosen.ravel(), minlength=experts)
                passes.append(np.ceil(rows / PASS).sum())
                padded.append((np.ceil(rows / BLOCK) * BLOCK).sum() / rows.sum())
                if d < 20:  # the bytes' mean settles sooner, and costs more to count
                    now.append(copied(rows, hidden, ffn, PASS, 256, False))
                    wide.append(copied(rows, hidden, ffn, 2 * PASS, 128, True))
            used = min(experts, t * k)
            print(f"{name} | {t} | {np.mean(passes):.1f} | {used} | {np.mean(padded):.3f}"
                  f" | {np.mean(now) / 1e9:.2f} | {np.mean(wide) / 1e9:.2f}")


if __name__ == "__main__":
    main()
