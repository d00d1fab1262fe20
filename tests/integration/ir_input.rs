//! IR as input: the module `--emit STAGE` prints (`core` to `pipelined`) reads back (`inspect
//! IR.mlir`, `compile IR.mlir`), with the weights of the source it names. Checked on every
//! fixture: the print of what was read is the print itself, the `core` IR reaches the same
//! `moe` IR, and the `moe` IR the same `--tp 2 --emit sharded` IR as the model; the later
//! stages on LMs; compiled, it runs to PyTorch's output; an edit of the IR is what runs.

use crate::common::{
    assert_clean_failure, fixtures, fixtures_dir, output_name, ppmoe, shape_flags, torch_tolerance,
};
use std::path::{Path, PathBuf};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The model of a fixture folder and the flags it compiles with (its input shape; a StableHLO
/// fixture's weights).
fn model_and_flags(dir: &Path) -> (PathBuf, Vec<String>) {
    if dir.join("model.onnx").exists() {
        return (dir.join("model.onnx"), shape_flags(dir));
    }
    let weights = vec!["--weights".into(), s(&dir.join("weights.safetensors"))];
    (dir.join("model.mlir"), weights)
}

/// `ppmoe inspect` of `model` with `flags` then `extra`: its stdout, or its error.
fn inspect(model: &Path, flags: &[String], extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["inspect".to_string(), s(model)];
    args.extend(flags.iter().cloned());
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    if out.code == 0 {
        Ok(out.stdout)
    } else {
        Err(out.stderr)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Every fixture, ONNX and StableHLO: IR that reads back to itself, and to the later stages
/// the model reaches.
#[test]
fn every_fixtures_ir_reads_back_to_the_models_later_stages() {
    let mut dirs = fixtures();
    dirs.extend(
        ["jax_moe_block", "jax_gshard_top2_a2a", "jax_scan_layers"].map(|n| fixtures_dir().join(n)),
    );
    let work = tempfile::tempdir().unwrap();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (model, flags) = model_and_flags(&dir);
        let moe = inspect(&model, &flags, &["--emit", "moe"]).unwrap();
        let moe_file = write(work.path(), &format!("{name}.moe.mlir"), &moe);
        let again = inspect(&moe_file, &[], &["--emit", "moe"]).unwrap();
        assert_eq!(
            again, moe,
            "{name}: the moe IR read back prints differently"
        );
        let core = inspect(&model, &flags, &["--emit", "core"]).unwrap();
        let core_file = write(work.path(), &format!("{name}.core.mlir"), &core);
        let raised = inspect(&core_file, &[], &["--emit", "moe"]).unwrap();
        assert_eq!(raised, moe, "{name}: the core IR raises to another moe IR");
        let direct = inspect(&model, &flags, &["--tp", "2", "--emit", "sharded"]);
        let read = inspect(&moe_file, &[], &["--tp", "2", "--emit", "sharded"]);
        match (direct, read) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{name}: tp 2 sharded IR differs"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{name}: the model and its IR disagree at tp 2: {a:?} / {b:?}"),
        }
    }
}

/// The later stages read back on LMs of several families (and a JAX program of scanned
/// layers): sharded IR prints as itself and reaches the model's own pipelined IR, pipelined IR
/// prints as itself and reaches the model's own kernel plan, and that kernels IR prints as
/// itself, on grids with each strategy.
#[test]
fn later_stages_read_back_to_the_models_own_next_stages() {
    let work = tempfile::tempdir().unwrap();
    let names = [
        "qwen2moe_lm_dynamo",
        "olmoe_lm_sdpa",
        "gptoss_lm_sdpa",
        "mixtral_lm_bf16_sdpa",
        "jax_scan_layers",
    ];
    let grids: [&[&str]; 3] = [
        &["--tp", "2"],
        &["--tp", "2", "--pp", "2"],
        &["--tp", "2", "--pp", "2", "--moe-strategy", "alltoall"],
    ];
    for name in names {
        let (model, flags) = model_and_flags(&fixtures_dir().join(name));
        for grid in grids {
            let at = |stage: &str| {
                let mut extra = grid.to_vec();
                extra.extend(["--emit", stage]);
                inspect(&model, &flags, &extra).unwrap()
            };
            let sharded = at("sharded");
            let s_file = write(work.path(), "s.mlir", &sharded);
            let again = inspect(&s_file, &[], &["--emit", "sharded"]).unwrap();
            assert_eq!(
                again, sharded,
                "{name} {grid:?}: sharded IR reprints differently"
            );
            let pipelined = at("pipelined");
            let read = inspect(&s_file, &[], &["--emit", "pipelined"]).unwrap();
            assert_eq!(read, pipelined, "{name} {grid:?}: sharded IR -> pipelined");
            let p_file = write(work.path(), "p.mlir", &pipelined);
            let again = inspect(&p_file, &[], &["--emit", "pipelined"]).unwrap();
            assert_eq!(
                again, pipelined,
                "{name} {grid:?}: pipelined IR reprints differently"
            );
            let kernels = inspect(&p_file, &[], &["--emit", "kernels"]).unwrap();
            assert_eq!(
                kernels,
                at("kernels"),
                "{name} {grid:?}: pipelined IR -> kernels"
            );
            let k_file = write(work.path(), "k.mlir", &kernels);
            let again = inspect(&k_file, &[], &["--emit", "kernels"]).unwrap();
            assert_eq!(
                again, kernels,
                "{name} {grid:?}: kernels IR reprints differently"
            );
        }
    }
}

/// Compiles `ir` with `flags`, runs the fixture's input through it and checks its output
/// against PyTorch's; returns the check line.
fn compile_and_check(dir: &Path, ir: &Path, flags: &[&str], work: &Path) -> String {
    let bundle = work.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    let mut args = vec![
        "compile",
        ir.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ];
    args.extend(flags);
    let c = ppmoe(&args);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let input = crate::common::fixture_field(dir, "input_name");
    let out = output_name(dir);
    let tolerance = torch_tolerance(dir).to_string();
    let r = ppmoe(&[
        "run",
        bundle.to_str().unwrap(),
        "--input",
        &s(&dir.join(format!("{input}.npy"))),
        "--output-dir",
        &s(&work.join("out")),
        "--check",
        &s(&dir.join(format!("{out}.npy"))),
        "--tolerance",
        &tolerance,
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r.stdout
}

/// The issue's check: a model's `moe` IR, written to a file and compiled on a grid, runs to
/// PyTorch's output (LMs at tp 2 x pp 2, a block at tp 2 with each strategy, a bf16 LM).
#[test]
fn compiled_moe_ir_runs_to_pytorchs_output() {
    let work = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("qwen2moe_lm_dynamo", &["--tp", "2", "--pp", "2"]),
        ("olmoe_lm_sdpa", &["--tp", "2", "--pp", "2"]),
        ("mixtral_block_dynamo", &["--tp", "2"]),
        (
            "mixtral_block_dynamo",
            &["--tp", "2", "--moe-strategy", "alltoall"],
        ),
        ("qwen3moe_lm_bf16_sdpa", &["--tp", "2"]),
    ];
    for (name, flags) in cases {
        let dir = fixtures_dir().join(name);
        let (model, shape) = model_and_flags(&dir);
        let moe = inspect(&model, &shape, &["--emit", "moe"]).unwrap();
        let ir = write(work.path(), "model.moe.mlir", &moe);
        let line = compile_and_check(&dir, &ir, flags, work.path());
        assert!(line.contains(": ok"), "{name} {flags:?}: {line}");
    }
    // The pipelined IR of a grid compiles on its own grid (no flags needed).
    let dir = fixtures_dir().join("qwen2moe_lm_dynamo");
    let (model, shape) = model_and_flags(&dir);
    let grid = ["--tp", "2", "--pp", "2", "--emit", "pipelined"];
    let pipelined = inspect(&model, &shape, &grid).unwrap();
    let ir = write(work.path(), "model.pipelined.mlir", &pipelined);
    let line = compile_and_check(&dir, &ir, &[], work.path());
    assert!(line.contains(": ok"), "pipelined IR: {line}");
}

/// Kernels IR compiles: a grid's kernels IR to a bundle that runs to PyTorch's output, and
/// the PTX is built from the IR's kernels (the model's own PTX as printed; another where a
/// kernel's body was edited).
#[test]
fn kernels_ir_compiles_with_its_own_kernels() {
    let work = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("qwen2moe_lm_dynamo");
    let (model, shape) = model_and_flags(&dir);
    let grid = ["--tp", "2", "--pp", "2", "--target", "cuda"];
    let kernels = inspect(
        &model,
        &shape,
        &[&grid[..], &["--emit", "kernels"]].concat(),
    )
    .unwrap();
    let ir = write(work.path(), "model.kernels.mlir", &kernels);
    let line = compile_and_check(&dir, &ir, &["--target", "cuda"], work.path());
    assert!(line.contains(": ok"), "kernels IR: {line}");

    let dir = fixtures_dir().join("mixtral_block_dynamo");
    let model = dir.join("model.onnx");
    let cuda = ["--target", "cuda"];
    let kernels = inspect(&model, &[], &[&cuda[..], &["--emit", "kernels"]].concat()).unwrap();
    let ptx = inspect(&model, &[], &[&cuda[..], &["--emit", "ptx"]].concat()).unwrap();
    let ir = write(work.path(), "kernels.mlir", &kernels);
    let read = inspect(&ir, &[], &["--emit", "ptx"]).unwrap();
    assert_eq!(read, ptx, "the kernels IR's PTX is the model's");
    // For the CPU backend the bundle is the pipelined stage's: the error says what to ask.
    let cpu = work.path().join("cpu");
    let out = ppmoe(&["compile", ir.to_str().unwrap(), "-o", cpu.to_str().unwrap()]);
    assert_clean_failure(
        &out,
        &[
            "kernels.mlir",
            "'pipelined' comes before it",
            "--target cuda",
        ],
    );
    assert!(!cpu.exists(), "a bundle was left behind");
    // The route kernel's guard over its 512 threads, made 256: the IR's kernel is compiled.
    let guard = "%c512 = arith.constant 512 : index";
    let route = kernels.find("gpu.func @k2_route(").unwrap();
    let at = route + kernels[route..].find(guard).unwrap();
    let edited = format!(
        "{}%c512 = arith.constant 256 : index{}",
        &kernels[..at],
        &kernels[at + guard.len()..]
    );
    let ir = write(work.path(), "edited.kernels.mlir", &edited);
    let read = inspect(&ir, &[], &["--emit", "ptx"]).unwrap();
    assert_ne!(read, ptx, "an edited kernel makes other PTX");
    let entry = |p: &str| {
        let at = p.find(".entry k2_route").unwrap();
        p[at..at + p[at..].find("\n}").unwrap()].to_string()
    };
    assert_ne!(entry(&read), entry(&ptx), "the route kernel's PTX changed");
}

/// A `kernels` module's plan is what the bundle ships: the PPMoE experts step of a tp 2 block
/// edited to run on the host (its local slice, FFN and combine `kernels.host`, its all-reduce
/// `kernels.nccl`) compiles to a bundle of that plan, which says so, and runs to PyTorch's
/// output; a member taken out of its step alone, or a field edited that is not read, is refused
/// by name.
#[test]
fn a_kernels_plan_edited_to_run_steps_on_the_host_is_what_the_bundle_ships() {
    let work = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("mixtral_block_dynamo");
    let grid = ["--tp", "2", "--target", "cuda", "--emit", "kernels"];
    let kernels = inspect(&dir.join("model.onnx"), &[], &grid).unwrap();
    let (slice, ffn, combine) = (
        r#""kernels.host"() {instruction = 3 : i64, op = "local_slice"}"#,
        r#""kernels.host"() {instruction = 4 : i64, op = "expert_ffn"}"#,
        r#""kernels.host"() {instruction = 5 : i64, op = "scatter_combine"}"#,
    );
    let nccl = r#""kernels.nccl"() {instruction = 6 : i64, op = "all_reduce"}"#;
    let on_host = [(3, slice), (4, ffn), (5, combine), (6, nccl)]
        .iter()
        .fold(kernels.clone(), |text, (i, step)| {
            edit_step(&text, *i, step)
        });
    let ir = write(work.path(), "host.kernels.mlir", &on_host);
    let line = compile_and_check(&dir, &ir, &["--target", "cuda"], work.path());
    assert!(line.contains(": ok"), "{line}");
    let bundle = ppmoe_runtime::bundle::read_bundle(&work.path().join("bundle")).unwrap();
    for p in &bundle.manifest.programs {
        let kinds: Vec<String> = (p.gpu.iter())
            .map(|g| serde_json::to_value(g).unwrap()["kind"].to_string())
            .collect();
        let want = [
            "alias",
            "gemm",
            "route",
            "host",
            "host",
            "host",
            "collective",
            "alias",
        ];
        let want: Vec<String> = want.iter().map(|k| format!("\"{k}\"")).collect();
        assert_eq!(kinds, want, "rank {}", p.rank);
    }
    let again = ppmoe(&["inspect", &s(&ir), "--emit", "kernels"]);
    assert_eq!(again.stdout, on_host, "the edited plan prints as itself");
    // `--host-steps 4` (the expert FFN, a member of the step) makes the plan edited by hand.
    let flagged = inspect(
        &dir.join("model.onnx"),
        &[],
        &[&grid[..], &["--host-steps", "4"]].concat(),
    )
    .unwrap();
    let plan = |text: &str| -> Vec<String> {
        let steps = text.lines().filter(|l| l.contains("\"kernels."));
        steps.map(|l| l.trim().to_string()).collect()
    };
    assert_eq!(plan(&flagged), plan(&on_host));
    let bundle = work.path().join("noted");
    let out = ppmoe(&["compile", &s(&ir), "-o", &s(&bundle), "--target", "cuda"]);
    assert!(
        out.stdout
            .contains("note: rank 1 runs instructions 3, 4, 5 on the host"),
        "{}",
        out.stdout
    );

    let refused = |edited: &str, needles: &[&str]| {
        let ir = write(work.path(), "refused.kernels.mlir", edited);
        let out = ppmoe(&["inspect", &s(&ir), "--emit", "ptx"]);
        assert_clean_failure(&out, &[&["refused.kernels.mlir"], needles].concat());
    };
    refused(
        &edit_step(&kernels, 3, slice),
        &[
            "the plan of @rank0",
            "GPU plan entry 5",
            "local experts of slice 3",
        ],
    );
    refused(
        &kernels.replacen(r#"grouping = "device""#, r#"grouping = "host""#, 1),
        &[
            "the plan of @rank0: op 5 is",
            "where the step it reads as prints",
            "grouping = \"device\"",
        ],
    );
    refused(
        &edit_step(
            &kernels,
            6,
            r#""kernels.host"() {instruction = 6 : i64, op = "all_reduce"}"#,
        ),
        &[
            "the plan of @rank0: op 6 is",
            "kernels.host",
            "the plan ppmoe-plan-kernels makes",
        ],
    );
}

/// `--host-steps` (the pass `ppmoe-host-steps`) moves all-to-all's experts step to the host,
/// its members with it, its two exchanges NCCL's own: the kernels IR so made reads back, and
/// its bundle ships that plan and runs to PyTorch's output.
#[test]
fn host_steps_moves_an_alltoall_experts_step_with_its_members() {
    let work = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("mixtral_block_dynamo");
    let flags = [
        "--tp",
        "2",
        "--moe-strategy",
        "alltoall",
        "--target",
        "cuda",
    ];
    let moved = ["--host-steps", "moe_alltoall_experts", "--emit", "kernels"];
    let kernels = inspect(&dir.join("model.onnx"), &[], &[&flags[..], &moved].concat()).unwrap();
    let edited = write(work.path(), "a2a.host.mlir", &kernels);
    let line = compile_and_check(&dir, &edited, &["--target", "cuda"], work.path());
    assert!(line.contains(": ok"), "{line}");
    let bundle = ppmoe_runtime::bundle::read_bundle(&work.path().join("bundle")).unwrap();
    for p in &bundle.manifest.programs {
        let planned = |kind: &str| {
            (p.gpu.iter())
                .zip(&p.instructions)
                .filter(|(g, _)| serde_json::to_value(g).unwrap()["kind"] == kind)
                .map(|(_, ins)| ins.op.name())
                .collect::<Vec<_>>()
        };
        // The exchanges, then the all-gather of the tokens the step's slices split.
        let collectives = ["all_to_all", "all_to_all", "all_gather"];
        assert_eq!(planned("collective"), collectives, "rank {}", p.rank);
        let host = planned("host");
        for op in ["token_slice", "dispatch", "expert_ffn", "combine"] {
            assert!(
                host.iter().any(|h| h == op),
                "rank {}: {op} not on the host: {host:?}",
                p.rank
            );
        }
        assert!(planned("fused").is_empty() && planned("all_to_all_experts").is_empty());
    }
}

/// `text` with each plan's step of instruction `i` replaced by `step`.
fn edit_step(text: &str, i: usize, step: &str) -> String {
    let at = [
        format!("{{instruction = {i} : i64"),
        format!(", instruction = {i} : i64"),
    ];
    let lines = text.lines().map(|l| match l.find("\"kernels.") {
        Some(start) if at.iter().any(|a| l.contains(a)) => {
            let end = l.find(" : () -> ()").unwrap();
            format!("{}{step}{}", &l[..start], &l[end..])
        }
        _ => l.to_string(),
    });
    lines.map(|l| l + "\n").collect()
}

/// The program compiled is the IR's, not the source's: scaling the router's weights by 2 in
/// the IR of a block whose output is the experts' sum doubles the output.
#[test]
fn an_edit_of_the_ir_is_what_runs() {
    let work = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("mixtral_block_dynamo");
    let moe = inspect(&dir.join("model.onnx"), &[], &["--emit", "moe"]).unwrap();
    let from = "routed_scaling_factor = 1.000000e+00 : f64";
    assert!(moe.contains(from), "{moe}");
    let edited = moe.replace(from, "routed_scaling_factor = 2.000000e+00 : f64");
    let ir = write(work.path(), "edited.mlir", &edited);
    let doubled = work.path().join("doubled.npy");
    std::fs::write(&doubled, doubled_npy(&dir.join("view_7.npy"))).unwrap();
    let bundle = work.path().join("b");
    let c = ppmoe(&[
        "compile",
        ir.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let r = ppmoe(&[
        "run",
        bundle.to_str().unwrap(),
        "--input",
        &s(&dir.join("hidden_states.npy")),
        "--output-dir",
        &s(&work.path().join("o")),
        "--check",
        doubled.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(": ok"), "{}", r.stdout);
}

/// A little-endian f32 .npy file with every value doubled (exact in binary floating point).
fn doubled_npy(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let header = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let text = String::from_utf8_lossy(&bytes[10..header]).to_string();
    assert!(text.contains("'<f4'"), "{text}");
    for v in bytes[header..].chunks_exact_mut(4) {
        let x = 2.0 * f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        v.copy_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// IR that cannot be taken is refused with what is wrong: a weight the source lacks, a
/// weight of another type, a stage before the IR's, kernels IR whose plan or kernels were edited.
#[test]
fn ir_input_that_cannot_be_taken_is_named() {
    let work = tempfile::tempdir().unwrap();
    let dir = fixtures_dir().join("mixtral_block_dynamo");
    let model = dir.join("model.onnx");
    let moe = inspect(&model, &[], &["--emit", "moe"]).unwrap();
    let renamed = write(
        work.path(),
        "renamed.mlir",
        &moe.replace("\"view_7.w_in\"", "\"no_such_weight\""),
    );
    let out = ppmoe(&["inspect", renamed.to_str().unwrap(), "--emit", "sharded"]);
    assert_clean_failure(&out, &["renamed.mlir", "weight 'no_such_weight'", "source"]);

    let retyped = write(
        work.path(),
        "retyped.mlir",
        &moe.replace("%arg1: tensor<64x4xf32>", "%arg1: tensor<64x4xbf16>")
            .replace(
                ", %arg1 : tensor<16x64xf32>, tensor<64x4xf32>)",
                ", %arg1 : tensor<16x64xf32>, tensor<64x4xbf16>)",
            ),
    );
    let out = ppmoe(&[
        "compile",
        retyped.to_str().unwrap(),
        "-o",
        &s(&work.path().join("b")),
    ]);
    assert_clean_failure(
        &out,
        &[
            "retyped.mlir",
            "'inner.gate.weight.const1'",
            "tensor<64x4xbf16>",
            "tensor<64x4xf32>",
        ],
    );
    assert!(!work.path().join("b").exists(), "a bundle was left behind");

    let ir = write(work.path(), "moe.mlir", &moe);
    let out = ppmoe(&["inspect", ir.to_str().unwrap(), "--emit", "core"]);
    assert_clean_failure(&out, &["moe.mlir", "stage 'moe'", "'core' comes before it"]);

    let sharded = inspect(&model, &[], &["--tp", "2", "--emit", "sharded"]).unwrap();
    let at_tp2 = write(work.path(), "sharded.mlir", &sharded);
    let out = ppmoe(&[
        "inspect",
        at_tp2.to_str().unwrap(),
        "--tp",
        "4",
        "--emit",
        "pipelined",
    ]);
    assert_clean_failure(&out, &["sharded.mlir", "--tp 4", "shape = 1x1x2"]);

    // Ops the programs do not hold, attributes no op field takes, mistyped upstream ops: each
    // named, with the IR file.
    let edits = [
        (
            "frob.mlir",
            "tensor.reshape %4(%cst_1) : (tensor<16x64xf32>, tensor<3xi64>)",
            "\"core.frobnicate\"(%4) : (tensor<16x64xf32>)",
            "no op 'core.frobnicate'",
        ),
        (
            "swoosh.mlir",
            "activation = \"swiglu\"",
            "activation = \"swoosh\"",
            "unknown variant `swoosh`",
        ),
    ];
    for (name, from, to, says) in edits {
        assert!(moe.contains(from), "{from}");
        let ir = write(work.path(), name, &moe.replace(from, to));
        let out = ppmoe(&["inspect", ir.to_str().unwrap(), "--emit", "sharded"]);
        assert_clean_failure(&out, &[name, says]);
    }
    // A reshape edited to another shape: the router's matmul no longer fits, and linalg's
    // verifier says so as the IR is read.
    let reshaped = moe
        .replace("dense<[16, 64]>", "dense<[32, 32]>")
        .replace(
            "-> tensor<16x64xf32> loc(#loc4)",
            "-> tensor<32x32xf32> loc(#loc4)",
        )
        .replace(
            "ins(%reshape, %arg1 : tensor<16x64xf32>",
            "ins(%reshape, %arg1 : tensor<32x32xf32>",
        )
        .replace(
            "(tensor<16x64xf32>, tensor<16x2xf32>",
            "(tensor<32x32xf32>, tensor<16x2xf32>",
        );
    assert!(reshaped.contains("tensor<32x32xf32> loc(#loc4)"));
    let ir = write(work.path(), "reshaped.mlir", &reshaped);
    let out = ppmoe(&[
        "inspect",
        ir.to_str().unwrap(),
        "--tp",
        "2",
        "--emit",
        "sharded",
    ]);
    assert_clean_failure(
        &out,
        &[
            "reshaped.mlir",
            "the IR does not verify",
            "'linalg.matmul' op",
        ],
    );

    // Kernels IR whose plan no longer is the one its programs get, or whose kernels are not
    // those the plan launches: refused by name.
    let kernels = inspect(&model, &[], &["--emit", "kernels"]).unwrap();
    let launch = "threads = 512 : i64";
    assert!(kernels.contains(launch), "{kernels}");
    let refused = |edited: &str, needles: &[&str]| {
        let later = write(work.path(), "kernels.mlir", edited);
        let out = ppmoe(&["inspect", later.to_str().unwrap(), "--emit", "ptx"]);
        assert_clean_failure(&out, &[&["kernels.mlir"], needles].concat());
    };
    refused(
        &kernels.replacen(launch, "threads = 256 : i64", 1),
        &[
            "the plan of @rank0: op 2 is",
            "threads = 256",
            "the plan ppmoe-plan-kernels makes for the program is",
        ],
    );
    refused(
        &kernels.replacen("gpu.func @k2_route(", "gpu.func @k2_route_edited(", 1),
        &["gpu.module @rank0_kernels", "@k2_route_edited"],
    );
}
