//! `ppmoe-run`: the runner alone, without the compiler (no MLIR, no LLVM), for GPU machines.
//!
//!   ppmoe-run BUNDLE --input FILE.npy [--input NAME=FILE.npy ...] --output-dir OUT [--backend cpu]

use ppmoe_runtime::distributed::{launch_local, take_nproc_flag};
use ppmoe_runtime::runner::{check_outputs, run, Backend, InputArg};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: ppmoe-run BUNDLE --input FILE.npy [--input NAME=FILE.npy ...] --output-dir OUT [--backend auto|cpu|cuda] [--check REF.npy ...] [--tolerance 1e-4] [--nproc-per-node N]";

fn main() -> ExitCode {
    let mut all: Vec<String> = std::env::args().skip(1).collect();
    // --nproc-per-node N: this same command, once per GPU, as ranks 0..N.
    match take_nproc_flag(&mut all) {
        Ok(Some(n)) => {
            return match launch_local(n, &all) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let mut args = all.into_iter();
    let mut bundle = None;
    let mut inputs = Vec::new();
    let mut out = None;
    let mut backend = Backend::Auto;
    let mut checks = Vec::new();
    let mut tolerance = 1e-4f64;
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        let step: Result<(), String> = match a.as_str() {
            "--input" => value("--input").map(|v| inputs.push(InputArg::parse(&v))),
            "--output-dir" => value("--output-dir").map(|v| out = Some(PathBuf::from(v))),
            "--backend" => value("--backend").and_then(|v| v.parse().map(|b| backend = b)),
            "--check" => value("--check").map(|v| checks.push(InputArg::parse(&v))),
            "--tolerance" => value("--tolerance").and_then(|v| {
                v.parse()
                    .map(|t| tolerance = t)
                    .map_err(|_| format!("--tolerance {v}: not a number"))
            }),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => Err(format!("unknown flag {s}")),
            s => {
                bundle = Some(PathBuf::from(s));
                Ok(())
            }
        };
        if let Err(e) = step {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let (Some(bundle), Some(out)) = (bundle, out) else {
        eprintln!("error: a bundle and --output-dir are required\n{USAGE}");
        return ExitCode::from(2);
    };
    match run(&bundle, &inputs, &out, backend) {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
            match check_outputs(&bundle, &report, &checks, tolerance) {
                Ok((lines, ok)) => {
                    for l in lines {
                        println!("{l}");
                    }
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
