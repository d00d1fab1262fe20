//! `ppmoe-fuzz TARGET CORPUS OUT [--execs N | --seconds S] [--seed K]`: mutation fuzzing of one
//! target (npy, manifest, onnx, stablehlo, ir) from the seed inputs in CORPUS, on stable Rust. An
//! input whose outcome (the first words of its error, or success) is new joins the corpus in
//! memory, so later mutations start from inputs that reach further checks. A panic is caught,
//! its input written to OUT/panic-N and counted; OUT/current holds the input being run, so an
//! abort leaves it behind; an input running over 20 s is a hang: written to OUT/hang and the
//! process exits with status 3. Exit status 1 when anything panicked.

mod mutate;
mod onnx_fields;
mod targets;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HANG: Duration = Duration::from_secs(20);

struct Args {
    target: targets::Target,
    corpus: PathBuf,
    out: PathBuf,
    execs: Option<u64>,
    seconds: Option<u64>,
    seed: u64,
}

fn args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: ppmoe-fuzz npy|manifest|onnx|stablehlo|ir CORPUS OUT [--execs N | --seconds S] [--seed K]";
    let [t, corpus, out, rest @ ..] = &a[..] else {
        return Err(usage.into());
    };
    let target = targets::Target::parse(t).ok_or(usage)?;
    let mut args = Args {
        target,
        corpus: corpus.into(),
        out: out.into(),
        execs: None,
        seconds: None,
        seed: 1,
    };
    for pair in rest.chunks(2) {
        let value = pair
            .get(1)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(usage)?;
        match pair[0].as_str() {
            "--execs" => args.execs = Some(value),
            "--seconds" => args.seconds = Some(value),
            "--seed" => args.seed = value,
            _ => return Err(usage.into()),
        }
    }
    Ok(args)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // Run-time tensors of hostile sizes fail fast instead of taking the machine's memory.
    std::env::set_var("PPMOE_ALLOC_LIMIT_MIB", "512");
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&a.corpus)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if corpus.is_empty() {
        eprintln!("ppmoe-fuzz: no seed inputs in {}", a.corpus.display());
        std::process::exit(2);
    }
    let work = a.out.join("work");
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("ppmoe-fuzz: {}: {e}", work.display());
        std::process::exit(2);
    }
    // Panics are findings, counted and kept; their messages would flood the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    watchdog(Arc::clone(&started), clock, a.out.clone());
    let mut rng = mutate::Rng::new(a.seed);
    let mut seen: HashSet<String> = HashSet::new();
    let (mut execs, mut panics) = (0u64, 0u64);
    let deadline = a.seconds.map(|s| clock + Duration::from_secs(s));
    loop {
        if a.execs.is_some_and(|n| execs >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let (i, j) = (rng.below(corpus.len()), rng.below(corpus.len()));
        let input = if execs < corpus.len() as u64 {
            corpus[execs as usize].clone()
        } else if a.target == targets::Target::Onnx && rng.below(2) == 0 {
            // Half the ONNX inputs mutate a field, so they decode and go deeper.
            onnx_fields::mutate(&mut rng, &corpus[i]).unwrap_or_else(|| corpus[i].clone())
        } else {
            mutate::mutate(&mut rng, &corpus[i], &corpus[j], a.target.is_text())
        };
        let _ = std::fs::write(a.out.join("current"), &input);
        started.store(clock.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let outcome = std::panic::catch_unwind(|| a.target.run(&input, &work));
        started.store(0, Ordering::SeqCst);
        execs += 1;
        match outcome {
            Ok(o) => {
                if seen.insert(o) && corpus.len() < 4096 {
                    corpus.push(input);
                }
            }
            Err(_) => {
                let _ = std::fs::write(a.out.join(format!("panic-{panics}")), &input);
                panics += 1;
            }
        }
    }
    let _ = std::fs::remove_file(a.out.join("current"));
    println!(
        "ppmoe-fuzz {}: {execs} executions in {:.1} s, {panics} panics, 0 hangs, {} distinct outcomes, corpus {}",
        a.target.name(),
        clock.elapsed().as_secs_f64(),
        seen.len(),
        corpus.len()
    );
    if panics > 0 {
        std::process::exit(1);
    }
}

/// Ends the process with status 3 when one input runs past `HANG`, keeping that input.
fn watchdog(started: Arc<AtomicU64>, clock: Instant, out: PathBuf) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = started.load(Ordering::SeqCst);
        if s > 0 && clock.elapsed().as_millis() as u64 > s - 1 + HANG.as_millis() as u64 {
            let _ = std::fs::copy(out.join("current"), out.join("hang"));
            eprintln!(
                "ppmoe-fuzz: an input ran over {} s: {}",
                HANG.as_secs(),
                out.join("hang").display()
            );
            std::process::exit(3);
        }
    });
}
