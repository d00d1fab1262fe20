//! The `kernels` and `ptx` stages, on a machine without a GPU: each rank's program as kernel
//! launches, cuBLAS GEMMs and NCCL collectives, and the generated kernels lowered through MLIR
//! (gpu -> NVVM -> LLVM -> NVPTX) to PTX for sm_90.

use crate::common::{fixtures_dir, ppmoe, ppmoe_env};

fn inspect(args: &[&str]) -> String {
    let m = fixtures_dir().join("qwen2moe_lm_dynamo/model.onnx");
    let mut a = vec!["inspect", m.to_str().unwrap()];
    a.extend(args);
    let out = ppmoe(&a);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

/// `model` compiled with `--target cuda` and `flags`, its bundle read back (the folder is
/// kept with it).
fn cuda_bundle(
    model: &std::path::Path,
    flags: &[&str],
) -> (tempfile::TempDir, ppmoe_runtime::bundle::Bundle) {
    cuda_bundle_env(model, flags, &[])
}

/// `cuda_bundle` compiled with extra environment variables (a policy's switch).
fn cuda_bundle_env(
    model: &std::path::Path,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, ppmoe_runtime::bundle::Bundle) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b");
    let mut a = vec![
        "compile",
        model.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--target",
        "cuda",
    ];
    a.extend(flags);
    let out = ppmoe_env(&a, env);
    assert_eq!(out.code, 0, "{} {flags:?}: {}", model.display(), out.stderr);
    let b = ppmoe_runtime::bundle::read_bundle(&bundle).unwrap();
    (dir, b)
}

#[test]
fn ptx_for_sm90_has_one_entry_per_generated_kernel_and_needs_no_libdevice() {
    let kernels = inspect(&["--emit", "kernels"]);
    let launches = kernels.matches("\"kernels.launch\"").count()
        + kernels.matches("\"kernels.route\"").count();
    assert!(launches >= 50, "{launches} generated kernels");
    let experts = kernels.matches("\"kernels.moe_experts\"").count();
    assert_eq!(experts, 2, "both MoE layers' expert FFNs run on the GPU");
    let ptx = inspect(&["--emit", "ptx"]);
    assert!(
        ptx.contains(".target sm_90"),
        "{}",
        &ptx[..ptx.len().min(400)]
    );
    // One entry per launched kernel, gather, act, combine and the device grouping per expert
    // FFN, and the embedding's row copy.
    let embeddings = kernels.matches("\"kernels.embedding\"").count();
    assert_eq!(
        ptx.matches(".visible .entry k").count(),
        launches + 4 * experts + embeddings
    );
    assert_eq!(
        ptx.matches("_route(").count(),
        2,
        "one routing kernel per MoE layer"
    );
    for suffix in ["gather", "act", "combine", "tgroup"] {
        assert_eq!(
            ptx.matches(&format!("_experts_{suffix}(")).count(),
            experts,
            "{suffix}"
        );
    }
    // Every launched kernel is an entry of the PTX.
    for name in kernels
        .split("@rank0_kernels::@")
        .skip(1)
        .map(|s| s.split([',', '}']).next().unwrap())
    {
        assert!(
            ptx.contains(&format!(".visible .entry {name}(")),
            "{name} missing from the PTX"
        );
    }
    // Nothing of the whole LM stays on the host.
    assert_no_host_work(&kernels);
    // Transcendentals use PTX's own approximations: nothing is left to link.
    assert!(!ptx.contains("__nv_"), "a libdevice call survived");
    assert!(ptx.contains("ex2.approx.ftz.f32"));
}

#[test]
fn kernels_stage_sends_matmuls_to_cublas_and_collectives_to_nccl() {
    let k = inspect(&["--tp", "2", "--emit", "kernels"]);
    let ir = inspect(&["--tp", "2", "--emit", "pipelined"]);
    let rank0 = |s: &str| s[..s.find("func.func @rank1").unwrap_or(s.len())].to_string();
    let (k0, ir0) = (rank0(&k), rank0(&ir));
    assert_eq!(
        k0.matches("\"kernels.cublas_gemm\"").count(),
        ir0.matches("\"core.mat_mul\"").count()
            + ir0.matches("linalg.matmul").count()
            + ir0.matches("linalg.batch_matmul").count()
            + ir0.matches("linalg.contract").count()
    );
    let collectives =
        ir0.matches("shard.all_reduce").count() + ir0.matches("shard.all_gather").count();
    // The MoE layers' all-reduces are done by their expert steps, overlapped (one per layer).
    let by_steps = k0.matches("\"kernels.reduced_by\"").count();
    assert_eq!(by_steps, 2, "{k0}");
    assert_eq!(
        k0.matches("\"kernels.nccl\"").count() + by_steps,
        collectives
    );
    // The routing is a generated kernel: one launch per MoE layer, a warp per token.
    assert_eq!(
        k0.matches("_route, op = \"route\", threads = 512").count(),
        2,
        "{k0}"
    );
}

#[test]
fn bf16_weights_add_the_activation_narrowing_and_widening_kernels() {
    let bf16 = inspect(&["--dtype", "bf16", "--emit", "ptx"]);
    assert!(
        bf16.contains(".visible .entry to_bf16("),
        "the bf16 GEMMs' conversion kernel is missing"
    );
    // Round to nearest even, as PyTorch's .to(torch.bfloat16).
    assert!(bf16.contains("cvt.rn.bf16.f32"));
    // And back (PPMoE's bf16 all-reduce): a load of two bytes widened, exact.
    let widen = entry(&bf16, "from_bf16");
    assert!(
        widen.contains("ld.global.b16") && widen.contains("cvt.f32.bf16"),
        "{widen}"
    );
    // Both four elements a thread where the runtime can (16-byte f32 accesses, 8-byte bf16
    // ones), rounding each element alike.
    let narrow4 = entry(&bf16, "to_bf16_x4");
    for needle in ["ld.global.v4.b32", "cvt.rn.bf16x2.f32", "st.global.v2.b32"] {
        assert!(
            narrow4.contains(needle),
            "to_bf16_x4: no {needle}: {narrow4}"
        );
    }
    let widen4 = entry(&bf16, "from_bf16_x4");
    for needle in ["ld.global.v4.b16", "cvt.f32.bf16", "st.global.v4.b32"] {
        assert!(
            widen4.contains(needle),
            "from_bf16_x4: no {needle}: {widen4}"
        );
    }
    let fp32 = inspect(&["--emit", "ptx"]);
    assert!(!fp32.contains("to_bf16("), "fp32 weights need no narrowing");
    assert!(!fp32.contains("from_bf16("));
}

/// An LM rank's plan (eager attention, fp32) has no host work: the token embedding is a
/// row-copy kernel too.
fn assert_no_host_work(kernels: &str) {
    let host = host_work(kernels);
    assert!(host.is_empty(), "{host:?}");
    assert_eq!(
        kernels.matches("\"kernels.embedding\"").count(),
        1,
        "{kernels}"
    );
}

/// The LMs exported with the default attention (sdpa), in fp32, bf16 and fp16: their masks
/// (`IsNaN`, `not`, `where`), the half-precision models' casts, gpt-oss's splits (as slices)
/// and token slices are generated kernels, so no rank of any grid has host work, with fp32 or
/// bf16 weights and either MoE strategy.
#[test]
fn sdpa_lms_have_no_host_work_on_any_grid() {
    // Each with a generated kernel its plan must have: the masks' where, gpt-oss's slices.
    let lms = [
        ("mixtral_lm_sdpa", "_where"),
        ("qwen2moe_lm_sdpa", "_where"),
        ("qwen3moe_lm_sdpa", "_where"),
        ("olmoe_lm_sdpa", "_where"),
        ("granitemoe_lm_sdpa", "_where"),
        ("mixtral_lm_bf16_sdpa", "_where"),
        ("qwen3moe_lm_bf16_sdpa", "_where"),
        ("qwen3moe_lm_fp16_sdpa", "_where"),
        ("gptoss_lm_sdpa", "_slice"),
    ];
    let grids: [&[&str]; 4] = [
        &[],
        &["--dtype", "bf16"],
        &["--tp", "2", "--dtype", "bf16"],
        &["--tp", "2", "--moe-strategy", "alltoall"],
    ];
    for (lm, kernel) in lms {
        let m = fixtures_dir().join(lm).join("model.onnx");
        for grid in grids {
            let mut a = vec!["inspect", m.to_str().unwrap(), "--emit", "kernels"];
            a.extend(["--input-shape", "input_ids=1x16"]);
            a.extend(grid);
            let out = ppmoe(&a);
            assert_eq!(out.code, 0, "{lm} {grid:?}: {}", out.stderr);
            let host = host_work(&out.stdout);
            assert!(host.is_empty(), "{lm} {grid:?}: {host:?}");
            // Each rank's embedding is a row copy.
            assert!(
                out.stdout.contains("\"kernels.embedding\""),
                "{lm} {grid:?}"
            );
            // The where may be a member of a fused pointwise chain.
            let launch = format!("{kernel}, op = ");
            let fused = kernel == "_where" && out.stdout.contains("_pointwise, op = ");
            assert!(
                out.stdout.contains(&launch) || fused,
                "{lm} {grid:?}: no {kernel}"
            );
        }
    }
    // The fp16 model's casts round through f16 on the device (to nearest even), and its
    // attention's NaN guard tests unordered, as lowered to PTX (fused into the softmax, the
    // guard's `where(not(p == p), ...)` becomes one unordered compare; read back from memory,
    // a boolean is tested unordered-or-unequal to 0).
    let m = fixtures_dir().join("qwen3moe_lm_fp16_sdpa/model.onnx");
    let out = ppmoe(&[
        "inspect",
        m.to_str().unwrap(),
        "--emit",
        "ptx",
        "--input-shape",
        "input_ids=1x16",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("cvt.rn.f16.f32"));
    assert!(out.stdout.contains("setp.nan.f32") || out.stdout.contains("setp.neu.f32"));
}

/// The instructions a `--emit kernels` plan leaves to the host.
fn host_work(kernels: &str) -> Vec<&str> {
    kernels
        .lines()
        .filter(|l| l.contains("\"kernels.host\""))
        .collect()
}

/// Rank 0's part of a multi-rank `--emit kernels`.
fn rank0(s: &str) -> &str {
    &s[..s.find("func.func @rank1").unwrap_or(s.len())]
}

#[test]
fn ppmoe_experts_run_on_the_gpu_at_tp_2() {
    let k = inspect(&["--tp", "2", "--emit", "kernels"]);
    let k0 = rank0(&k);
    // Per MoE layer, one step for the rank's experts; the local slice and the expert FFN are
    // fused into it, named by index.
    assert_eq!(
        k0.matches("\"kernels.moe_local_experts\"").count(),
        2,
        "{k0}"
    );
    assert_eq!(k0.matches("op = \"local_slice\"").count(), 2);
    assert_eq!(k0.matches("op = \"expert_ffn\"").count(), 2);
    // Each step does the all-reduce after it, in chunks behind its experts; the all-reduce
    // instruction names the step back.
    for line in k0
        .lines()
        .filter(|l| l.contains("\"kernels.moe_local_experts\""))
    {
        let step = line
            .split("instruction = ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let reduce = line
            .split("all_reduce = ")
            .nth(1)
            .expect(line)
            .split(' ')
            .next()
            .unwrap();
        let back =
            format!("instruction = {reduce} : i64, op = \"all_reduce\", step = {step} : i64");
        assert!(k0.contains(&back), "{back} in {k0}");
    }
    assert_no_host_work(k0);
    let ptx = inspect(&["--tp", "2", "--emit", "ptx"]);
    for suffix in ["gather", "act", "combine"] {
        assert_eq!(
            ptx.matches(&format!("_local_experts_{suffix}(")).count(),
            4,
            "{suffix}: two layers on each of two ranks"
        );
    }
}

#[test]
fn alltoall_experts_run_on_the_gpu_at_tp_2_sending_only_routed_rows() {
    let k = inspect(&[
        "--tp",
        "2",
        "--moe-strategy",
        "alltoall",
        "--emit",
        "kernels",
    ]);
    let k0 = rank0(&k);
    // Per MoE layer one step; the token slices, dispatch, both all_to_alls, the reshapes
    // between them and the expert FFN fused into it (the rows travel inside the step).
    assert_eq!(
        k0.matches("\"kernels.moe_alltoall_experts\"").count(),
        2,
        "{k0}"
    );
    assert_eq!(
        k0.matches("exchange = \"nccl ragged send/recv\"").count(),
        2
    );
    for (op, per_layer) in [
        ("token_slice", 3),
        ("dispatch", 1),
        ("all_to_all", 2),
        ("expert_ffn", 1),
    ] {
        let fused = k0
            .lines()
            .filter(|l| l.contains("\"kernels.fused\"") && l.contains(&format!("op = \"{op}\"")))
            .count();
        assert_eq!(fused, 2 * per_layer, "{op}");
    }
    // No all_to_all is left to NCCL as a dense collective; the all-gather of tokens stays.
    let nccl: Vec<&str> = k0
        .lines()
        .filter(|l| l.contains("\"kernels.nccl\""))
        .collect();
    assert!(nccl.iter().all(|l| !l.contains("all_to_all")), "{nccl:?}");
    assert!(nccl.iter().any(|l| l.contains("all_gather")), "{nccl:?}");
    assert_no_host_work(k0);
}

/// The JAX block's attention einsums (StableHLO dot_general) are batched matmuls after the
/// raise, so cuBLAS GEMMs: the block has no host work at tp 1 or tp 2.
#[test]
fn jax_block_einsums_become_gemms_and_leave_no_host_work() {
    let dir = fixtures_dir().join("jax_moe_block");
    let (m, w) = (dir.join("model.mlir"), dir.join("weights.safetensors"));
    for grid in [&[][..], &["--tp", "2"]] {
        let mut a = vec![
            "inspect",
            m.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
        ];
        a.extend(["--emit", "kernels"]);
        a.extend(grid);
        let out = ppmoe(&a);
        assert_eq!(out.code, 0, "{grid:?}: {}", out.stderr);
        let k0 = rank0(&out.stdout);
        assert!(!k0.contains("\"kernels.host\""), "{grid:?}: {k0}");
        // No einsum is left in the program the kernels were planned for.
        let einsum = k0.contains("\"core.einsum\"") || k0.contains("linalg.contract");
        assert!(!einsum, "{grid:?}");
    }
}

/// The routing of every raised family is generated: DeepSeek-V3's (sigmoid scores, the
/// score-correction bias, the group limit, the routed scaling) one kernel that takes the bias;
/// GShard's capacity (ONNX and JAX forms) two more kernels after the route, the drop per expert
/// in slot order and the renormalisation. The blocks have no host work on any grid.
#[test]
fn routing_with_bias_groups_or_capacity_is_generated() {
    let grids: [&[&str]; 3] = [
        &[],
        &["--tp", "2"],
        &["--tp", "2", "--moe-strategy", "alltoall"],
    ];
    // (fixture, model file, extra flags, what rank 0's kernels must contain)
    let cases: [(&str, &str, &[&str], &str); 3] = [
        (
            "deepseekv3_block_dynamo",
            "model.onnx",
            &["--input-shape", "hidden_states=1x16x64"],
            "memref<8xf32> loc(unknown)) kernel",
        ),
        ("gshard_top2", "model.onnx", &[], "_route_capacity("),
        ("jax_gshard_top2_a2a", "model.mlir", &[], "_route_renorm("),
    ];
    for (name, file, extra, needle) in cases {
        let dir = fixtures_dir().join(name);
        let (m, w) = (dir.join(file), dir.join("weights.safetensors"));
        for grid in grids {
            let mut a = vec!["inspect", m.to_str().unwrap(), "--emit", "kernels"];
            if file.ends_with(".mlir") {
                a.extend(["--weights", w.to_str().unwrap()]);
            }
            a.extend(extra);
            a.extend(grid);
            let out = ppmoe(&a);
            assert_eq!(out.code, 0, "{name} {grid:?}: {}", out.stderr);
            let k0 = rank0(&out.stdout);
            assert!(!k0.contains("\"kernels.host\""), "{name} {grid:?}: {k0}");
            assert!(k0.contains(needle), "{name} {grid:?}: no {needle}");
        }
    }
}

/// `--emit kernels` of an MoE block fixture at 16 tokens, with `extra` flags.
fn block_kernels(name: &str, extra: &[&str]) -> String {
    let m = fixtures_dir().join(name).join("model.onnx");
    let mut a = vec!["inspect", m.to_str().unwrap(), "--emit", "kernels"];
    a.extend(["--input-shape", "hidden_states=1x16x64"]);
    a.extend(extra);
    let out = ppmoe(&a);
    assert_eq!(out.code, 0, "{name} {extra:?}: {}", out.stderr);
    out.stdout
}

/// The first line of `text` holding every one of `needles`.
fn line_with<'t>(text: &'t str, needles: &[&str]) -> &'t str {
    text.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?}"))
}

/// Only a pipeline's first stage with no other communication sends on a stream of its own
/// (the CUDA backend's `pipeline_send`): its sends are its only NCCL calls. The last stage
/// receives; with tp 2 every stage's ranks all-reduce too. Every rank of a pipeline sends or
/// receives point to point (its forwards are never captured as CUDA graphs); tp alone does not.
#[test]
fn only_a_pure_pipelines_first_stage_communicates_only_by_sends() {
    let m = fixtures_dir().join("mixtral_lm_dynamo/model.onnx");
    for (grid, aside, p2p) in [
        (&["--pp", "2"][..], vec![true, false], vec![true; 2]),
        (
            &["--tp", "2", "--pp", "2"][..],
            vec![false; 4],
            vec![true; 4],
        ),
        (&["--tp", "2"][..], vec![false; 2], vec![false; 2]),
    ] {
        let (_dir, b) = cuda_bundle(&m, grid);
        let mut programs: Vec<_> = b.manifest.programs.iter().collect();
        programs.sort_by_key(|p| p.rank);
        let got: Vec<bool> = programs
            .iter()
            .map(|p| p.communicates_only_by_sends())
            .collect();
        assert_eq!(got, aside, "{grid:?}");
        let got: Vec<bool> = programs
            .iter()
            .map(|p| p.communicates_point_to_point())
            .collect();
        assert_eq!(got, p2p, "{grid:?}");
    }
}

/// With bf16 rows of an even width, the experts' gather from x takes two columns per thread,
/// each two bf16 values one 4-byte word (`bf16_pairs`), and where the width (H, or F for the
/// activation) is a multiple of eight, the gather from x's bf16 copy, the activation and the
/// combine eight a 16-byte word (`bf16_octets`, `row_columns`); with f32 rows, one column of
/// f32.
#[test]
fn bf16_expert_activations_are_read_and_written_two_columns_a_word() {
    for (dtype, hid) in [("bf16", "memref<?xi32>"), ("fp32", "memref<?xf32>")] {
        let k = block_kernels("mixtral_block_dynamo", &["--dtype", dtype]);
        let gather = line_with(&k, &["_experts_gather("]);
        assert!(
            gather.contains(&format!("%arg2: {hid} loc(unknown),")),
            "{dtype}: {gather}"
        );
        // Eight bf16 columns a 16-byte word (H = 64 and F = 128 are multiples of 8).
        let rows = match dtype {
            "bf16" => "memref<?xvector<8xbf16>>",
            _ => hid,
        };
        let act = line_with(&k, &["_experts_act("]);
        assert!(
            act.contains(&format!("(%arg0: {rows} loc(unknown),")),
            "{dtype}: {act}"
        );
        if dtype == "bf16" {
            let copy = line_with(&k, &["_experts_gather8("]);
            assert!(
                copy.contains("(%arg0: memref<?xvector<4xi32>> loc(unknown),"),
                "{copy}"
            );
        }
        let combine = line_with(&k, &["_experts_combine("]);
        assert!(
            combine.contains(&format!("(%arg0: {rows} loc(unknown),")),
            "{dtype}: {combine}"
        );
    }
    assert!(ppmoe_runtime::program::bf16_octets(true, 64));
    assert!(!ppmoe_runtime::program::bf16_octets(true, 68));
    // The runtime's combine threads and the compiler's kernel follow one rule.
    assert_eq!(ppmoe_runtime::program::row_columns(true, 64), 8);
    assert_eq!(ppmoe_runtime::program::row_columns(true, 68), 2);
    assert_eq!(ppmoe_runtime::program::row_columns(false, 64), 1);
    assert!(ppmoe_runtime::program::bf16_pairs(true, 14336));
    assert!(!ppmoe_runtime::program::bf16_pairs(true, 7));
    assert!(!ppmoe_runtime::program::bf16_pairs(false, 14336));
}

/// The device-routed slot listing reads each thread's slots (ids and weights:
/// `LIST_SLOTS_PER_THREAD` of them, 2048 tokens of k = 2 being enough for all) before it lists
/// the first: their loads are in flight together, not one slot's after the other's.
#[test]
fn the_slot_listing_reads_a_threads_slots_before_listing_any() {
    let many = lm_ptx(2048, &["--dtype", "bf16"], Some("1"));
    let groups = entries_ending(&many, "_dgroup");
    assert_eq!(groups.len(), 2, "{groups:?}");
    for g in &groups {
        let listing = entry(&many, g);
        let first = listing.find("atom.shared.add.u32").expect("a listing");
        let reads = 2 * ppmoe_runtime::program::LIST_SLOTS_PER_THREAD;
        assert_eq!(
            listing[..first].matches("ld.global.b32").count(),
            reads,
            "{g}"
        );
    }
}

/// The PTX of the bf16 LM exported with a dynamic sequence, at `tokens` tokens, with
/// `PPMOE_DEVICE_ROUTING` set to `routing` where given.
fn lm_ptx(tokens: usize, extra: &[&str], routing: Option<&str>) -> String {
    let m = fixtures_dir().join("mixtral_lm_bf16_sdpa/model.onnx");
    let shape = format!("input_ids=1x{tokens}");
    let mut a = vec!["inspect", m.to_str().unwrap(), "--emit", "ptx"];
    a.extend(["--input-shape", shape.as_str()]);
    a.extend(extra);
    let env: Vec<(&str, &str)> = routing
        .map(|r| ("PPMOE_DEVICE_ROUTING", r))
        .into_iter()
        .collect();
    let out = crate::common::ppmoe_env(&a, &env);
    assert_eq!(out.code, 0, "{tokens} tokens {extra:?}: {}", out.stderr);
    out.stdout
}

/// The body of PTX entry `name` (up to the next entry).
fn entry<'t>(ptx: &'t str, name: &str) -> &'t str {
    let start = ptx
        .find(&format!("entry {name}("))
        .unwrap_or_else(|| panic!("no entry {name}"));
    let rest = &ptx[start..];
    let end = rest[1..].find(".entry").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// The names of the PTX's entries that end with `suffix`.
fn entries_ending(ptx: &str, suffix: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| l.split("entry ").nth(1))
        .filter_map(|l| l.split('(').next())
        .filter(|n| n.ends_with(suffix))
        .map(str::to_string)
        .collect()
}

/// One token is routed on the device (at tp 2 too, padded over the ranks): per layer the slots
/// listed per expert by shared-memory atomics, and two projections whose lanes read the routed
/// experts' weights 16 bytes at a time and fold their sums by shuffles (a bf16 projection's
/// f32 rows rounded to bf16 first, as the host-grouped GEMMs take them). A few more tokens
/// with bf16 stacks (this LM's, whatever --dtype says) are routed so too, their projections
/// on the tensor cores (`tproj`: mma.sync, bf16 in, f32 accumulated; routes_on_tensor_cores;
/// the gated activation in the first one's epilogue; one row per expert: 2 tokens); more (2
/// rows per expert of this LM's small matrices and up: 16 and 256 tokens) with the warpgroup ones
/// (wgmma, sm_90a; `pproj`, a block per SM over every expert's tiles, a producer warp feeding them,
/// the weights by tensor copies; `PPMOE_TENSOR_PROJECTIONS=wgmma-per-tile`: `sproj`, a block per
/// expert's column tile; `=wgmma-cp-async`: `wproj`, every thread copying by cp.async), unless
/// turned off. `PPMOE_DEVICE_ROUTING=1` routes PPMoE's local step at tp 2 on the device too (never
/// all-to-all's, whose rows travel); `=0` never routes on the device.
#[test]
fn few_tokens_are_routed_on_the_device_and_more_on_the_tensor_cores() {
    const MMA: &str = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    const WGMMA: &str = "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16";
    for dtype in ["fp32", "bf16"] {
        let one = lm_ptx(1, &["--dtype", dtype], None);
        let groups = entries_ending(&one, "_dgroup");
        assert_eq!(groups.len(), 2, "{dtype}: one per MoE layer: {groups:?}");
        for g in &groups {
            assert!(entry(&one, g).contains("atom.shared.add.u32"), "{g}");
            let prefix = g.trim_end_matches("_dgroup");
            for proj in ["dproj_in", "dproj_out"] {
                let body = entry(&one, &format!("{prefix}_{proj}"));
                for needle in [
                    "ld.global.v4.b32",
                    "fma.rn.f32",
                    "shfl.sync.bfly.b32",
                    "bar.sync",
                ] {
                    assert!(
                        body.contains(needle),
                        "{dtype} {prefix}_{proj}: no {needle}"
                    );
                }
            }
            // The model was exported in bf16: its stacks are bf16 whatever --dtype says.
            let rounds = entry(&one, &format!("{prefix}_dproj_in")).contains("cvt.rn.bf16.f32");
            assert!(rounds, "{dtype} {prefix}_dproj_in");
            // Its x is bf16 too: the first projection also comes reading x's bf16 bits (2-byte
            // loads widened, nothing rounded), for a runtime that holds x as them.
            let bits = entry(&one, &format!("{prefix}_dproj_in_bf16"));
            assert!(bits.contains("cvt.f32.bf16") && !bits.contains("cvt.rn.bf16.f32"));
        }

        // One token at tp 2 (padded to two over the ranks): PPMoE's local step routed on the
        // device on each rank, per layer.
        let one_tp2 = lm_ptx(1, &["--dtype", dtype, "--tp", "2"], None);
        let local = entries_ending(&one_tp2, "_local_experts_dgroup");
        assert_eq!(local.len(), 4, "{dtype} one token at tp 2: {local:?}");
        // 2 tokens (one row per expert): the mma.sync projections.
        let few = lm_ptx(2, &["--dtype", dtype], None);
        assert_eq!(entries_ending(&few, "_dgroup").len(), 2, "{dtype} 2");
        assert!(entries_ending(&few, "_dproj_in").is_empty());
        // Mixtral's SiLU-gated experts have no first bias: the activation is the first
        // projection's epilogue (`tproj_act`, an ex2 per element), not a kernel between.
        assert!(entries_ending(&few, "_tproj_in").is_empty());
        for proj in ["_tproj_act", "_tproj_out"] {
            let names = entries_ending(&few, proj);
            assert_eq!(names.len(), 2, "{dtype} 2 tokens: {names:?}");
            assert!(entry(&few, &names[0]).contains(MMA), "{}", names[0]);
        }
        let act = entries_ending(&few, "_tproj_act");
        assert!(entry(&few, &act[0]).contains("ex2.approx"), "{}", act[0]);
        // 16 and 256 tokens (8 and 128 rows per expert of small matrices): routed on the
        // device too, the projections on the warpgroup tensor cores (wgmma, sm_90a), the
        // activation fused.
        for tokens in [16, 256] {
            let many = lm_ptx(tokens, &["--dtype", dtype], None);
            assert_eq!(
                entries_ending(&many, "_dgroup").len(),
                2,
                "{dtype} {tokens}"
            );
            assert!(entries_ending(&many, "_tproj_act").is_empty());
            assert!(many.contains(".target sm_90a"), "{dtype} {tokens} tokens");
            // Their persistent warp-specialised form: a block per SM striding over the tiles,
            // a producer warp, the weights by tensor copies, the rows by cp.async, both
            // arriving on mbarriers; in the ping-pong geometry (`qproj`, a tile per
            // warpgroup) up to 32 rows per expert, the cooperative one (`pproj`) past it.
            let (form, other) = match tokens {
                16 => ("qproj", "pproj"),
                _ => ("pproj", "qproj"),
            };
            assert!(entries_ending(&many, &format!("_{other}_out")).is_empty());
            for proj in [format!("_{form}_act"), format!("_{form}_out")] {
                let names = entries_ending(&many, &proj);
                assert_eq!(names.len(), 2, "{dtype} {tokens} tokens: {names:?}");
                let body = entry(&many, &names[0]);
                assert!(body.contains(WGMMA), "{}", names[0]);
                for needle in [
                    "cp.async.bulk.tensor.2d",
                    "cp.async.mbarrier.arrive.noinc",
                    "%nctaid.x",
                ] {
                    assert!(body.contains(needle), "{}: no {needle}", names[0]);
                }
            }
        }
        // Asked for, the form whose threads all copy, between block-wide barriers (`wproj`),
        // and the per-tile one (`sproj`: a block per expert's column tile, no grid stride).
        let m = fixtures_dir().join("mixtral_lm_bf16_sdpa/model.onnx");
        let a = [
            "inspect",
            m.to_str().unwrap(),
            "--emit",
            "ptx",
            "--dtype",
            dtype,
        ];
        let a = [&a[..], &["--input-shape", "input_ids=1x256"]].concat();
        let forms = [
            (
                "wgmma-cp-async",
                "wproj",
                &[WGMMA, "cp.async.cg.shared.global"][..],
            ),
            (
                "wgmma-per-tile",
                "sproj",
                &[WGMMA, "cp.async.bulk.tensor.2d"][..],
            ),
        ];
        for (form, kernels, needles) in forms {
            let env = [("PPMOE_TENSOR_PROJECTIONS", form)];
            let ptx = crate::common::ppmoe_env(&a, &env).stdout;
            assert!(entries_ending(&ptx, "_pproj_act").is_empty(), "{form}");
            for proj in [format!("_{kernels}_act"), format!("_{kernels}_out")] {
                let names = entries_ending(&ptx, &proj);
                assert_eq!(names.len(), 2, "{dtype} {form}: {names:?}");
                let body = entry(&ptx, &names[0]);
                for needle in needles {
                    assert!(body.contains(needle), "{}: no {needle}", names[0]);
                }
            }
        }
        // The persistent kernels take their tiles in mirrored order unless told the plain
        // stride (the order's select is all that differs).
        let ptx_with = |order: &str| ppmoe_env(&a, &[("PPMOE_TILE_ORDER", order)]).stdout;
        let (mirror, stride) = (ptx_with("mirror"), ptx_with("stride"));
        let default = ppmoe(&a).stdout;
        let pproj = entries_ending(&default, "_pproj_act");
        assert_eq!(pproj.len(), 2, "{dtype}");
        assert_eq!(entry(&default, &pproj[0]), entry(&mirror, &pproj[0]));
        assert_ne!(entry(&default, &pproj[0]), entry(&stride, &pproj[0]));
        // The first model's matrices are small; turned off, the host groups the rows.
        let host = lm_ptx(256, &["--dtype", dtype], Some("0"));
        assert!(
            entries_ending(&host, "_dgroup").is_empty(),
            "{dtype} 256 off"
        );
        let off = lm_ptx(1, &["--dtype", dtype], Some("0"));
        assert!(
            entries_ending(&off, "_dgroup").is_empty(),
            "{dtype} turned off"
        );
        let tp2 = lm_ptx(16, &["--dtype", dtype, "--tp", "2"], Some("1"));
        let local = entries_ending(&tp2, "_local_experts_dgroup");
        assert_eq!(local.len(), 4, "{dtype} tp 2: {local:?}");
        let proj = entries_ending(&tp2, "_local_experts_tproj_act");
        assert_eq!(proj.len(), 4, "{dtype} tp 2: {proj:?}");
        let a2a = ["--dtype", dtype, "--tp", "2", "--moe-strategy", "alltoall"];
        assert!(entries_ending(&lm_ptx(16, &a2a, Some("1")), "_dgroup").is_empty());
    }
}

/// Any number of tokens can be grouped on the device for cuBLAS's pointer-batched GEMMs: per
/// MoE layer a `tgroup` kernel of one block that counts each expert's slots by shared-memory
/// atomics (one counter per local expert, a tile start per expert and one more), with three
/// barriers (cleared, counted, tiles laid), and stores the tiles' 64-bit operand pointers.
/// PPMoE's local step at tp 2 has one per rank and layer; all-to-all's (rows travel) none.
#[test]
fn any_token_count_is_grouped_on_the_device_for_the_batched_gemms() {
    for dtype in ["fp32", "bf16"] {
        let ptx = lm_ptx(16, &["--dtype", dtype], None);
        let groups = entries_ending(&ptx, "_tgroup");
        assert_eq!(groups.len(), 2, "{dtype}: one per MoE layer: {groups:?}");
        for g in &groups {
            let body = entry(&ptx, g);
            assert!(body.contains("atom.shared.add.u32"), "{dtype} {g}");
            assert_eq!(body.matches("bar.sync").count(), 3, "{dtype} {g}");
            // The fixture's 4 experts: counters and fills of 4 x 4 bytes, starts of 5 x 4.
            for (j, bytes) in [(0, 16), (1, 16), (2, 20)] {
                let shared = format!("__wg_{g}_{j}[{bytes}]");
                assert!(body.contains(&shared), "{dtype} {g}: no {shared}");
            }
            // Six pointers per tile, each stored as two 32-bit halves (4-byte alignment).
            assert!(
                body.matches("st.global.b32").count() >= 2 * 6 * 2,
                "{dtype} {g}"
            );
        }
        let tp2 = lm_ptx(16, &["--dtype", dtype, "--tp", "2"], None);
        let local = entries_ending(&tp2, "_local_experts_tgroup");
        assert_eq!(local.len(), 4, "{dtype} tp 2: {local:?}");
        let a2a = ["--dtype", dtype, "--tp", "2", "--moe-strategy", "alltoall"];
        assert!(entries_ending(&lm_ptx(16, &a2a, None), "_tgroup").is_empty());
    }
    // A capacity route too (GShard's top-2): its dropped slots weigh 0, so no expert lists
    // them, as on the host; the capacity is applied by its own kernels before.
    let m = fixtures_dir().join("gshard_top2/model.onnx");
    let out = ppmoe(&["inspect", m.to_str().unwrap(), "--emit", "ptx"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for suffix in ["_route_capacity", "_route_renorm", "_experts_tgroup"] {
        assert_eq!(entries_ending(&out.stdout, suffix).len(), 1, "{suffix}");
    }
}

/// Every kernel an experts step's PTX has is one the runtime loads: its gather, activation
/// and combine, or one of `OPTIONAL_EXPERT_KERNELS` (a kernel the compiler generates that the
/// runtime does not know would never run: its step would silently take another path).
#[test]
fn every_experts_kernel_generated_is_one_the_runtime_loads() {
    let known: Vec<&str> = ["gather", "act", "combine"]
        .into_iter()
        .chain(
            ppmoe_runtime::program::OPTIONAL_EXPERT_KERNELS
                .iter()
                .copied(),
        )
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for (tokens, extra) in [
        (1, &["--dtype", "bf16"][..]),
        (16, &["--dtype", "bf16"][..]),
        (16, &["--dtype", "bf16", "--tp", "2"][..]),
        (256, &["--dtype", "fp32"][..]),
    ] {
        let ptx = lm_ptx(tokens, extra, None);
        for name in ptx
            .lines()
            .filter_map(|l| l.split("entry ").nth(1))
            .filter_map(|l| l.split('(').next())
        {
            let Some((_, suffix)) = name.split_once("_experts_") else {
                continue;
            };
            assert!(known.contains(&suffix), "{name}: not loaded by the runtime");
            seen.insert(suffix.to_string());
        }
    }
    for s in [
        "dgroup",
        "dproj_in",
        "tproj_act",
        "tproj_out",
        "tgroup",
        "gather8",
    ] {
        assert!(seen.contains(s), "{s} not generated: {seen:?}");
    }
}

/// gpt-oss's block returns its router's top-k scores through a `TopK` beside the raised
/// routing: a generated kernel of one thread per row (16 tokens), k passes over the row's 4
/// scores, each pass a scan that keeps the best score after the previous pick (an ordered
/// float compare and a later-index tie break), values and indices stored as f32.
#[test]
fn top_k_is_a_generated_kernel_of_one_thread_per_row() {
    let k = block_kernels("gptoss_block_dynamo", &[]);
    let launch = line_with(&k, &["kernels.launch", "_top_k,"]);
    assert!(launch.contains("threads = 16 : i64"), "{launch}");
    let body = k
        .split("gpu.func @")
        .find(|f| f.starts_with("k3_top_k("))
        .expect("the top_k kernel");
    for needle in [
        "arith.cmpf olt",
        "arith.cmpf ogt",
        "arith.cmpf oeq",
        "arith.cmpi sgt",
        "arith.sitofp",
    ] {
        assert!(body.contains(needle), "no {needle}");
    }
    assert_eq!(body.matches("scf.for").count(), 2, "k passes of a scan");
}

/// `moe.route` is launched one warp per token (the experts split over its lanes) where the
/// router has no group limit, and one thread per token under DeepSeek-V3's group limit.
#[test]
fn the_route_is_one_warp_per_token_except_under_a_group_limit() {
    for (name, threads) in [
        ("qwen3moe_block_dynamo", 16 * 32),
        ("mixtral_block_dynamo", 16 * 32),
        ("deepseekv3_block_dynamo", 16),
    ] {
        let k = block_kernels(name, &[]);
        let launch = line_with(&k, &["kernels.route", "_route,"]);
        assert!(
            launch.contains(&format!("threads = {threads} : i64")),
            "{name}: {launch}"
        );
    }
}

/// onnxruntime-genai's decoders (CPU fp32 and CUDA fp16 builds of Qwen3 and gpt-oss) have no
/// host work: GroupQueryAttention's output shape is inferred (from the file it would be
/// unknown, and the projection after it would run on the host), its masks and caches are
/// generated kernels.
#[test]
fn genai_decoders_have_no_host_work() {
    let genai = fixtures_dir().join("../genai");
    for (name, ring) in [
        ("qwen3_decoder", 0),
        ("qwen3_decoder_cuda_fp16", 0),
        ("gptoss_decoder", 128),
        ("gptoss_decoder_cuda_fp16", 128),
    ] {
        let m = genai.join(name).join("model.onnx");
        let mut a: Vec<String> = ["inspect", m.to_str().unwrap(), "--emit", "kernels"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for shape in ["input_ids=1x16", "attention_mask=1x16"] {
            a.extend(["--input-shape".into(), shape.into()]);
        }
        for (layer, slots) in [(0, ring), (1, 0)] {
            for part in ["key", "value"] {
                let shape = format!("past_key_values.{layer}.{part}=1x2x{slots}x16");
                a.extend(["--input-shape".into(), shape]);
            }
        }
        let out = ppmoe(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        let host = host_work(&out.stdout);
        assert!(host.is_empty(), "{name}: {host:?}");
    }
}

#[test]
fn pointwise_chains_are_fused_into_one_kernel_that_alone_reads_their_results() {
    use ppmoe_runtime::program::{GpuOp, Op};
    // (gpt-oss's softmax reads a concatenation with its sinks and is read by a slice: no
    // pointwise op next to it.)
    for (lm, grid, min_softmaxes) in [
        ("mixtral_lm_sdpa", &["--dtype", "bf16"][..], 2),
        ("qwen3moe_lm_fp16_sdpa", &[][..], 2),
        ("gptoss_lm_sdpa", &["--tp", "2"][..], 0),
    ] {
        let m = fixtures_dir().join(lm).join("model.onnx");
        let flags: Vec<&str> = ["--input-shape", "input_ids=1x16"]
            .iter()
            .chain(grid)
            .copied()
            .collect();
        let (_dir, b) = cuda_bundle(&m, &flags);
        for p in &b.manifest.programs {
            let (mut fused, mut softmaxes) = (0, 0);
            for (root, how) in p.gpu.iter().enumerate() {
                let GpuOp::Pointwise {
                    inputs, members, ..
                } = how
                else {
                    continue;
                };
                fused += members.len();
                let chain: Vec<usize> = members.iter().copied().chain([root]).collect();
                let softmax = |i: usize| matches!(p.instructions[i].op, Op::Softmax { .. });
                if let Some(s) = members.iter().copied().find(|&m| softmax(m)) {
                    // An attention's softmax with its mask's add before it and its NaN guard
                    // after it: the add's result read by the softmax alone, the softmax's
                    // by the guard alone (the chain's root).
                    let x = p.instructions[s].inputs[0].unwrap();
                    assert!(
                        chain[..chain.len() - 1]
                            .iter()
                            .any(|&m| p.instructions[m].outputs[0] == x),
                        "{lm}: softmax {s} fused without the chain before it"
                    );
                    softmaxes += 1;
                }
                for &m in members {
                    // Each member's one result: read by later members only (a pointwise
                    // member's by one), and no output.
                    let r = p.instructions[m].outputs[0];
                    let readers: Vec<usize> = (0..p.instructions.len())
                        .filter(|&i| p.instructions[i].inputs.contains(&Some(r)))
                        .collect();
                    assert!(
                        !readers.is_empty()
                            && (readers.len() == 1 || softmax(m))
                            && readers.iter().all(|i| chain.contains(i) && *i > m),
                        "{lm}: member {m} of {root} is read by {readers:?}"
                    );
                    assert!(!p.outputs.contains(&r), "{lm}: member {m} is an output");
                    assert!(!inputs.contains(&r), "{lm}: {m}'s result is a kernel input");
                    // Every member has the root's result shape, or, for a reduction's
                    // chain, the shape the reduction reads.
                    let shape = |i: usize| &p.buffers[p.instructions[i].outputs[0]].shape;
                    let read = |i: usize| {
                        let x = p.instructions[i].inputs[0].unwrap();
                        &p.buffers[x].shape
                    };
                    let reduction = matches!(
                        p.instructions[root].op,
                        Op::Reduce { .. } | Op::ReduceAxes { .. }
                    );
                    let want = if reduction { read(root) } else { shape(root) };
                    assert_eq!(shape(m), want, "{lm}: {m} into {root}");
                }
            }
            // Norms, rotary embeddings, masks: each LM has chains to fuse; each attention
            // layer's softmax is one kernel with the mask before it; each RMS norm's mean
            // one kernel with the square before it.
            assert!(fused >= 8, "{lm} rank {}: {fused} fused", p.rank);
            let fused_means = p
                .gpu
                .iter()
                .enumerate()
                .filter(|(root, how)| {
                    matches!(how, GpuOp::Pointwise { members, .. } if !members.is_empty())
                        && matches!(
                            p.instructions[*root].op,
                            Op::Reduce { .. } | Op::ReduceAxes { .. }
                        )
                })
                .count();
            assert!(
                fused_means >= 3,
                "{lm} rank {}: {fused_means} fused means",
                p.rank
            );
            assert!(
                softmaxes >= min_softmaxes,
                "{lm} rank {}: {softmaxes} fused softmaxes",
                p.rank
            );
        }
    }
}

/// At 4096 tokens the rotary angles' table of an LM exported with a dynamic sequence outgrows
/// what is folded at compile time (it grows with the tokens): their sin and cos run as
/// generated kernels (reduced to [-pi, pi] first,
/// then PTX's approximations), and the norms' means as one warp per row.
#[test]
fn rotary_sin_cos_and_norm_means_are_generated_kernels_at_long_sequences() {
    let m = fixtures_dir().join("mixtral_lm_bf16_sdpa/model.onnx");
    let args = |emit: &'static str| {
        let m = m.to_str().unwrap().to_string();
        ppmoe(&[
            "inspect",
            &m,
            "--emit",
            emit,
            "--input-shape",
            "input_ids=1x4096",
        ])
    };
    let k = args("kernels");
    assert_eq!(k.code, 0, "{}", k.stderr);
    assert!(
        host_work(&k.stdout).is_empty(),
        "{:?}",
        host_work(&k.stdout)
    );
    assert!(
        k.stdout.contains("llvm.nvvm.sin.approx.f") && k.stdout.contains("llvm.nvvm.cos.approx.f")
    );
    let ptx = args("ptx");
    assert_eq!(ptx.code, 0, "{}", ptx.stderr);
    for needle in ["sin.approx.f32", "cos.approx.f32", "cvt.rmi.f32.f32"] {
        assert!(ptx.stdout.contains(needle), "no {needle}");
    }
    // Each mean's kernel (with the square before it) folds a row across a warp.
    let entries: Vec<&str> = ptx.stdout.split(".entry ").skip(1).collect();
    let means: Vec<&&str> = entries
        .iter()
        .filter(|e| e.contains("_reduce_mean_fused("))
        .collect();
    assert!(!means.is_empty());
    for e in means {
        assert!(e.contains("shfl.sync.bfly"), "{e}");
    }
}

/// Every fixture at tp 1 and tp 2 (both strategies), in fp32 and bf16, has no host work: every
/// instruction is a generated kernel, a cuBLAS GEMM, an NCCL call or an alias. (gpt-oss's
/// block's `top_k` and PhiMoE's sparsemixer routing were the last host work, until session 27.)
/// And every experts step but all-to-all's groups its slots on the device (routed, or for
/// cuBLAS's pointer-batched GEMMs), so the runtime reads no routing back: fp16 stacks too since
/// session 52; all-to-all's say they group on the host (their counts size NCCL's messages).
#[test]
fn no_fixture_has_host_work_on_any_grid() {
    let grids: [&[&str]; 6] = [
        &[],
        &["--dtype", "bf16"],
        &["--tp", "2"],
        &["--tp", "2", "--dtype", "bf16"],
        &["--tp", "2", "--moe-strategy", "alltoall"],
        &["--tp", "2", "--moe-strategy", "alltoall", "--dtype", "bf16"],
    ];
    let (mut checked, mut steps) = (0, 0);
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(info) = std::fs::read_to_string(dir.join("fixture.json")) else {
            continue;
        };
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let (onnx, mlir) = (dir.join("model.onnx"), dir.join("model.mlir"));
        let mut args: Vec<String> = vec!["inspect".into(), "--emit".into(), "kernels".into()];
        if mlir.exists() {
            args.push(mlir.display().to_string());
            args.extend([
                "--weights".into(),
                dir.join("weights.safetensors").display().to_string(),
            ]);
        } else if onnx.exists() {
            args.push(onnx.display().to_string());
        } else {
            continue;
        }
        // Blocks exported with dynamic shapes take 16 tokens; LMs exported so, their tokens.
        let input = info["inputs"][0].as_str().unwrap_or_default();
        if info["kind"] == "moe_subgraph" && onnx.exists() {
            args.extend(["--input-shape".into(), format!("{input}=1x16x64")]);
        } else if info["kind"] == "lm" && info["tokens"].is_u64() && onnx.exists() {
            args.extend([
                "--input-shape".into(),
                format!("{input}=1x{}", info["tokens"]),
            ]);
        }
        for grid in grids {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(grid);
            let out = ppmoe(&a);
            assert_eq!(out.code, 0, "{name} {grid:?}: {}", out.stderr);
            let host: Vec<&str> = host_work(&out.stdout)
                .into_iter()
                .map(|line| {
                    line.split("op = \"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or(line)
                })
                .collect();
            assert!(host.is_empty(), "{name} {grid:?}: {host:?} on the host");
            for step in out.stdout.lines().filter(|l| l.contains("\"kernels.moe_")) {
                let grouping = step
                    .split("grouping = \"")
                    .nth(1)
                    .and_then(|r| r.split('"').next());
                let wanted = if step.contains("kernels.moe_alltoall_experts") {
                    ["host"].as_slice()
                } else {
                    ["device", "device, routed"].as_slice()
                };
                assert!(
                    grouping.is_some_and(|g| wanted.contains(&g)),
                    "{name} {grid:?}: {step}"
                );
                steps += 1;
            }
            checked += 1;
        }
    }
    assert!(checked >= 39 * 6, "{checked} programs");
    assert!(
        steps >= checked,
        "{steps} experts steps in {checked} programs"
    );
}

/// A fixture's CUDA bundle (rank 0's program) and its PTX text.
fn cuda_bundle_ptx(model: &str, flags: &[&str]) -> (ppmoe_runtime::bundle::Bundle, String) {
    cuda_bundle_ptx_env(model, flags, &[])
}

/// `cuda_bundle_ptx` compiled with extra environment variables.
fn cuda_bundle_ptx_env(
    model: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (ppmoe_runtime::bundle::Bundle, String) {
    let (dir, b) = cuda_bundle_env(&fixtures_dir().join(model), flags, env);
    let file = b.manifest.programs[0].ptx_file.clone().expect("a PTX file");
    let ptx = std::fs::read_to_string(dir.path().join("b").join(file)).unwrap();
    (b, ptx)
}

/// A program's experts steps, each with its kernels' prefix.
fn experts_steps(
    p: &ppmoe_runtime::program::Program,
) -> impl Iterator<Item = (&ppmoe_runtime::program::Instruction, &str)> {
    use ppmoe_runtime::program::{GpuOp, Op};
    p.instructions
        .iter()
        .zip(&p.gpu)
        .filter_map(|(ins, how)| match (&ins.op, how) {
            (Op::MoeExperts { .. }, GpuOp::Experts { prefix, .. }) => Some((ins, prefix.as_str())),
            _ => None,
        })
}

/// The PTX of the entry that starts at `at`, to its closing brace.
fn entry_body(ptx: &str, at: usize) -> &str {
    &ptx[at..at + ptx[at..].find("\n}").expect("the entry's end")]
}

/// The experts' combine writes bf16 bits where the model's y is bf16 and every reader takes
/// bits: in the bf16 LM export each experts step has `{prefix}_combine_bits` (a 16-byte store
/// of eight sums, each rounded by `cvt.rn.bf16x2.f32`) and its y may be held rounded
/// (`Program::rounded_for_every_reader`: the residual add reads it as bits); the Mixtral
/// block compiled with `--dtype bf16`, whose y is a result of the program, has neither.
#[test]
fn a_bf16_models_experts_combine_into_bf16_bits() {
    use ppmoe_runtime::program::COMBINE_BITS_SUFFIX;
    let check = |model: &str, flags: &[&str], bits: bool| {
        let (b, ptx) = cuda_bundle_ptx(model, flags);
        let p = &b.manifest.programs[0];
        let mut steps = 0;
        for (ins, prefix) in experts_steps(p) {
            steps += 1;
            let y = ins.outputs[0];
            assert_eq!(p.rounded_for_every_reader(y), bits, "{model}: {prefix}");
            let entry = format!(".entry {prefix}_{COMBINE_BITS_SUFFIX}(");
            let Some(at) = ptx.find(&entry) else {
                assert!(!bits, "{model}: no {entry}");
                continue;
            };
            assert!(bits, "{model}: {entry}");
            let body = entry_body(&ptx, at);
            assert_eq!(body.matches("cvt.rn.bf16x2.f32").count(), 4, "{model}");
            assert_eq!(body.matches("st.global.v4.b32").count(), 1, "{model}");
        }
        assert!(steps >= 1, "{model}: no experts step");
    };
    check(
        "mixtral_lm_bf16_sdpa/model.onnx",
        &["--input-shape", "input_ids=1x16"],
        true,
    );
    check(
        "mixtral_block_dynamo/model.onnx",
        &["--dtype", "bf16"],
        false,
    );
}

/// A few tokens' experts (the token kernels) write bf16 bits too where every reader of y takes
/// them: the bf16 LM export at one token has, per experts step (its y read only as bits), the
/// f32 `{prefix}_dtok_out` and `{prefix}_dtok_out_bits`, whose sums are rounded by
/// `cvt.rn.bf16.f32` and stored 16 bits each (no f32 store). Where y is no bf16 for every
/// reader the step has no such kernel (`ExpertsOperands::y_bits`, the predicate of
/// `a_bf16_models_experts_combine_into_bf16_bits`' negative case).
#[test]
fn a_bf16_models_few_token_experts_write_bf16_bits() {
    use ppmoe_runtime::program::{TOKEN_KERNELS, TOKEN_OUT_BITS};
    let model = "mixtral_lm_bf16_sdpa/model.onnx";
    let (b, ptx) = cuda_bundle_ptx(model, &["--input-shape", "input_ids=1x1"]);
    let p = &b.manifest.programs[0];
    let mut steps = 0;
    for (ins, prefix) in experts_steps(p) {
        steps += 1;
        assert!(p.rounded_for_every_reader(ins.outputs[0]), "{prefix}");
        let f32_entry = format!(".entry {prefix}_{}(", TOKEN_KERNELS[2]);
        assert!(ptx.contains(&f32_entry), "no {f32_entry}");
        let entry = format!(".entry {prefix}_{TOKEN_OUT_BITS}(");
        let at = ptx.find(&entry).unwrap_or_else(|| panic!("no {entry}"));
        let body = entry_body(&ptx, at);
        assert!(body.contains("cvt.rn.bf16.f32"), "{entry}");
        assert_eq!(body.matches("st.global.b16").count(), 1, "{entry}");
        assert!(!body.contains("st.global.f32"), "{entry}");
    }
    assert_eq!(steps, 2, "the LM's two experts steps");
}

/// The token embedding copies a bf16 table's rows as bits where its result is bf16 in the model
/// and read only as bits: the bf16 LM export has `k0_embedding_bits` (16-bit loads and stores)
/// beside the f32 copy, and its result may be held rounded (the runtime then holds the table
/// as bits only, never widened); the fp32 LM export compiled with `--dtype bf16` (its result
/// f32 in the model) has no such kernel.
#[test]
fn a_bf16_models_embedding_copies_its_tables_bits() {
    use ppmoe_runtime::program::{GpuOp, EMBEDDING_BITS_SUFFIX};
    let check = |model: &str, flags: &[&str], bits: bool| {
        let (b, ptx) = cuda_bundle_ptx(model, flags);
        let p = &b.manifest.programs[0];
        let (i, name) = p
            .gpu
            .iter()
            .enumerate()
            .find_map(|(i, g)| match g {
                GpuOp::Embedding { name } => Some((i, name)),
                _ => None,
            })
            .expect("an embedding step");
        let out = p.instructions[i].outputs[0];
        assert_eq!(p.rounded_for_every_reader(out), bits, "{model}");
        let entry = format!(".entry {name}_{EMBEDDING_BITS_SUFFIX}(");
        let Some(at) = ptx.find(&entry) else {
            assert!(!bits, "{model}: no {entry}");
            return;
        };
        assert!(bits, "{model}: {entry}");
        let body = entry_body(&ptx, at);
        assert!(
            body.contains("ld.global.b16") || body.contains("ld.global.u16"),
            "{body}"
        );
        assert!(
            body.contains("st.global.b16") || body.contains("st.global.u16"),
            "{body}"
        );
    };
    let lm = ["--input-shape", "input_ids=1x16"];
    check("mixtral_lm_bf16_sdpa/model.onnx", &lm, true);
    check(
        "mixtral_lm_sdpa/model.onnx",
        &[&lm[..], &["--dtype", "bf16"]].concat(),
        false,
    );
}

/// bf16 activations in the generated kernels: in the bf16 LM export compiled for CUDA, the
/// generated kernels read and write the model's bf16 buffers as bf16 (`GpuOp::Kernel::bf16`,
/// `GpuOp::Pointwise::bf16`: the norms, the residual adds, RoPE, the softmax, the casts), so
/// the GEMMs' bf16 results are read as bits (`Program::reads_as_bits`: the CUDA backend keeps
/// them rounded to bf16, as PyTorch's bf16 matmul rounds them) and no widening kernel stands
/// before their readers; the PTX has each such kernel's 16-bit loads and stores.
#[test]
fn the_bf16_lms_kernels_read_and_write_its_bf16_activations() {
    use ppmoe_runtime::program::{GpuOp, Op};
    let m = fixtures_dir().join("mixtral_lm_bf16_sdpa/model.onnx");
    let (_dir, b) = cuda_bundle(&m, &["--input-shape", "input_ids=1x16"]);
    let p = &b.manifest.programs[0];
    // The GEMMs cuBLAS runs (attention's two are inside its kernel).
    let gemms: Vec<usize> = p
        .instructions
        .iter()
        .zip(&p.gpu)
        .filter(|(i, how)| i.op == Op::MatMul && **how == GpuOp::Gemm)
        .map(|(i, _)| i.outputs[0])
        .collect();
    // Every generated kernel takes each of its bf16 buffers as bf16.
    for (i, how) in p.gpu.iter().enumerate() {
        let (Some(ps), GpuOp::Kernel { bf16, .. } | GpuOp::Pointwise { bf16, .. }) =
            (p.generated_params(i, how), how)
        else {
            continue;
        };
        let want: Vec<usize> = ps
            .iter()
            .enumerate()
            .filter(|(_, &b)| p.buffers[b].dtype == ppmoe_runtime::DType::BF16)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(&want, bf16, "{}", p.instructions[i].op.name());
    }
    let bits = gemms.iter().filter(|&&g| p.reads_as_bits(g)).count();
    assert!(
        gemms.len() >= 11 && bits == gemms.len(),
        "{bits} of {} GEMM results read as bits",
        gemms.len()
    );
    let narrowed: Vec<&GpuOp> = p
        .gpu
        .iter()
        .filter(|g| matches!(g, GpuOp::Kernel { bf16, .. } | GpuOp::Pointwise { bf16, .. } if !bf16.is_empty()))
        .collect();
    assert!(
        narrowed.len() >= 10,
        "{} kernels with bf16 parameters",
        narrowed.len()
    );
}

/// The policy fuses a bf16 attention where its scores would take 1 GiB or more unfused
/// (`FLASH_MIN_SCORE_BYTES`): the bf16 Mixtral LM fixture (4 heads) at 16 tokens keeps the
/// unfused softmax kernel, at 12288 tokens (4 x 12288^2 bf16 scores, 1.1 GiB) both its
/// attentions are `k*_attention` kernels.
#[test]
fn attention_is_fused_by_default_where_its_scores_would_pass_a_gib() {
    let m = "mixtral_lm_bf16_sdpa/model.onnx";
    let (_, small) = cuda_bundle_ptx(m, &["--input-shape", "input_ids=1x16"]);
    assert!(small.contains("_softmax_fused(") && !small.contains("_attention("));
    let (_, long) = cuda_bundle_ptx(m, &["--input-shape", "input_ids=1x12288"]);
    assert_eq!(long.matches("_attention(").count(), 2);
    assert!(!long.contains("_softmax_fused("));
}

/// A softmax whose input is no GEMM's result (a graph input; a transpose's) is no attention:
/// compiled with every attention fused (`PPMOE_FLASH_ATTENTION=1`), the crafted graph of two
/// such softmaxes each read by a MatMul compiles (it once panicked) with neither fused.
#[test]
fn a_softmax_of_no_gemms_scores_is_left_unfused() {
    let m = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ops/softmax_values_unfused/model.onnx");
    let (dir, b) = cuda_bundle_env(&m, &[], &[("PPMOE_FLASH_ATTENTION", "1")]);
    let file = b.manifest.programs[0].ptx_file.clone().expect("a PTX file");
    let ptx = std::fs::read_to_string(dir.path().join("b").join(file)).unwrap();
    assert!(!ptx.contains("_attention("));
    assert_eq!(
        ptx.matches("_softmax(").count(),
        2,
        "the two softmaxes' kernels"
    );
}

/// A bf16 model's attention is one kernel (`attention`): in the bf16 LM exports (sdpa, its
/// mask added and its NaN guard after the softmax) each softmax is a member of a `k*_attention`
/// step rooted at the values' GEMM, with the scores' GEMM, the mask's add and the guard fused
/// into it, every parameter bf16, and its PTX has bf16 `mma.sync`s fed by transposing
/// `ldmatrix`es from the shared tiles that 16-byte copies fill, and no spills' local memory;
/// at 40 tokens (rows and keys past whole tiles) too. The fp32 LM, and
/// the fp32 LM compiled `--dtype bf16` (its activations f32 in the model), keep the unfused
/// softmax kernel. (`PPMOE_FLASH_ATTENTION=1`: fused at every size the kernel takes.)
#[test]
fn a_bf16_models_attention_is_one_kernel() {
    use ppmoe_runtime::program::{GpuOp, Op};
    let check = |model: &str, flags: &[&str], fused: bool| {
        let (b, ptx) = cuda_bundle_ptx_env(model, flags, &[("PPMOE_FLASH_ATTENTION", "1")]);
        let p = &b.manifest.programs[0];
        let softmaxes = p
            .instructions
            .iter()
            .filter(|i| matches!(i.op, Op::Softmax { .. }))
            .count();
        let mut steps = 0;
        for (i, how) in p.gpu.iter().enumerate() {
            let GpuOp::Pointwise {
                name,
                members,
                bf16,
                inputs,
                ..
            } = how
            else {
                continue;
            };
            if !name.ends_with("_attention") {
                continue;
            }
            steps += 1;
            let ops: Vec<&Op> = members.iter().map(|&m| &p.instructions[m].op).collect();
            assert_eq!(p.instructions[i].op, Op::MatMul, "{model}: {name}");
            assert_eq!(
                ops.iter().filter(|o| ***o == Op::MatMul).count(),
                1,
                "{model}: {ops:?}"
            );
            assert!(
                ops.iter().any(|o| matches!(o, Op::Softmax { .. })),
                "{model}: {ops:?}"
            );
            assert!(
                ops.iter().any(|o| matches!(o, Op::Where)),
                "{model}: the guard"
            );
            assert_eq!(
                bf16.len(),
                inputs.len() + 1,
                "{model}: every parameter bf16"
            );
            let at = ptx
                .find(&format!(".entry {name}("))
                .expect("the kernel's entry");
            let body = entry_body(&ptx, at);
            let mmas = body
                .matches("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
                .count();
            assert!(mmas >= 4, "{model}: {mmas} mmas");
            let ldmatrix = body
                .matches("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16")
                .count();
            assert!(ldmatrix >= 2, "{model}: {ldmatrix} ldmatrix");
            assert!(body.contains("ld.global.v4.b32") && body.contains("st.shared.v4.b32"));
            assert!(!body.contains(".local"), "{model}: spills");
        }
        let want = if fused { softmaxes } else { 0 };
        assert!(softmaxes >= 2, "{model}: {softmaxes} softmaxes");
        assert_eq!(steps, want, "{model}: attention steps");
        assert_eq!(ptx.contains("_softmax_fused("), !fused, "{model}");
    };
    for tokens in ["input_ids=1x16", "input_ids=1x40"] {
        check(
            "mixtral_lm_bf16_sdpa/model.onnx",
            &["--input-shape", tokens],
            true,
        );
    }
    check(
        "qwen3moe_lm_bf16_sdpa/model.onnx",
        &["--input-shape", "input_ids=1x16"],
        true,
    );
    let lm = ["--input-shape", "input_ids=1x16"];
    check("mixtral_lm_sdpa/model.onnx", &lm, false);
    check(
        "mixtral_lm_sdpa/model.onnx",
        &[&lm[..], &["--dtype", "bf16"]].concat(),
        false,
    );
}

/// The attention kernel skips a key step's softmax update and values' GEMM where every score of
/// the warp's is -inf (a causal mask's keys past its rows): the step's maximum is taken over the
/// warp (five butterfly shuffles more than with `PPMOE_ATTENTION_SKIP=0`) and the update is a
/// branch around its `mma.sync`s, which neither form has fewer of.
#[test]
fn the_attention_kernel_skips_a_masked_key_step() {
    let shape = ["--input-shape", "input_ids=1x40"];
    let model = "mixtral_lm_bf16_sdpa/model.onnx";
    let kernel = |skip: &str| {
        let env = [
            ("PPMOE_FLASH_ATTENTION", "1"),
            ("PPMOE_ATTENTION_SKIP", skip),
        ];
        let (_, ptx) = cuda_bundle_ptx_env(model, &shape, &env);
        let at = ptx.find("_attention(").expect("an attention kernel");
        let at = ptx[..at].rfind(".entry ").expect("its entry");
        entry_body(&ptx, at).to_string()
    };
    let (skip, every) = (kernel("1"), kernel("0"));
    let count = |body: &str, what: &str| body.matches(what).count();
    assert_eq!(
        count(&skip, "shfl.sync.bfly"),
        count(&every, "shfl.sync.bfly") + 5,
        "the warp's maximum of the step's scores"
    );
    let mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    assert_eq!(count(&skip, mma), count(&every, mma));
    assert!(
        count(&skip, "bra") > count(&every, "bra"),
        "the branch around the update"
    );
}
