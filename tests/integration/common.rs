//! Fixture discovery, the fixtures' reference outputs, and running the `ppmoe` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture folder (one model.onnx each), sorted by name.
pub fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 16,
        "expected the 16 exported fixtures, found {}",
        v.len()
    );
    v
}

/// `--input-shape` flags a fixture needs (its input has symbolic dimensions): batch 1, 16 tokens.
pub fn shape_flags(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("fixture.json")).unwrap();
    if text.contains("\"kind\": \"moe_subgraph\"") {
        let at = text.find("\"inputs\": [").unwrap();
        let name = text[at..].split('"').nth(3).unwrap().to_string();
        vec!["--input-shape".into(), format!("{name}=1x16x64")]
    } else if text.contains("\"kind\": \"lm\"") && text.contains("\"tokens\":") {
        // An LM exported with a dynamic sequence (examples/export_scale_models.py).
        let (name, tokens) = (
            fixture_field(dir, "input_name"),
            fixture_field(dir, "tokens"),
        );
        vec!["--input-shape".into(), format!("{name}=1x{tokens}")]
    } else {
        vec![]
    }
}

/// How close to PyTorch's output a fixture must come: 1e-4 for fp32 models; 3e-2 for bf16
/// ones (PyTorch rounds every op's result to bf16, the CPU backend only the GEMMs' inputs).
pub fn torch_tolerance(dir: &Path) -> f64 {
    // A model exported in half precision computes in it: PyTorch's reference and ppmoe's
    // output round differently (fp16 keeps 3 more mantissa bits than bf16).
    by_precision(dir, [3e-2, 5e-3, 1e-4])
}

/// How close a partitioned program's output must be to the single-rank one: fp32 1e-5; a
/// half-precision model's ranks round their partial sums to its type before they are added,
/// as PyTorch's tensor-parallel ranks do.
pub fn partitioned_tolerance(dir: &Path) -> f64 {
    by_precision(dir, [2e-2, 2e-3, 1e-5])
}

/// One of `[bf16, fp16, fp32]` by the type the fixture's model was exported in.
fn by_precision(dir: &Path, [bf16, fp16, fp32]: [f64; 3]) -> f64 {
    let text = std::fs::read_to_string(dir.join("fixture.json")).unwrap();
    if text.contains("bfloat16") {
        bf16
    } else if text.contains("float16") {
        fp16
    } else {
        fp32
    }
}

/// What `ppmoe run` names the file of an output: odd characters become '_'.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A small JSON reader for fixture.json: the fields the tests need, by plain text search.
pub fn fixture_field(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("fixture.json")).expect("fixture.json");
    let at = text
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {}", dir.display()));
    let rest = text[at + key.len() + 3..].trim_start();
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    rest[..end].trim().trim_matches('"').to_string()
}

/// The MoE layers ppmoe raises in a fixture: fixture.json's `moe_layers` where it says, else
/// two for the whole LMs (two decoder layers, all MoE) and one for a block.
pub fn moe_layers(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("fixture.json")).expect("fixture.json");
    if text.contains("\"moe_layers\":") {
        return fixture_field(dir, "moe_layers")
            .parse()
            .expect("moe_layers");
    }
    if fixture_field(dir, "kind") == "lm" {
        2
    } else {
        1
    }
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn ppmoe(args: &[&str]) -> Output {
    ppmoe_env(args, &[])
}

/// `ppmoe` with extra environment variables (a launcher's, for instance).
pub fn ppmoe_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ppmoe"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("ppmoe runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The command failed cleanly: non-zero exit, an `error:` line containing every `needle`, no panic.
pub fn assert_clean_failure(out: &Output, needles: &[&str]) {
    assert_ne!(
        out.code, 0,
        "expected failure, got success; stdout: {}",
        out.stdout
    );
    assert!(!out.stderr.contains("panicked"), "panic: {}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "stderr: {}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "stderr lacks '{n}': {}", out.stderr);
    }
}

/// Calls macro `$m` with the name of every fixture folder (tests per fixture are generated from
/// this one list; `every_fixture_has_a_numerics_test` checks it against tests/fixtures).
macro_rules! for_each_fixture {
    ($m:ident) => {
        $m!(
            gptoss_genai_moe,
            gshard_top2,
            gshard_top2_dynamo,
            mixtral_block_dynamo,
            mixtral_block_external,
            mixtral_block_ts_bmm,
            mixtral_block_ts_eager,
            mixtral_lm_dynamo,
            mixtral_lm_bf16_sdpa,
            olmoe_block_dynamo,
            olmoe_block_ts_bmm,
            olmoe_block_ts_eager,
            olmoe_lm_dynamo,
            qwen2moe_block_dynamo,
            qwen2moe_block_ts_bmm,
            qwen2moe_block_ts_eager,
            qwen2moe_lm_dynamo,
            mixtral_lm_sdpa,
            qwen2moe_lm_sdpa,
            olmoe_lm_sdpa,
            qwen3moe_lm_sdpa,
            qwen3moe_block_dynamo,
            granitemoe_lm_sdpa,
            gptoss_lm_sdpa,
            phimoe_lm_sdpa,
            deepseekv3_block_dynamo,
            gptoss_block_dynamo,
            qwen3moe_lm_bf16_sdpa,
            qwen3moe_lm_fp16_sdpa,
            qwen3moe_block_ts_bmm,
            qwen3moe_block_ts_eager,
            granitemoe_block_dynamo,
            granitemoe_block_ts_bmm,
            granitemoe_block_ts_eager,
        );
    };
}

/// The name of a fixture's (first) output, as fixture.json records it.
pub fn output_name(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("fixture.json")).expect("fixture.json");
    let at = text
        .find("\"outputs\": [")
        .expect("outputs in fixture.json");
    text[at..]
        .split('"')
        .nth(3)
        .expect("an output name")
        .to_string()
}

/// PyTorch's output for the fixture's input.
pub fn reference(dir: &Path) -> ppmoe_runtime::Tensor {
    ppmoe_runtime::npy::read_npy(&dir.join(format!("{}.npy", file_stem(&output_name(dir)))))
        .expect("the reference output")
}

/// Runs a compiled bundle of the fixture on the fixture's input; returns the output.
pub fn run_fixture(dir: &Path, bundle: &Path, out: &Path) -> ppmoe_runtime::Tensor {
    let input = dir.join(format!("{}.npy", fixture_field(dir, "input_name")));
    let r = ppmoe(&[
        "run",
        bundle.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}: {}", bundle.display(), r.stderr);
    ppmoe_runtime::npy::read_npy(&out.join(format!("{}.npy", file_stem(&output_name(dir)))))
        .expect("the output file")
}
