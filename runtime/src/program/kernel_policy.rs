//! What the compiler and the runtime must agree on about the experts' GPU kernels: their
//! names, block shapes and shared memory, and the policies (measured on an H200) that pick a
//! step's form by its sizes: which projections, whether routed on the device, whether rows are
//! sorted, whether one token takes two kernels. The compiler generates what these say; the
//! runtime launches it so.

/// Whether an experts step's gather, activation and combine kernels, over bf16 rows `width`
/// columns wide (H for the gather and combine, the FFN width for the activation), take the
/// columns in pairs, one thread per two columns, each two bf16 values one 4-byte word: the rows
/// are bf16 and the width even. The compiler generates those kernels so, and the runtime launches them with
/// that many threads.
pub fn bf16_pairs(bf16_rows: bool, width: usize) -> bool {
    bf16_rows && width.is_multiple_of(2)
}

/// Whether an experts step's combine over bf16 rows `width` (H) columns wide takes them eight
/// a thread (each slot's eight one 16-byte load, the eight sums two 16-byte stores): the rows
/// are bf16 and H a multiple of eight. Otherwise it takes pairs where `bf16_pairs` says.
pub fn bf16_octets(bf16_rows: bool, width: usize) -> bool {
    bf16_rows && width.is_multiple_of(8)
}

/// The suffix of an experts step's second gather (`{prefix}_gather8`), made where the rows are
/// bf16 and H a multiple of eight (`bf16_octets`): rows of x's bf16 copy, eight columns a
/// thread. The runtime takes it where it has x's copy; the step's `{prefix}_gather` reads x.
pub const GATHER_BF16_SUFFIX: &str = "gather8";

/// The suffix of an experts step's combine that writes y as bf16 bits (`{prefix}_combine_bits`,
/// each sum rounded to nearest even, as narrowing the f32 y would round it), made where the
/// rows are bf16, H a multiple of eight (`bf16_octets`) and y bf16 in the model and no result
/// of it. The runtime takes it where every reader of y takes bf16 bits and y reaches no result
/// (`Program::rounded_for_every_reader`), so y is never held as f32 and narrowed after.
pub const COMBINE_BITS_SUFFIX: &str = "combine_bits";

/// The suffix of the token embedding's second kernel (`{name}_bits`), made where the table and
/// the result are bf16 in the model and the result is not the program's: the table's rows
/// copied as their bits. The runtime takes it where every reader of the result takes bf16 bits
/// (`Program::rounded_for_every_reader`), and then holds the table as bits only.
pub const EMBEDDING_BITS_SUFFIX: &str = "bits";

/// The columns a thread of an experts step's combine (over rows `width` = H columns wide) or
/// activation (over rows of `width` = F activations) takes: eight (`bf16_octets`), two
/// (`bf16_pairs`) or one. The compiler generates those kernels so, and the runtime launches
/// them with that many threads fewer.
pub fn row_columns(bf16_rows: bool, width: usize) -> usize {
    if bf16_octets(bf16_rows, width) {
        8
    } else if bf16_pairs(bf16_rows, width) {
        2
    } else {
        1
    }
}

/// The device-routed step's slot listing (`dgroup` in the compiler): 256 threads a block, each
/// thread reading `LIST_SLOTS_PER_THREAD` slots at once (their loads in flight together: one
/// at a time, a block's walk over 32768 slots took about 0.04 ms on an H200). One block per
/// local expert lists its slots; `list_blocks` more write each slot's row and expert.
pub const LIST_THREADS: usize = 256;
pub const LIST_SLOTS_PER_THREAD: usize = 16;

/// The blocks of the slot listing over `slots` slots and `experts` local experts.
pub fn list_blocks(slots: usize, experts: usize) -> usize {
    experts + slots.div_ceil(LIST_THREADS * LIST_SLOTS_PER_THREAD).max(1)
}

/// The warps of a block of the device-routed expert projections (`decode_experts` in the
/// compiler): each warp computes a few output columns, its lanes splitting the inner
/// dimension.
pub const DECODE_WARPS: usize = 8;

/// The tile of the device-routed expert projections for `tokens` tokens: an expert's rows are
/// taken `rows` at a time (a token picks an expert at most once, so no expert has more rows
/// than tokens), each warp computing `warp_columns` output columns. The compiler bakes it
/// into the kernels; the runtime sizes their grids by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeTile {
    pub rows: usize,
    pub warp_columns: usize,
}

impl DecodeTile {
    pub fn for_tokens(tokens: usize) -> DecodeTile {
        let rows = tokens.clamp(1, 8);
        DecodeTile {
            rows,
            warp_columns: if rows <= 4 { 4 } else { 2 },
        }
    }

    /// The output columns of one block.
    pub fn block_columns(self) -> usize {
        DECODE_WARPS * self.warp_columns
    }
}

/// The warps of a block of the device-routed tensor-core projections (the compiler's
/// `tensor_core_projection`), and the output columns a block computes (16 per warp).
pub const TC_WARPS: usize = 4;
pub const TC_BLOCK_COLUMNS: usize = 64;
/// The activation columns a block of the fused first projection (`tproj_act`) computes: 8
/// gate columns per warp, paired with their up columns.
pub const TC_ACT_BLOCK_COLUMNS: usize = 32;

/// The threads of a block of the device-routed warpgroup projections (the compiler's
/// `warpgroup_projection`: two warpgroups), and the output columns a block computes (the
/// wgmma's n = 256 weight rows; fused, 128 gate rows and their up rows give 128 activations).
pub const WG_THREADS: usize = 256;
pub const WG_BLOCK_COLUMNS: usize = 256;
pub const WG_ACT_BLOCK_COLUMNS: usize = 128;
/// The dynamic shared memory a block of them takes: four stages of 48 KiB, and 1 KiB to align
/// the first to 1024 bytes (the 128-byte swizzle's period); the H200 allows a block 227 KiB.
pub const WG_SHARED_BYTES: usize = 4 * 49152 + 1024;
/// The suffixes of the tensor-core projection kernels: the first projection with the
/// activation as its epilogue, the first without, the second (mma.sync, and warpgroups, whose
/// dynamic shared memory is allowed at load).
pub const TC_KERNELS: [&str; 3] = ["tproj_act", "tproj_in", "tproj_out"];
pub const WG_KERNELS: [&str; 3] = ["wproj_act", "wproj_in", "wproj_out"];
/// The warp-specialised form of the warpgroup projections (the compiler's
/// `PPMOE_TENSOR_PROJECTIONS=wgmma-per-tile`; `=wgmma-cp-async` the form whose threads all
/// copy): the same blocks' columns and stages, producer
/// warps that feed the stages (the weights through a tensor map), and the stages' mbarriers
/// (9 of 8 bytes) after them.
pub const SP_KERNELS: [&str; 3] = ["sproj_act", "sproj_in", "sproj_out"];
pub const SP_THREADS: usize = producer_threads(PRODUCER_WARPS);
/// The warps that feed a warp-specialised projection's stages by default: the first issues the
/// weights' tensor copies, and each gathers a share of the listed rows (the compiler's
/// `PPMOE_PRODUCER_WARPS`, 1, 2 or 4, at compile time). The runtime launches the block each
/// kernel states (its `.maxntid`), so a bundle built either way runs.
pub const PRODUCER_WARPS: usize = 1;
/// The threads of a warp-specialised projection's block with `warps` producer warps.
pub const fn producer_threads(warps: usize) -> usize {
    WG_THREADS + 32 * warps
}
/// After the barriers (128 bytes), each consumer warp's 16 rows of 64 output columns (bf16,
/// rows 144 bytes apart), through which the results go out as whole 128-byte rows.
pub const EPILOGUE_STAGING_BYTES: usize = 8 * 16 * 144;
pub const SP_SHARED_BYTES: usize = WG_SHARED_BYTES + 128 + EPILOGUE_STAGING_BYTES;
/// Their persistent form (the policy's, up to `PP_MAX_EXPERTS` local experts): a block
/// per SM, each walking the tiles of every local expert (up to `PP_MAX_EXPERTS`), whose
/// prefix sums it keeps after the barriers (4 bytes each, and the total), and with sorted
/// rows (`SORTED_ROWS_KERNEL`) those of the experts' rows after them.
pub const PP_KERNELS: [&str; 3] = ["pproj_act", "pproj_in", "pproj_out"];
pub const PP_MAX_EXPERTS: usize = 1024;
pub const PP_SHARED_BYTES: usize = SP_SHARED_BYTES + 8 * (PP_MAX_EXPERTS + 1);
/// The rows of a persistent projection's tile (a box of its sorted rows' tensor map).
pub const PP_TILE_ROWS: usize = 128;
/// The kernel (suffix) that writes an experts step's rows sorted by expert for the persistent
/// projections (the compiler's `sorted_rows`): expert e's listed rows, in its list's order,
/// from its running row sum; a block of `SORT_THREADS` per (local expert, one of a few).
pub const SORTED_ROWS_KERNEL: &str = "psort";
pub const SORT_THREADS: usize = 256;

/// Whether a step's persistent projections (fused) read their rows sorted by expert, by the
/// experts' `ffn` columns: the sort writes and reads the rows once, and saves on every pass of
/// the first projection's column tiles (ffn / 128) over them, so it pays on wide experts only.
/// Measured on an H200 (session 37, docs/bench-h200-s37.txt, the same run): Mixtral-8x7B's
/// layer (ffn 14336) at 4096 tokens, profiled, 4.797 ms against 4.965 (the first projection
/// 2.982 against 3.126, the sort 0.054), at 512 tokens 0.981 against 1.021; Qwen3-30B-A3B's
/// (ffn 768) at 4096 tokens 0.811 against 0.806, at 16384 2.723 against 2.588; again in session
/// 49 (docs/bench-h200-s49.txt call 2), Qwen3 at 4096 0.760 / 0.767 against 0.738 / 0.734, at
/// 16384 2.449 / 2.438 against 2.254 / 2.256, and the DeepSeek-like layer (ffn 2048) at 4096
/// 6.265 / 6.458 against 5.829 / 5.927. The compiler's `PPMOE_SORTED_ROWS` (0 or 1) overrides it.
pub fn sorts_rows(ffn: usize) -> bool {
    ffn >= 8192
}
/// The persistent form's ping-pong geometry (`pingpong_tiles`: a 64-row tile per warpgroup,
/// so one's epilogue runs under the other's wgmmas): its kernels, its
/// stages (of 64 rows' and 256 weight rows' 64 inner elements, 40 KiB each) and its shared
/// memory (the stages, the alignment, the barriers, the epilogue's staging, the tile sums).
pub const QP_KERNELS: [&str; 3] = ["qproj_act", "qproj_in", "qproj_out"];
pub const PINGPONG_STAGES: usize = 5;
pub const QP_SHARED_BYTES: usize = PINGPONG_STAGES * (64 + 256) * 128
    + 1024
    + 128
    + EPILOGUE_STAGING_BYTES
    + 4 * (PP_MAX_EXPERTS + 1);

/// The most rows per expert (on average) at which the persistent projections take the
/// ping-pong geometry (`pingpong_tiles`).
pub const PINGPONG_MAX_ROWS: usize = 32;

/// Whether a step's persistent projections, `slots` slots over `experts` experts, take the
/// ping-pong geometry (64-row tiles, one per warpgroup, in five stages) rather than the
/// cooperative one (128-row tiles both warpgroups multiply): up to `PINGPONG_MAX_ROWS` rows per
/// expert, where a tile is mostly padding and the weights' reads bound the step, so the
/// epilogue hidden under the other warpgroup's wgmmas pays. Measured on an H200 (the same runs,
/// ms; `docs/bench-h200-s41.txt`, `docs/bench-h200-s42.txt`): Qwen3-30B-A3B's layer at 64
/// tokens (4 rows) 0.322 against 0.340 (0.319 against 0.341 as the policy, session 42), at 256
/// (16) 0.327 against 0.350 (0.330 against 0.351), at 512 (32) 0.337 against 0.352;
/// Mixtral-8x7B's at 64 tokens (16 rows) 0.713 against 0.723 (the cooperative kernels with
/// sorted rows). Level or slower past it: Qwen3's 1024 tokens (64 rows) 0.376 against 0.370,
/// the DeepSeek-like layer's 512 (64) 1.487 against 1.477, Mixtral's 512 (128) 0.983 against
/// 0.982; at 4096 and 16384 tokens (256 and 1024 rows, session 35) 0.907 against 0.817 and
/// 3.150 against 2.577. The compiler's `PPMOE_PPROJ` (`pingpong` or `cooperative`) overrides
/// it.
pub fn pingpong_tiles(slots: usize, experts: usize) -> bool {
    slots.div_ceil(experts.max(1)) <= PINGPONG_MAX_ROWS
}

/// Whether a device-routed tensor-core step of `slots` slots over `experts` experts, whose
/// first matrices are `matrix_bytes` each, takes the warpgroup projections (wgmma, 128 rows a
/// pass) rather than the mma.sync ones (64 rows a pass, m16 granularity). On small matrices
/// (16 MiB or less) from 2 rows per expert on average: measured on an H200 (session 32,
/// Qwen3-30B-A3B's layer, the persistent form against mma.sync in the same call) 0.346
/// against 0.363 ms at 32 tokens (2 rows each), 0.375 against 0.407 at 64, 0.373 against 0.421
/// at 128, 0.377 against 0.444 at 256, and level at 1 row (16 tokens: 0.259 against 0.266).
/// On larger matrices more than 4 rows: at 16 (Mixtral-8x7B's layer at 64 tokens) the
/// persistent form took 0.838 ms (session 35, docs/bench-h200-s35.txt) where mma.sync took
/// 1.02 (session 28); at 2 rows (8 tokens) mma.sync 0.654 (session 33); 5 to 15 rows are not
/// measured. PPMoE's `local` step at tp > 1 on small matrices more than 32 (not measured
/// there; it is grouped on the device past 32), on large ones as one rank's.
pub fn projects_on_warpgroups(
    slots: usize,
    experts: usize,
    matrix_bytes: usize,
    local: bool,
) -> bool {
    let rows = slots.div_ceil(experts.max(1));
    rows > match (local, matrix_bytes <= SMALL_MATRIX) {
        (true, true) => 32,
        (false, true) => 1,
        (_, false) => 4,
    }
}

/// The largest first matrix (bytes) an expert step's policies count as small (the tensor-core
/// routing, the warpgroup boundary, and the device grouping, `groups_on_device`):
/// Qwen3-30B-A3B's (6 MiB in bf16, 12 MiB in fp32) are, Mixtral-8x7B's (112 MiB in bf16) and
/// the DeepSeek-like layer's (56 MiB in bf16) are not.
pub const SMALL_MATRIX: usize = 16 << 20;

/// Whether an experts step that is not routed (fp32 and fp16 stacks, and bf16 ones the
/// tensor-core routing does not take), its first matrices `matrix_bytes` each as the device
/// holds them, is grouped on the device (the compiler's `tgroup` kernel; nothing read back to
/// the host) rather than on the host (the routing read back, cuBLAS's grouped GEMMs over each
/// expert's exact rows): on small matrices only. The device grouping's batched GEMMs take one
/// product per tile of rows, each reading its expert's matrices again, and the batch is sized
/// by a bound, not by the counts; small matrices are re-read from L2, large ones from memory.
/// Measured on an H200 (one layer, session 53, `ppmoe bench --moe-dtype fp32`, alternated in
/// one call): Qwen3-30B-A3B's 12 MiB fp32 matrices 1.57 against 3.26 ms at 64 tokens, 3.62
/// against 3.75-3.86 at 512, 9.45 against 9.01-9.08 at 4096 (device against host);
/// Mixtral-8x7B's 448 MiB ones 6.66 against 3.52 at 64 and 17.16 against 11.40 at 512; bf16
/// in session 25 likewise (Mixtral's 112 MiB matrices 2.693 against 0.899 ms at 512 tokens).
pub fn groups_on_device(matrix_bytes: usize) -> bool {
    matrix_bytes <= SMALL_MATRIX
}

/// Whether an experts step of bf16 stacks over `tokens` tokens (more than one), `slots` of
/// them over `experts` experts whose first matrices are `matrix_bytes` each, runs routed on
/// the device with the tensor-core projections by default (the compiler's
/// `PPMOE_DEVICE_ROUTING` overrides it): always on one rank's whole step, so its forward reads
/// nothing back to the host (no synchronisation, a CUDA graph). Measured on an H200 (bf16, one
/// layer), against cuBLAS over rows grouped on the host (two copies back per forward):
/// Qwen3-30B-A3B's 6 MiB matrices 0.490 against 0.537 ms at 512 tokens, 0.481 against 0.673
/// at 1024, 1.272 against 1.614 at 4096 and 4.600 against 5.465 at 16384 (sessions 27-29);
/// the DeepSeek-like layer (56 MiB) 1.642 against 1.799 at 512 (session 29), 5.918 against
/// 6.259 at 4096 (session 34); Mixtral-8x7B (117 MB matrices) at 8 tokens 0.651-0.664 against
/// 0.628 (session 28), and in session 35 (docs/bench-h200-s35.txt) 0.838 against 0.827 at 64
/// tokens, 1.033 against 1.000 at 512 and 5.140 against 4.677 at 4096 in one run, 1.027
/// against 0.907 and 5.282 against 4.711 in another: 10-13% slower there, the price of no host
/// round trip (`PPMOE_DEVICE_ROUTING=0` groups on the device for cuBLAS instead, and with
/// the runtime's `PPMOE_DEVICE_GROUPING=0` on the host). `local`: PPMoE's step of a rank's
/// experts at tp > 1, whose all-reduce the chunks of the device grouping overlap where the
/// routed path cannot: on small matrices past 32 rows per expert, where that grouping was
/// measured (4096 tokens in session 26: 1.461 against 1.712 ms grouped on the host), the step
/// keeps it; every other local step is routed as one rank's is, which reads nothing back to
/// the host either (the host grouping did past 4 rows per expert on large matrices until
/// session 52; neither side measured at tp 2 since).
pub fn routes_on_tensor_cores(
    tokens: usize,
    slots: usize,
    experts: usize,
    matrix_bytes: usize,
    local: bool,
) -> bool {
    let rows = slots.div_ceil(experts.max(1));
    let small = matrix_bytes <= SMALL_MATRIX;
    tokens > 1 && (!local || !small || rows <= 32)
}

/// The CUDA-core first projection reading x's bf16 bits (`dproj_in` reads f32 x).
pub const DPROJ_IN_BF16: &str = "dproj_in_bf16";

/// A few tokens' experts in two kernels, the slots indexed as the route left them (the
/// compiler's `few_tokens`): the first projection with the activation as its epilogue
/// (reading f32 x, or x's bf16 bits), and the second with the combine as its epilogue.
pub const TOKEN_KERNELS: [&str; 3] = ["dtok_in", "dtok_in_bf16", "dtok_out"];
/// The second token kernel writing y as bf16 bits (each sum rounded to nearest even), where
/// every reader of y takes bits: the step's output is then never f32.
pub const TOKEN_OUT_BITS: &str = "dtok_out_bits";
/// Their blocks: threads, activation columns of a block of the first (two a warp), output
/// columns of a warp of the second (one slot's).
pub const TOKEN_THREADS: usize = 256;
pub const TOKEN_IN_COLUMNS: usize = 16;
pub const TOKEN_OUT_WARP_COLUMNS: usize = 4;

/// The output columns of a block of the second token kernel for `k` slots a token: a warp per
/// (slot, `TOKEN_OUT_WARP_COLUMNS` columns), as many column groups as a block's warps hold
/// whole; None past a block's warps (the listed path then).
pub fn token_out_columns(k: usize) -> Option<usize> {
    let warps = TOKEN_THREADS / 32;
    (k > 0 && k <= warps).then(|| warps / k * TOKEN_OUT_WARP_COLUMNS)
}

/// Whether the experts of `hidden` columns of `tokens` tokens, `k` slots each over `experts`
/// experts, take the two token kernels rather than the listed ones (`dgroup`, `dproj`,
/// activation, combine). One token, measured on an H200 (bf16, one layer, a CUDA graph each,
/// same run; `docs/bench-h200-s39.txt` call 2): Qwen3-30B-A3B's (hidden 2048) 0.038 against
/// 0.047 ms, Mixtral-8x7B's (4096) 0.182 against 0.203, the DeepSeek-V3-like layer's (7168)
/// 0.207 against 0.193: up to 4096 columns. More tokens while their slots are at most one
/// per expert on average (the listed path's tensor-core projections then multiply one row an
/// expert, and every slot reads its expert's weights either way).
pub fn token_kernels_take(tokens: usize, k: usize, experts: usize, hidden: usize) -> bool {
    hidden <= 4096
        && token_out_columns(k).is_some()
        && (tokens == 1 || tokens.saturating_mul(k) <= experts)
}

/// The kernels an experts step may have besides its gather, activation and combine (which
/// it always has), by their suffix after the step's prefix: the device routing's and the
/// device grouping's (`device_routed`, `device_grouped`), the gather of x's bf16 copy. The
/// runtime loads those present.
pub const OPTIONAL_EXPERT_KERNELS: &[&str] = &[
    "dgroup",
    "dproj_in",
    DPROJ_IN_BF16,
    "dproj_out",
    TOKEN_KERNELS[0],
    TOKEN_KERNELS[1],
    TOKEN_KERNELS[2],
    TOKEN_OUT_BITS,
    TC_KERNELS[0],
    TC_KERNELS[1],
    TC_KERNELS[2],
    WG_KERNELS[0],
    WG_KERNELS[1],
    WG_KERNELS[2],
    SP_KERNELS[0],
    SP_KERNELS[1],
    SP_KERNELS[2],
    PP_KERNELS[0],
    PP_KERNELS[1],
    PP_KERNELS[2],
    QP_KERNELS[0],
    QP_KERNELS[1],
    QP_KERNELS[2],
    "tgroup",
    GATHER_BF16_SUFFIX,
    COMBINE_BITS_SUFFIX,
    SORTED_ROWS_KERNEL,
];

/// The threads of the one block of an experts step's device grouping (the compiler's
/// `device_grouping`): its loops over slots and rows step by it.
pub const GROUP_THREADS: usize = 1024;

/// Whether an experts step over `tokens` tokens runs routed on the device by default (the
/// compiler's `PPMOE_DEVICE_ROUTING` overrides it): for one token, where it was measured
/// faster than grouping on the host for cuBLAS (H200, bf16, one layer: Qwen3-30B-A3B's 0.081
/// against 0.158 ms, Mixtral-8x7B's 0.242 against 0.261 ms). At 8 tokens its CUDA-core
/// projections, each expert's rows taken together, were slower than cuBLAS's tensor cores
/// (0.549 against 0.284 ms, and 1.848 against 0.716 ms).
pub fn routes_on_device(tokens: usize) -> bool {
    tokens == 1
}

/// The generated kernel that narrows f32 activations to bf16 before a bf16 GEMM (present in a
/// rank's PTX when its weights are bf16).
pub const TO_BF16_KERNEL: &str = "to_bf16";

/// Its inverse, bf16 widened to f32 (exact): present beside it.
pub const FROM_BF16_KERNEL: &str = "from_bf16";

/// The two conversions four elements a thread (a count of groups of four, each 16-byte
/// aligned in f32): present beside them; the runtime takes them where the count and the
/// addresses allow.
pub const TO_BF16_X4_KERNEL: &str = "to_bf16_x4";
pub const FROM_BF16_X4_KERNEL: &str = "from_bf16_x4";

#[cfg(test)]
mod tests {
    use super::{
        pingpong_tiles, projects_on_warpgroups, routes_on_tensor_cores, token_kernels_take,
        token_out_columns,
    };

    /// The second token kernel's blocks: a warp per (slot, 4 columns), as many whole column
    /// groups as 8 warps hold (6 of 8 warps at k 3); past 8 slots a token, no token kernels.
    #[test]
    fn token_kernels_take_up_to_a_blocks_warps_of_slots() {
        for (k, columns) in [(1, Some(32)), (2, Some(16)), (3, Some(8)), (8, Some(4))] {
            assert_eq!(token_out_columns(k), columns, "k {k}");
        }
        assert_eq!(token_out_columns(0), None);
        assert_eq!(token_out_columns(9), None);
        assert!(token_kernels_take(1, 8, 128, 2048));
        assert!(token_kernels_take(16, 8, 128, 2048) && !token_kernels_take(17, 8, 128, 2048));
        assert!(
            !token_kernels_take(1, 10, 512, 2048),
            "Qwen3-Next's 10 slots"
        );
        assert!(!token_kernels_take(1, 2, 8, 7168), "past 4096 columns");
    }

    /// The ping-pong geometry up to 32 rows per expert on average.
    #[test]
    fn pingpong_tiles_up_to_32_rows_per_expert() {
        assert!(pingpong_tiles(512 * 8, 128) && !pingpong_tiles(1024 * 8, 128));
        assert!(pingpong_tiles(128, 8) && pingpong_tiles(256, 8) && !pingpong_tiles(257, 8));
    }

    /// The measured boundaries (H200, bf16, sessions 27 to 35): one rank's whole step routed
    /// on the device from 2 tokens, whatever its matrices; PPMoE's local step within its
    /// boundaries only.
    #[test]
    fn tensor_core_routing_is_every_step_but_a_local_ones_many_rows_on_small_matrices() {
        let qwen3 = 1536 * 2048 * 2;
        let mixtral = 28672 * 4096 * 2;
        let deepseek = 4096 * 7168 * 2;
        // Qwen3-30B-A3B (128 experts, k 8): from 8 tokens on (not 1: the CUDA-core kernels);
        // the wgmma projections from 2 rows per expert (32 tokens).
        for (t, yes) in [
            (1, false),
            (8, true),
            (16, true),
            (32, true),
            (64, true),
            (512, true),
            (1024, true),
            (16384, true),
        ] {
            assert_eq!(
                routes_on_tensor_cores(t, t * 8, 128, qwen3, false),
                yes,
                "qwen3 {t}"
            );
            assert_eq!(
                projects_on_warpgroups(t * 8, 128, qwen3, false),
                t >= 32,
                "qwen3 {t}"
            );
        }
        // Mixtral-8x7B (8 experts, k 2) and the DeepSeek-like layer: from 2 tokens at every
        // count; on their large matrices mma.sync up to 4 rows each, wgmma from 5.
        for t in [2, 8, 64, 512, 4096, 16384] {
            assert!(routes_on_tensor_cores(t, 2 * t, 8, mixtral, false), "{t}");
            assert!(routes_on_tensor_cores(t, 8 * t, 64, deepseek, false), "{t}");
        }
        assert!(!routes_on_tensor_cores(1, 2, 8, mixtral, false));
        assert!(!projects_on_warpgroups(16, 8, mixtral, false));
        assert!(!projects_on_warpgroups(32, 8, mixtral, false));
        assert!(projects_on_warpgroups(40, 8, mixtral, false));
        assert!(projects_on_warpgroups(128, 8, mixtral, false));
        assert!(projects_on_warpgroups(512, 64, deepseek, false));
        // PPMoE's local step at tp 2 (64 of Qwen3's experts): up to 32 rows each, on mma.sync.
        assert!(routes_on_tensor_cores(256, 2048, 64, qwen3 / 2, true));
        assert!(!projects_on_warpgroups(2048, 64, qwen3 / 2, true));
        assert!(!routes_on_tensor_cores(4096, 32768, 64, qwen3 / 2, true));
        // Its large matrices at every count, as one rank's (Mixtral's 4 experts a rank):
        // mma.sync up to 4 rows each, wgmma from 5.
        for t in [2, 8, 64, 512, 4096, 16384] {
            assert!(routes_on_tensor_cores(t, 2 * t, 4, mixtral, true), "{t}");
        }
        assert!(!projects_on_warpgroups(16, 4, mixtral, true));
        assert!(projects_on_warpgroups(128, 4, mixtral, true));
    }
}
