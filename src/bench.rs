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

/// How `--moe` spreads the layer: over `tp` GPUs (one process each) with `strategy`.
pub struct MoeGrid {
    pub tp: usize,
    pub strategy: ppmoe_compiler::distribute::Strategy,
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
        "forward_ms": r.forward_ms.clone(),
    });
    if let Some(t) = tokens {
        v["tokens"] = t.into();
    }
    v["host_reads"] = r.host_reads.into();
    v["cuda_graph_nodes"] = r.graph_nodes.into();
    if !r.rank_median_ms.is_empty() {
        v["rank_median_ms"] = r.rank_median_ms.clone().into();
    }
    // Per rank, and the slowest rank's under the short name.
    for (ranks, each, slowest) in [
        (&r.rank_nccl_median_ms, "rank_nccl_median_ms", "nccl_ms"),
        (
            &r.rank_nccl_exposed_median_ms,
            "rank_nccl_exposed_median_ms",
            "nccl_exposed_ms",
        ),
    ] {
        if !ranks.is_empty() {
            v[each] = ranks.clone().into();
            v[slowest] = ranks.iter().copied().fold(0.0, f64::max).into();
        }
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
    if !r.phases.is_empty() {
        v["phases"] = r
            .phases
            .iter()
            .map(|(name, ms)| serde_json::json!({"phase": name, "median_ms": ms}))
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
    if let Some(ranks) = v["rank_median_ms"].as_array() {
        let each: Vec<String> = ranks
            .iter()
            .map(|m| format!("{:.3}", m.as_f64().unwrap_or(0.0)))
            .collect();
        line.push_str(&format!(
            "; slowest rank per forward; each rank's median {} ms",
            each.join(", ")
        ));
    }
    if let Some(n) = f("nccl_ms") {
        let exposed = f("nccl_exposed_ms").unwrap_or(n).min(n);
        let hidden = if n > 0.0 { 1.0 - exposed / n } else { 0.0 };
        line.push_str(&format!(
            "; inside NCCL calls {n:.3} ms per forward, {exposed:.3} ms of it not hidden behind computation ({:.0}% hidden; the slowest rank's medians)",
            hidden * 100.0
        ));
    }
    if let Some(n) = v["host_reads"].as_u64() {
        line.push_str(&format!("; {n} device-to-host copies per forward"));
    }
    match v["cuda_graph_nodes"].as_u64() {
        Some(n) if n > 0 => line.push_str(&format!("; replayed as a CUDA graph of {n} nodes")),
        _ => {}
    }
    if let (Some(fl), Some(x)) = (f("floor_ms"), f("times_floor")) {
        line.push_str(&format!(", floor {fl:.3} ms ({x:.2} x the floor)"));
    }
    out!("{line}");
    if let Some(ins) = v["instructions"].as_array() {
        out!("  slowest instructions (median ms):");
        for i in ins.iter().take(12) {
            out!(
                "  {:>9.3}  #{:<4} {:<16} {}",
                i["median_ms"].as_f64().unwrap_or(0.0),
                i["index"],
                i["op"].as_str().unwrap_or(""),
                i["origin"].as_str().unwrap_or("")
            );
        }
        print_by_op(ins);
    }
    if let Some(phases) = v["phases"].as_array() {
        out!("  parts of steps (median ms per forward):");
        for p in phases {
            out!(
                "  {:>9.3}  {}",
                p["median_ms"].as_f64().unwrap_or(0.0),
                p["phase"].as_str().unwrap_or("")
            );
        }
    }
}

/// The profile summed by op (the sum of each instruction's median), the largest first: where
/// a forward's many small instructions add up.
fn print_by_op(ins: &[serde_json::Value]) {
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for i in ins {
        let (op, ms) = (
            i["op"].as_str().unwrap_or(""),
            i["median_ms"].as_f64().unwrap_or(0.0),
        );
        match by_op.iter_mut().find(|(o, _, _)| o == op) {
            Some(e) => {
                e.1 += ms;
                e.2 += 1;
            }
            None => by_op.push((op.to_string(), ms, 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = by_op.iter().map(|e| e.1).sum();
    out!("  by op (sum of medians, ms; {total:.3} in all):");
    for (op, ms, n) in by_op.iter().take(16) {
        out!("  {ms:>9.3}  {op:<16} x{n}");
    }
}

/// `ppmoe bench BUNDLE`.
pub fn bundle(dir: &Path, inputs: &[String], o: &Options) -> Result<Vec<serde_json::Value>> {
    let args: Vec<InputArg> = inputs.iter().map(|s| InputArg::parse(s)).collect();
    let r = bench(dir, &args, o.warmup, o.iters, o.profile)?;
    // One report per run: rank 0's (it holds every rank's times).
    if !r.reporter {
        return Ok(Vec::new());
    }
    let v = row(&dir.display().to_string(), None, &r, None, None);
    print(&v);
    Ok(vec![v])
}

/// `ppmoe bench --moe H,F,E,K --tokens T,...`: per token count, the layer is compiled
/// (`--target cuda`, the weights in `dtype`) from the model `moe_layer` writes, then timed.
pub fn moe(
    (spec, dtype): (&str, moe_layer::LayerType),
    tokens: &str,
    grid: &MoeGrid,
    work: Option<PathBuf>,
    o: &Options,
) -> Result<Vec<serde_json::Value>> {
    let shape = Shape {
        dtype,
        ..Shape::parse(spec)?
    };
    // Before minutes of writing and compiling: this needs a GPU.
    ppmoe_runtime::cuda::require()?;
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
            let mut c = moe_layer::cuda_compilation(&model, shape, t);
            c.options.grid = Some(ppmoe_compiler::distribute::Grid {
                dp: 1,
                pp: 1,
                tp: grid.tp,
            });
            c.options.strategy = Some(grid.strategy);
            ppmoe_compiler::compile(c, &bundle)?;
            let r = time_bundle(&bundle, grid.tp, o)?;
            // The floor of the layer spread over tp GPUs: each does 1/tp of the work and reads
            // 1/tp of the weights. The matmul rate given is bf16's (the peers'): fp32 rows have
            // none.
            let peak = o.peak.filter(|_| dtype == moe_layer::LayerType::Bf16);
            let floor = peak.map(|(tflops, tbs)| {
                (shape.flops(t) / (tflops * 1e12)).max(shape.bytes(t) / (tbs * 1e12)) * 1e3
                    / grid.tp as f64
            });
            // bf16 rows as they were labelled before fp32 ones existed (scripts read them).
            let spec = match dtype {
                moe_layer::LayerType::Bf16 => spec.to_string(),
                other => format!("{spec} {}", other.name()),
            };
            let label = match grid.tp {
                1 => format!("moe {spec}"),
                tp => format!("moe {spec} tp{tp} {}", strategy_name(grid.strategy)),
            };
            let v = row(&label, Some(t), &r, Some(shape.flops(t)), floor);
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

fn strategy_name(s: ppmoe_compiler::distribute::Strategy) -> &'static str {
    use ppmoe_compiler::distribute::Strategy;
    match s {
        Strategy::AllToAll => "alltoall",
        Strategy::Ppmoe => "ppmoe",
        Strategy::Auto => "auto",
    }
}

/// Times a bundle in this process (one rank), or as `ranks` processes, one per GPU, through
/// `ppmoe bench BUNDLE --nproc-per-node`, read back from rank 0's JSON.
fn time_bundle(bundle: &Path, ranks: usize, o: &Options) -> Result<BenchReport> {
    if ranks == 1 {
        return Ok(bench(bundle, &[], o.warmup, o.iters, o.profile)?);
    }
    let json = bundle.join("bench.json");
    let mut args: Vec<String> = vec![
        "bench".into(),
        bundle.display().to_string(),
        "--warmup".into(),
        o.warmup.to_string(),
        "--iters".into(),
        o.iters.to_string(),
        "--json".into(),
        json.display().to_string(),
    ];
    if o.profile {
        args.push("--profile".into());
    }
    let code =
        ppmoe_runtime::distributed::launch_local(ranks, &args).map_err(anyhow::Error::msg)?;
    if code != 0 {
        anyhow::bail!(
            "timing {} failed on a rank (exit code {code})",
            bundle.display()
        );
    }
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("reading rank 0's timings {}", json.display()))?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    let r = rows
        .first()
        .with_context(|| format!("{}: no timed row", json.display()))?;
    let floats = |k: &str| -> Vec<f64> {
        r[k].as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default()
    };
    let instructions = r["instructions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| ppmoe_runtime::bench::InstructionTime {
                    index: i["index"].as_u64().unwrap_or(0) as usize,
                    op: i["op"].as_str().unwrap_or("").to_string(),
                    origin: i["origin"].as_str().unwrap_or("").to_string(),
                    median_ms: i["median_ms"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(BenchReport {
        forward_ms: floats("forward_ms"),
        rank_median_ms: floats("rank_median_ms"),
        rank_nccl_median_ms: floats("rank_nccl_median_ms"),
        rank_nccl_exposed_median_ms: floats("rank_nccl_exposed_median_ms"),
        reporter: true,
        instructions,
        host_reads: r["host_reads"].as_u64().unwrap_or(0) as usize,
        graph_nodes: r["cuda_graph_nodes"].as_u64().unwrap_or(0) as usize,
        phases: r["phases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let name = p["phase"].as_str().unwrap_or("").to_string();
                        (name, p["median_ms"].as_f64().unwrap_or(0.0))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Sizes like `32M,64M,1G` (KiB, MiB, GiB; a bare number is bytes).
fn parse_sizes(spec: &str) -> Result<Vec<usize>> {
    spec.split(',')
        .map(|t| {
            let t = t.trim();
            let (num, unit) = match t.chars().last() {
                Some('K' | 'k') => (&t[..t.len() - 1], 1usize << 10),
                Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
                Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
                _ => (t, 1),
            };
            num.parse::<usize>()
                .ok()
                .and_then(|n| n.checked_mul(unit))
                .filter(|&b| b >= 4)
                .with_context(|| {
                    format!(
                        "--all-reduce {spec}: '{t}' is not a size of 4 bytes or more (e.g. 64M)"
                    )
                })
        })
        .collect()
}

/// `ppmoe bench --all-reduce SIZES` (one process per GPU): the runtime's own NCCL all-reduce
/// of f32 at each size; rank 0 prints the median time, the algorithm bandwidth (bytes / time)
/// and the bus bandwidth (algbw x 2(n-1)/n, nccl-tests' measure, comparable across rank
/// counts).
pub fn all_reduce(sizes: &str, o: &Options) -> Result<Vec<serde_json::Value>> {
    let sizes = parse_sizes(sizes)?;
    let dist = ppmoe_runtime::distributed::Dist::from_env()
        .map_err(anyhow::Error::msg)?
        .context("--all-reduce needs several ranks: add --nproc-per-node N (or run it under torchrun / srun)")?;
    let times = ppmoe_runtime::cuda::bench_all_reduce(&dist, &sizes, o.warmup, o.iters)?;
    if dist.rank != 0 {
        return Ok(Vec::new());
    }
    let n = dist.world as f64;
    let mut rows = Vec::new();
    for (bytes, t) in sizes.iter().zip(&times) {
        let ms = ppmoe_runtime::bench::median(t);
        let algbw = *bytes as f64 / (ms * 1e-3) / 1e9;
        let busbw = algbw * 2.0 * (n - 1.0) / n;
        out!(
            "all_reduce f32 {:.1} MiB over {} ranks: {ms:.3} ms (median of {}), algbw {algbw:.1} GB/s, busbw {busbw:.1} GB/s",
            *bytes as f64 / (1 << 20) as f64,
            dist.world,
            t.len()
        );
        rows.push(serde_json::json!({"case": "all_reduce f32", "bytes": bytes, "ranks": dist.world, "median_ms": ms, "algbw_gbs": algbw, "busbw_gbs": busbw, "forward_ms": t}));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_take_binary_units_and_refuse_nonsense() {
        assert_eq!(
            super::parse_sizes("32M, 1G,4096,8k").unwrap(),
            [32 << 20, 1 << 30, 4096, 8192]
        );
        for bad in ["", "M", "-1M", "2", "99999999999999999999G", "1T"] {
            assert!(super::parse_sizes(bad).is_err(), "{bad}");
        }
    }
}
