//! `ppmoe bench`: a bundle's forward, or one MoE layer of random weights at several token
//! counts, timed on the GPU (`ppmoe_runtime::bench`), printed and optionally written as JSON.

use crate::moe_layer::{self, Shape};
use anyhow::{Context as _, Result};
use ppmoe_runtime::bench::{bench, BenchReport};
use ppmoe_runtime::runner::InputArg;
use std::path::{Path, PathBuf};

pub struct Options {
    pub warmup: usize,
    pub iters: usize,
    pub profile: bool,
    /// The machine's measured matmul rate (TFLOP/s) and copy bandwidth (TB/s), for the floor.
    pub peak: Option<(f64, f64)>,
}

/// One timed case, as printed and written.
fn row(
    label: &str,
    tokens: Option<usize>,
    r: &BenchReport,
    flops: Option<f64>,
    floor_ms: Option<f64>,
) -> serde_json::Value {
    let ms = r.median_ms();
    let mut v = serde_json::json!({
        "case": label,
        "median_ms": ms,
        "min_ms": r.forward_ms.first().copied().unwrap_or(0.0),
        "max_ms": r.forward_ms.last().copied().unwrap_or(0.0),
        "runs": r.forward_ms.len(),
    });
    if let Some(t) = tokens {
        v["tokens"] = t.into();
    }
    if let Some(f) = flops {
        v["tflops"] = (f / (ms * 1e-3) / 1e12).into();
    }
    if let Some(fl) = floor_ms {
        v["floor_ms"] = fl.into();
        v["times_floor"] = (ms / fl).into();
    }
    if !r.instructions.is_empty() {
        v["instructions"] = r
            .instructions
            .iter()
            .map(|i| serde_json::json!({"index": i.index, "op": i.op, "origin": i.origin, "median_ms": i.median_ms}))
            .collect();
    }
    v
}

fn print(v: &serde_json::Value) {
    let f = |k: &str| v[k].as_f64();
    let mut line = format!(
        "{}{}: {:.3} ms (min {:.3}, max {:.3}; {} runs)",
        v["case"].as_str().unwrap_or(""),
        v["tokens"]
            .as_u64()
            .map_or(String::new(), |t| format!(" T={t}")),
        f("median_ms").unwrap_or(0.0),
        f("min_ms").unwrap_or(0.0),
        f("max_ms").unwrap_or(0.0),
        v["runs"]
    );
    if let Some(t) = f("tflops") {
        line.push_str(&format!(", {t:.1} TFLOP/s"));
    }
    if let (Some(fl), Some(x)) = (f("floor_ms"), f("times_floor")) {
        line.push_str(&format!(", floor {fl:.3} ms ({x:.2} x the floor)"));
    }
    println!("{line}");
    if let Some(ins) = v["instructions"].as_array() {
        println!("  slowest instructions (median ms):");
        for i in ins.iter().take(12) {
            println!(
                "  {:>9.3}  #{:<4} {:<16} {}",
                i["median_ms"].as_f64().unwrap_or(0.0),
                i["index"],
                i["op"].as_str().unwrap_or(""),
                i["origin"].as_str().unwrap_or("")
            );
        }
    }
}

/// `ppmoe bench BUNDLE`.
pub fn bundle(dir: &Path, inputs: &[String], o: &Options) -> Result<Vec<serde_json::Value>> {
    let args: Vec<InputArg> = inputs.iter().map(|s| InputArg::parse(s)).collect();
    let r = bench(dir, &args, o.warmup, o.iters, o.profile)?;
    let v = row(&dir.display().to_string(), None, &r, None, None);
    print(&v);
    Ok(vec![v])
}

/// `ppmoe bench --moe H,F,E,K --tokens T,...`: per token count, the layer is compiled
/// (`--target cuda --dtype bf16`) from the model `moe_layer` writes, then timed.
pub fn moe(
    spec: &str,
    tokens: &str,
    work: Option<PathBuf>,
    o: &Options,
) -> Result<Vec<serde_json::Value>> {
    let shape = Shape::parse(spec)?;
    // Before minutes of writing and compiling: this needs a GPU.
    ppmoe_runtime::cuda::available()
        .map_err(|e| anyhow::anyhow!("backend 'cuda' is not available: {e}"))?;
    let counts: Vec<usize> = tokens
        .split(',')
        .map(|t| t.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--tokens {tokens}: expected comma-separated integers"))?;
    let (dir, temporary) = match work {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("ppmoe-bench-{}", std::process::id())),
            true,
        ),
    };
    let result = (|| {
        let model = moe_layer::write(&dir, shape, 0x5eed)?;
        let mut rows = Vec::new();
        for &t in &counts {
            let bundle = dir.join(format!("bundle-{t}"));
            let mut c = ppmoe_compiler::pipeline::Compilation::new(
                &model,
                &[("x".to_string(), vec![t as i64, shape.hidden as i64])],
            );
            c.target_cuda = true;
            c.weight_dtype = Some(ppmoe_runtime::DType::BF16);
            ppmoe_compiler::compile(c, &bundle)?;
            let r = bench(&bundle, &[], o.warmup, o.iters, o.profile)?;
            let floor = o.peak.map(|(tflops, tbs)| {
                (shape.flops(t) / (tflops * 1e12)).max(shape.bytes(t) / (tbs * 1e12)) * 1e3
            });
            let v = row(
                &format!("moe {spec}"),
                Some(t),
                &r,
                Some(shape.flops(t)),
                floor,
            );
            print(&v);
            rows.push(v);
            let _ = std::fs::remove_dir_all(&bundle);
        }
        Ok(rows)
    })();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
