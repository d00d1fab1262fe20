//! Bad bundles and bad inputs to `ppmoe run`: clear errors, non-zero exits, no panics, and no
//! output files left behind as if the run had succeeded.

use crate::common::{assert_clean_failure, fixtures_dir, ppmoe, Output};
use ppmoe_runtime::npy::write_npy;
use ppmoe_runtime::Tensor;
use std::path::{Path, PathBuf};

struct Case {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    out: PathBuf,
    input: PathBuf,
}

fn compiled() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    let c = ppmoe(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let out = dir.path().join("out");
    let input = fixtures_dir().join("olmoe_block_dynamo/hidden_states.npy");
    Case {
        bundle,
        out,
        input,
        _dir: dir,
    }
}

fn run(c: &Case, inputs: &[&Path]) -> crate::common::Output {
    let mut args = vec![
        "run".to_string(),
        c.bundle.display().to_string(),
        "--output-dir".into(),
        c.out.display().to_string(),
    ];
    for i in inputs {
        args.push("--input".into());
        args.push(i.display().to_string());
    }
    ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Edits the manifest as a tool (or a newer ppmoe) would, its checksum written to match: what
/// is then refused is refused for what the manifest says, not for the edit.
fn rewrite_manifest(c: &Case, edit: impl Fn(&mut serde_json::Value)) {
    let p = c.bundle.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    let text = serde_json::to_vec_pretty(&v).unwrap();
    std::fs::write(&p, &text).unwrap();
    let sum = format!(
        "{}  manifest.json\n",
        ppmoe_runtime::bundle::sha256_hex(&text)
    );
    std::fs::write(c.bundle.join("manifest.sha256"), sum).unwrap();
}

/// Rank 0's GPU plan replaced: every instruction on the host but `entries` (index, entry).
fn gpu_plan(v: &mut serde_json::Value, entries: Vec<(usize, serde_json::Value)>) {
    let n = v["programs"][0]["instructions"].as_array().unwrap().len();
    let mut plan = vec![serde_json::json!({"kind": "host"}); n];
    for (i, e) in entries {
        plan[i] = e;
    }
    v["programs"][0]["gpu"] = plan.into();
}

fn assert_no_outputs(c: &Case) {
    let left: Vec<_> = std::fs::read_dir(&c.out)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "outputs left behind: {left:?}");
}

#[test]
fn a_good_bundle_runs_and_writes_its_output() {
    let c = compiled();
    let out = run(&c, &[&c.input]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(c.out.join("view_5.npy").exists());
    assert_eq!(
        std::fs::read_dir(&c.out).unwrap().count(),
        1,
        "exactly the one output, no temporary left"
    );
}

#[test]
fn a_missing_weights_file_is_reported() {
    let c = compiled();
    std::fs::remove_file(c.bundle.join("rank0.safetensors")).unwrap();
    assert_clean_failure(&run(&c, &[&c.input]), &["rank0.safetensors", "cannot read"]);
    assert_no_outputs(&c);
}

#[test]
fn an_altered_weights_file_fails_its_checksum() {
    let c = compiled();
    let p = c.bundle.join("rank0.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    assert_clean_failure(
        &run(&c, &[&c.input]),
        &["rank0.safetensors", "checksum mismatch"],
    );
    assert_no_outputs(&c);
}

#[test]
fn an_unknown_format_version_is_refused() {
    let c = compiled();
    rewrite_manifest(&c, |v| v["format_version"] = 99.into());
    assert_clean_failure(
        &run(&c, &[&c.input]),
        &[
            "manifest.json",
            "format version 99",
            "reads version 2",
            "compile the model again",
        ],
    );
}

#[test]
fn an_edited_manifest_fails_its_checksum() {
    let c = compiled();
    let p = c.bundle.join("manifest.json");
    // One changed character in a program: without the checksum this ran and wrote wrong output.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("\"top_k\": 2", "\"top_k\": 1", 1);
    std::fs::write(&p, text).unwrap();
    assert_clean_failure(&run(&c, &[&c.input]), &["manifest.json", "checksum"]);
    assert_no_outputs(&c);
    std::fs::remove_file(c.bundle.join("manifest.sha256")).unwrap();
    assert_clean_failure(&run(&c, &[&c.input]), &["manifest.sha256"]);
}

#[test]
fn files_a_bundle_names_stay_inside_it_and_are_regular_files() {
    let c = compiled();
    let outside = c.bundle.parent().unwrap().join("elsewhere.safetensors");
    std::fs::copy(c.bundle.join("rank0.safetensors"), &outside).unwrap();
    for name in [
        outside.display().to_string(),
        "../elsewhere.safetensors".into(),
    ] {
        rewrite_manifest(&c, |v| {
            v["programs"][0]["weights_file"] = name.clone().into();
        });
        assert_clean_failure(&run(&c, &[&c.input]), &[&name, "plain name inside"]);
    }
    // A FIFO where the weights file was: refused at once, never opened (a read would block).
    rewrite_manifest(&c, |v| {
        v["programs"][0]["weights_file"] = "rank0.safetensors".into();
    });
    std::fs::remove_file(c.bundle.join("rank0.safetensors")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(c.bundle.join("rank0.safetensors"))
        .status()
        .unwrap();
    assert!(made.success());
    assert_clean_failure(
        &run(&c, &[&c.input]),
        &["rank0.safetensors", "not a regular file"],
    );
    assert_no_outputs(&c);
}

#[test]
fn a_program_that_does_not_fit_its_tables_is_refused_before_it_runs() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, Vec<&str>)> = vec![
        (
            Box::new(|v| v["programs"][0]["instructions"][0]["inputs"][0] = 100000.into()),
            vec![
                "rank 0",
                "instruction 0",
                "inputs",
                "buffer 100000",
                "past the buffer table",
            ],
        ),
        (
            Box::new(|v| v["programs"][0]["outputs"][0] = 99999.into()),
            vec!["rank 0", "the program's outputs", "buffer 99999"],
        ),
        (
            Box::new(|v| v["microbatches"] = (1u64 << 31).into()),
            vec!["microbatches = 2147483648", "expected 1 to 65536"],
        ),
        (
            Box::new(|v| {
                // The first instruction made a transpose whose permutation repeats an axis.
                let first = &mut v["programs"][0]["instructions"][0];
                let keep = (first["inputs"].clone(), first["outputs"].clone());
                *first = serde_json::json!({"op": "transpose", "perm": [1, 1], "inputs": keep.0, "outputs": keep.1, "origin": "edited"});
            }),
            vec!["rank 0", "(transpose) perm", "not a permutation"],
        ),
        (
            Box::new(|v| {
                // The first instruction made an addition of one operand.
                let first = &mut v["programs"][0]["instructions"][0];
                let keep = (first["inputs"].clone(), first["outputs"].clone());
                *first = serde_json::json!({"op": "binary", "f": "add", "inputs": keep.0, "outputs": keep.1, "origin": "edited"});
            }),
            vec![
                "rank 0",
                "instruction 0 (add) inputs",
                "1 operands where the op takes 2",
            ],
        ),
        (
            Box::new(|v| {
                // A GPU plan whose first entry says it is done by a step that does not exist.
                let n = v["programs"][0]["instructions"].as_array().unwrap().len();
                gpu_plan(
                    v,
                    vec![(0, serde_json::json!({"kind": "fused", "into": n + 5}))],
                );
            }),
            vec!["rank 0", "GPU plan entry 0", "no later step naming it"],
        ),
        (
            Box::new(|v| {
                // A pointwise chain naming a member that is not fused into it.
                let chain = serde_json::json!({"kind": "pointwise", "name": "k1_pointwise", "threads": 1, "inputs": [0], "members": [0]});
                gpu_plan(v, vec![(1, chain)]);
            }),
            vec![
                "rank 0",
                "GPU plan entry 1",
                "pointwise chain of members [0]",
            ],
        ),
        (
            Box::new(|v| {
                // A pointwise chain whose kernel would read a member's result (never made)
                // instead of the chain's operands.
                let made = v["programs"][0]["instructions"][0]["outputs"][0].clone();
                let chain = serde_json::json!({"kind": "pointwise", "name": "k1_pointwise", "threads": 1, "inputs": [made], "members": [0]});
                let member = serde_json::json!({"kind": "fused", "into": 1});
                gpu_plan(v, vec![(0, member), (1, chain)]);
            }),
            vec![
                "rank 0",
                "GPU plan entry 1",
                "buffers the chain reads from outside it",
            ],
        ),
        (
            Box::new(|v| {
                // An instruction said to be reduced by a step that does not name it.
                gpu_plan(
                    v,
                    vec![(1, serde_json::json!({"kind": "reduced_by", "step": 0}))],
                );
            }),
            vec![
                "rank 0",
                "GPU plan entry 1",
                "no earlier local-experts step naming this all-reduce",
            ],
        ),
        (
            Box::new(|v| {
                // The route's logits said to score more experts than the experts step's
                // weights hold (its GPU kernels would read past them).
                let p = &mut v["programs"][0];
                let ins = p["instructions"].as_array().unwrap().clone();
                let route = ins.iter().find(|i| i["op"] == "moe_route").unwrap();
                let logits = route["inputs"][0].as_u64().unwrap() as usize;
                p["buffers"][logits]["shape"][1] = 64.into();
            }),
            vec![
                "rank 0",
                "(experts)",
                "its route chooses among 64 experts, its weights hold",
            ],
        ),
    ];
    for (edit, needles) in cases {
        let c = compiled();
        rewrite_manifest(&c, edit);
        assert_clean_failure(&run(&c, &[&c.input]), &needles);
        assert_no_outputs(&c);
    }
}

#[test]
fn an_input_of_the_wrong_shape_is_refused() {
    let c = compiled();
    let bad = c.bundle.parent().unwrap().join("short.npy");
    write_npy(&bad, &Tensor::f32(vec![1, 8, 64], vec![0.5; 8 * 64])).unwrap();
    assert_clean_failure(
        &run(&c, &[&bad]),
        &["hidden_states", "expected shape [1, 16, 64]", "[1, 8, 64]"],
    );
    assert_no_outputs(&c);
}

#[test]
fn an_input_of_the_wrong_dtype_is_refused() {
    let c = compiled();
    let bad = c.bundle.parent().unwrap().join("ints.npy");
    write_npy(&bad, &Tensor::i64(vec![1, 16, 64], vec![1; 16 * 64])).unwrap();
    assert_clean_failure(
        &run(&c, &[&bad]),
        &["hidden_states", "expected dtype float32, got int64"],
    );
    assert_no_outputs(&c);
}

#[test]
fn a_missing_input_is_named() {
    let c = compiled();
    assert_clean_failure(&run(&c, &[]), &["input 'hidden_states'", "missing"]);
    assert_no_outputs(&c);
}

#[test]
fn an_input_bound_to_an_unknown_name_is_refused() {
    let c = compiled();
    let arg = format!("tokens={}", c.input.display());
    let out = ppmoe(&[
        "run",
        c.bundle.to_str().unwrap(),
        "--input",
        &arg,
        "--output-dir",
        c.out.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["tokens", "no input of that name", "hidden_states"]);
}

#[test]
fn a_folder_that_is_not_a_bundle_is_refused_and_not_overwritten_by_compile() {
    let c = compiled();
    let plain = c.bundle.parent().unwrap().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), "mine").unwrap();
    assert_clean_failure(
        &ppmoe(&[
            "run",
            plain.to_str().unwrap(),
            "--input",
            c.input.to_str().unwrap(),
            "--output-dir",
            c.out.to_str().unwrap(),
        ]),
        &["manifest.json"],
    );
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    let out = ppmoe(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        plain.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["not a ppmoe bundle", "refusing to overwrite"]);
    assert_eq!(
        std::fs::read_to_string(plain.join("notes.txt")).unwrap(),
        "mine"
    );
}

/// `ppmoe run` of `c` on the CUDA backend (`--backend cuda`), with `env` set.
fn run_on_cuda(c: &Case, env: &[(&str, &str)]) -> Output {
    let args = [
        "run",
        c.bundle.to_str().unwrap(),
        "--input",
        c.input.to_str().unwrap(),
        "--output-dir",
        c.out.to_str().unwrap(),
        "--backend",
        "cuda",
    ];
    crate::common::ppmoe_env(&args, env)
}

#[test]
fn the_cuda_backend_without_a_gpu_says_which_library_is_missing_and_where_it_looked() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        return; // A GPU machine: scripts/gpu-test covers the CUDA backend there.
    }
    let c = compiled();
    let out = run_on_cuda(&c, &[]);
    assert_clean_failure(
        &out,
        &[
            "backend 'cuda' is not available",
            "libcuda",
            "was not found on the library path",
        ],
    );
    assert_no_outputs(&c);
}

/// A driver library that lacks the driver API (here one that defines only `cuInit`, which
/// fails; an older or partial libcuda ahead on the library path) is named as such: cudarc's
/// lookup of the missing function panicked before.
#[test]
fn a_libcuda_without_the_driver_api_is_named_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("cuda.c");
    std::fs::write(&source, "int cuInit(unsigned flags) { return 100; }\n").unwrap();
    let lib = dir.path().join("libcuda.so.1");
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) builds the stand-in library");
    assert!(cc.success());
    std::fs::copy(&lib, dir.path().join("libcuda.so")).unwrap();
    let c = compiled();
    let out = run_on_cuda(&c, &[("LD_LIBRARY_PATH", dir.path().to_str().unwrap())]);
    assert_clean_failure(
        &out,
        &[
            "backend 'cuda' is not available",
            "lacks the driver API",
            "Missing symbol cuGetErrorString",
        ],
    );
    assert_no_outputs(&c);
}

#[test]
fn auto_backend_runs_a_cuda_bundle_on_the_cpu_where_there_is_no_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("cuda");
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    let c = ppmoe(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--target",
        "cuda",
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(bundle.join("rank0.ptx").exists());
    let manifest = std::fs::read_to_string(bundle.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"rank0.ptx\"") && manifest.contains("\"kind\": \"gemm\""),
        "the GPU plan and PTX are in the bundle"
    );
    let input = fixtures_dir().join("olmoe_block_dynamo/hidden_states.npy");
    let reference = fixtures_dir().join("olmoe_block_dynamo/view_5.npy");
    let out = ppmoe(&[
        "run",
        bundle.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        dir.path().join("o").to_str().unwrap(),
        "--check",
        reference.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    if !std::path::Path::new("/dev/nvidia0").exists() {
        assert!(out.stdout.contains("(cpu backend)"), "{}", out.stdout);
    }
}

#[test]
fn check_against_a_wrong_reference_fails_with_the_error_printed() {
    let c = compiled();
    // The input has the output's shape but not its values.
    let arg = c.input.display().to_string();
    let out = ppmoe(&[
        "run",
        c.bundle.to_str().unwrap(),
        "--input",
        &arg,
        "--output-dir",
        c.out.to_str().unwrap(),
        "--check",
        &arg,
    ]);
    assert_clean_failure(&out, &["differs from its reference"]);
    assert!(out.stdout.contains("MISMATCH"), "{}", out.stdout);
    let right = fixtures_dir().join("olmoe_block_dynamo/view_5.npy");
    let ok = ppmoe(&[
        "run",
        c.bundle.to_str().unwrap(),
        "--input",
        &arg,
        "--output-dir",
        c.out.to_str().unwrap(),
        "--check",
        right.to_str().unwrap(),
    ]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout.contains("output 'view_5': relative error") && ok.stdout.contains(": ok"),
        "{}",
        ok.stdout
    );
}

#[test]
fn one_process_per_gpu_without_gpus_fails_on_every_rank_and_says_why() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        return; // A GPU machine: scripts/gpu-test runs multi-rank bundles there.
    }
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("tp2");
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    let c = ppmoe(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--target",
        "cuda",
        "--tp",
        "2",
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let input = fixtures_dir().join("olmoe_block_dynamo/hidden_states.npy");
    let out_dir = dir.path().join("out");
    let run_with = |procs: &str| {
        ppmoe(&[
            "run",
            bundle.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output-dir",
            out_dir.to_str().unwrap(),
            "--nproc-per-node",
            procs,
        ])
    };
    let out = run_with("2");
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // Each rank's own message, prefixed with its rank, then the launcher's verdict.
    assert!(
        out.stderr.contains("[rank 0] error:") || out.stderr.contains("[rank 1] error:"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("libcuda"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: the run failed on at least one rank"),
        "{}",
        out.stderr
    );
    assert!(
        !out_dir.exists() || std::fs::read_dir(&out_dir).unwrap().next().is_none(),
        "no outputs are left"
    );
    // A thousand processes were started; now the count is refused before any starts.
    let many = run_with("1000");
    crate::common::assert_clean_failure(&many, &["--nproc-per-node 1000", "refused"]);
    assert!(!many.stderr.contains("[rank"), "{}", many.stderr);
}

#[test]
fn a_multi_rank_bundle_on_one_process_asks_for_a_launcher() {
    // The CPU backend runs every rank as a thread; under a launcher it refuses (one process
    // would otherwise compute every rank).
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("tp2");
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    assert_eq!(
        ppmoe(&[
            "compile",
            model.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "--tp",
            "2"
        ])
        .code,
        0
    );
    let input = fixtures_dir().join("olmoe_block_dynamo/hidden_states.npy");
    let out = crate::common::ppmoe_env(
        &[
            "run",
            bundle.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output-dir",
            dir.path().join("o").to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        &[("RANK", "1"), ("WORLD_SIZE", "2")],
    );
    assert_clean_failure(
        &out,
        &[
            "rank 1 of 2 processes",
            "torchrun",
            "run it once, without a launcher",
        ],
    );
}

#[test]
fn a_rank_process_checks_and_loads_only_its_own_files() {
    use ppmoe_runtime::bundle::{read_bundle, read_bundle_for};
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("tp2");
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    assert_eq!(
        ppmoe(&[
            "compile",
            model.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "--tp",
            "2",
            "--target",
            "cuda"
        ])
        .code,
        0
    );
    // Rank 1's weights are damaged: the whole bundle is refused, rank 0's process is not.
    let w1 = bundle.join("rank1.safetensors");
    let mut bytes = std::fs::read(&w1).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&w1, bytes).unwrap();
    let whole = read_bundle(&bundle)
        .err()
        .expect("a damaged file is refused")
        .to_string();
    assert!(
        whole.contains("rank1.safetensors") && whole.contains("checksum mismatch"),
        "{whole}"
    );
    let rank0 = read_bundle_for(&bundle, Some(0)).expect("rank 0's files are whole");
    assert!(!rank0.weights[0].is_empty() && rank0.weights[1].is_empty());
    let rank1 = read_bundle_for(&bundle, Some(1))
        .err()
        .expect("rank 1's own file is damaged")
        .to_string();
    assert!(rank1.contains("rank1.safetensors"), "{rank1}");
}

#[test]
fn a_npy_input_must_be_exactly_what_its_header_says() {
    let c = compiled();
    let good = std::fs::read(&c.input).unwrap();
    let dir = c.bundle.parent().unwrap();
    let variant = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let short = variant("short.npy", good[..good.len() - 1].to_vec());
    let long = variant("long.npy", [good.clone(), vec![0; 4]].concat());
    // A header nested 20 deep took seconds to parse (exponential); deeper never ended.
    let mut nested = b"\x93NUMPY\x01\x00".to_vec();
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}1{}, }}",
        "(".repeat(20),
        ")".repeat(20)
    );
    nested.extend_from_slice(&(header.len() as u16).to_le_bytes());
    nested.extend_from_slice(header.as_bytes());
    let nested = variant("nested.npy", nested);
    for (file, needle) in [
        (short.as_path(), "data bytes where the header"),
        (long.as_path(), "data bytes where the header"),
        (nested.as_path(), "nested more than 3 deep"),
        (Path::new("/dev/zero"), "not a regular file"),
    ] {
        let t = std::time::Instant::now();
        assert_clean_failure(&run(&c, &[file]), &[&file.display().to_string(), needle]);
        assert!(
            t.elapsed().as_secs() < 10,
            "{} took {:?}",
            file.display(),
            t.elapsed()
        );
        assert_no_outputs(&c);
    }
}

#[test]
fn a_rank_that_fails_ends_the_run_at_once_with_its_own_error() {
    // Rank 1 of a tp 2 bundle fails at its first instruction; rank 0 would wait for it in the
    // all-reduce. The run must end promptly, and with rank 1's error, not its peer's.
    let dir = tempfile::tempdir().unwrap();
    let c = Case {
        bundle: dir.path().join("tp2"),
        out: dir.path().join("out"),
        input: fixtures_dir().join("olmoe_block_dynamo/hidden_states.npy"),
        _dir: dir,
    };
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    let made = ppmoe(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        c.bundle.to_str().unwrap(),
        "--tp",
        "2",
    ]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    rewrite_manifest(&c, |v| {
        let p = &mut v["programs"][1]["instructions"][0];
        assert_eq!(p["op"], "reshape_to");
        p["shape"] = serde_json::json!([7, 3]);
    });
    let t = std::time::Instant::now();
    let out = run(&c, &[&c.input]);
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
    assert_clean_failure(&out, &["rank 1", "instruction 0"]);
    assert!(!out.stderr.contains("peer rank failed"), "{}", out.stderr);
    assert_no_outputs(&c);
}

#[test]
fn an_overlapped_all_reduce_of_another_buffer_than_the_steps_sum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("tp2");
    let model = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    let m = model.to_str().unwrap();
    let b = bundle.to_str().unwrap();
    let out = ppmoe(&["compile", m, "-o", b, "--tp", "2", "--target", "cuda"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c = Case {
        bundle,
        out: dir.path().join("out"),
        input: fixtures_dir().join("olmoe_block_dynamo/hidden_states.npy"),
        _dir: dir,
    };
    rewrite_manifest(&c, |v| {
        // The all-reduce the local-experts step does now reduces the step's own input x.
        let p = &mut v["programs"][0];
        let (step, reduce) = p["gpu"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .find_map(|(i, g)| Some((i, g["reduce"].as_u64()? as usize)))
            .expect("an overlapped step");
        let slice = p["gpu"][step]["slice"].as_u64().unwrap() as usize;
        let x = p["instructions"][slice]["inputs"][0].clone();
        p["instructions"][reduce]["inputs"][0] = x;
    });
    assert_clean_failure(
        &run(&c, &[&c.input]),
        &["rank 0", "an all-reduce it does of its sum"],
    );
    assert_no_outputs(&c);
}
