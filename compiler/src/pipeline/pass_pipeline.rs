//! `ppmoe opt`: passes run by name on IR, in mlir-opt's style:
//!
//!   ppmoe opt model.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2 strategy=alltoall}, ppmoe-dce)'
//!
//! A pass's options are the compilation options of the flags of the same names (`tp`, `pp`,
//! `dp`, `strategy`, `dtype`, `capacity`; `steps`, `--host-steps`); each pass takes only its
//! own (`Pass::options`).

use super::{
    find_pass, printed, run_pass, run_passes, Compilation, Grid, Options, Pass, Scheduled,
    MODULE_STAGES, NOT_MLIR, STAGES,
};
use crate::core::header::{
    capacity_name, dtype_name, parse_capacity, parse_dtype, parse_strategy, strategy_name,
};
use crate::distribute::Strategy;
use crate::error::CompileError;
use crate::passes::raise_moe::CapacityPolicy;

/// One pass of a textual pipeline, with its options in order.
#[derive(Clone, Debug, PartialEq)]
pub struct PassRun {
    pub name: String,
    pub options: Vec<(String, String)>,
}

/// `builtin.module(a, b{k=v k2=v2})` (the anchor may be left out: `a, b`) as its passes.
pub fn parse_pass_pipeline(text: &str) -> Result<Vec<PassRun>, String> {
    let text = text.trim();
    let inner = match text.strip_prefix("builtin.module(") {
        Some(rest) => rest
            .strip_suffix(')')
            .ok_or("the pipeline opens 'builtin.module(' and does not close it")?,
        None => text,
    };
    split_top_level(inner)?
        .into_iter()
        .map(|item| parse_pass(item.trim()))
        .collect()
}

/// The pipeline's items, split at the commas outside braces.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, ch) in s.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth = depth.checked_sub(1).ok_or("a '}' without its '{'")?,
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            '(' | ')' => return Err(format!("nested pipelines are not taken (at '{ch}')")),
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '{' without its '}'".into());
    }
    items.push(&s[start..]);
    Ok(items.into_iter().filter(|i| !i.trim().is_empty()).collect())
}

fn parse_pass(item: &str) -> Result<PassRun, String> {
    let (name, options) = match item.split_once('{') {
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("'{item}': options end with '}}'"))?;
            let options = body
                .split_whitespace()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("'{item}': option '{kv}' is not KEY=VALUE"))
                })
                .collect::<Result<_, _>>()?;
            (name.trim(), options)
        }
        None => (item, vec![]),
    };
    if name.is_empty() {
        return Err(format!("'{item}': a pass without a name"));
    }
    Ok(PassRun {
        name: name.to_string(),
        options,
    })
}

/// Runs `pipeline` on the IR file the compilation names (printed by `--emit`, core to kernels),
/// and returns the IR after the last pass (the IR as read when the pipeline is empty), with
/// the compilation, for what the passes said.
pub fn opt(mut c: Compilation, pipeline: &str) -> Result<(String, Compilation), CompileError> {
    let path = c.options.path.clone();
    let bad = |reason: String| CompileError::Ir {
        path: path.clone(),
        reason,
    };
    let runs = parse_pass_pipeline(pipeline).map_err(|e| bad(format!("--pass-pipeline: {e}")))?;
    if !crate::ir_input::is_ppmoe_ir(&path) {
        return Err(bad(
            "opt takes IR printed by `ppmoe inspect --emit` (core to kernels); a model goes through inspect or compile"
                .into(),
        ));
    }
    let mut scheduled = Vec::new();
    for run in &runs {
        scheduled.push(check_run(run).map_err(bad)?);
    }
    check_whole_ptx_stage(&scheduled).map_err(bad)?;
    let reached = crate::ir_input::resume(&mut c)?;
    c.wants_module_text = true;
    let mut last = STAGES
        .iter()
        .find(|s| s.name == reached)
        .ok_or_else(|| bad(format!("stage '{reached}'")))?;
    let mut rest = scheduled.as_slice();
    while let Some(first) = rest.first() {
        if MODULE_STAGES.contains(&first.stage.name) {
            let n = rest
                .iter()
                .take_while(|s| MODULE_STAGES.contains(&s.stage.name))
                .count();
            c = run_passes(c, last, &rest[..n])?;
            last = rest[n - 1].stage;
            rest = &rest[n..];
        } else {
            for (key, value) in &first.options {
                set_option(&mut c, key, value)
                    .map_err(|e| bad(format!("{}{{{key}={value}}}: {e}", first.pass.name)))?;
            }
            run_pass(&mut c, first.stage, first.pass)?;
            last = first.stage;
            rest = &rest[1..];
        }
    }
    // What the last passes left: the module itself where the pass manager ran them (its
    // attributes and locations as the passes left them), else the stage printed.
    let text = match c.module_text.take() {
        Some((stage, text)) if stage == last.name && !NOT_MLIR.contains(&last.name) => text,
        _ => printed(&c, last)?,
    };
    Ok((text, c))
}

/// The `ptx` stage's passes run together and in order: the IR between them (upstream's GPU
/// lowering half done) is no stage's that prints or reads back.
fn check_whole_ptx_stage(scheduled: &[Scheduled]) -> Result<(), String> {
    let asked: Vec<&str> = (scheduled.iter())
        .filter(|s| s.stage.name == "ptx")
        .map(|s| s.pass.name)
        .collect();
    let stage = STAGES.iter().find(|s| s.name == "ptx");
    let whole: Vec<&str> = stage.map_or(vec![], |s| s.passes.iter().map(|p| p.name).collect());
    if asked.is_empty() || asked == whole {
        return Ok(());
    }
    Err(format!(
        "--pass-pipeline: the ptx stage's passes run together, in order: {}",
        whole.join(", ")
    ))
}

/// A pass of the pipeline, found by name, with options it takes.
pub(crate) fn check_run(run: &PassRun) -> Result<Scheduled, String> {
    let (stage, pass) = find_pass(&run.name).ok_or_else(|| {
        format!(
            "--pass-pipeline: no pass '{}'; the passes: {}",
            run.name,
            pass_names().join(", ")
        )
    })?;
    if matches!(stage.name, "onnx" | "core") {
        return Err(format!(
            "{} reads the model, not IR: it cannot run in opt",
            pass.name
        ));
    }
    for (key, _) in &run.options {
        if !pass.options.contains(&key.as_str()) {
            return Err(format!(
                "{}: no option '{key}'; it takes: {}",
                pass.name,
                if pass.options.is_empty() {
                    "none".to_string()
                } else {
                    pass.options.join(", ")
                }
            ));
        }
    }
    Ok(Scheduled {
        stage,
        pass,
        options: run.options.clone(),
    })
}

/// Every registered pass, in pipeline order.
pub fn pass_names() -> Vec<&'static str> {
    STAGES
        .iter()
        .flat_map(|s| s.passes.iter().map(|p| p.name))
        .collect()
}

/// The pass as a pipeline spells it, with the values its options have in `options`
/// (`ppmoe-shard{tp=2 strategy=ppmoe}`): what `set_option` reads back.
pub(super) fn spelled_with_options(pass: &Pass, options: &Options) -> String {
    if pass.options.is_empty() {
        return pass.name.into();
    }
    let grid = options.grid.unwrap_or(Grid::ONE);
    let values: Vec<String> = (pass.options.iter())
        .map(|&key| {
            let value = match key {
                "tp" => grid.tp.to_string(),
                "pp" => grid.pp.to_string(),
                "dp" => grid.dp.to_string(),
                "strategy" => strategy_name(options.strategy.unwrap_or(Strategy::Ppmoe)).into(),
                "dtype" => dtype_name(options.weight_dtype).into(),
                "steps" => options.host_steps.spelled(),
                _ => capacity_name(options.capacity_policy.unwrap_or(CapacityPolicy::Keep)).into(),
            };
            format!("{key}={value}")
        })
        .collect();
    format!("{}{{{}}}", pass.name, values.join(" "))
}

/// Sets the compilation option a pass option names.
pub(super) fn set_option(c: &mut Compilation, key: &str, value: &str) -> Result<(), String> {
    let o = &mut c.options;
    let count = || -> Result<usize, String> {
        value
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("'{value}' is not a count of at least 1"))
    };
    let grid = o.grid.get_or_insert(Grid::ONE);
    match key {
        "tp" => grid.tp = count()?,
        "pp" => grid.pp = count()?,
        "dp" => grid.dp = count()?,
        "strategy" => {
            o.strategy = Some(parse_strategy(value).ok_or("expected ppmoe, alltoall or auto")?)
        }
        "dtype" => o.weight_dtype = parse_dtype(value).ok_or("expected fp32, bf16 or fp16")?,
        "capacity" => {
            o.capacity_policy = Some(parse_capacity(value).ok_or("expected keep or dropless")?)
        }
        "steps" => o.host_steps = crate::passes::host_steps::HostSteps::parse(value)?,
        _ => return Err("not an option of ppmoe's passes".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_pass_pipeline, PassRun};

    #[test]
    fn a_pipeline_reads_as_its_passes_and_options() {
        let runs =
            parse_pass_pipeline("builtin.module(ppmoe-shard{tp=2 strategy=auto}, ppmoe-dce)")
                .unwrap();
        assert_eq!(
            runs,
            vec![
                PassRun {
                    name: "ppmoe-shard".into(),
                    options: vec![
                        ("tp".into(), "2".into()),
                        ("strategy".into(), "auto".into())
                    ],
                },
                PassRun {
                    name: "ppmoe-dce".into(),
                    options: vec![],
                },
            ]
        );
        assert_eq!(parse_pass_pipeline("builtin.module()").unwrap(), vec![]);
        assert_eq!(parse_pass_pipeline("ppmoe-dce").unwrap().len(), 1);
        for bad in [
            "builtin.module(ppmoe-shard{tp=2)",
            "builtin.module(ppmoe-shard{tp})",
            "builtin.module(func.func(canonicalize))",
            "builtin.module(ppmoe-dce",
            "builtin.module({tp=2})",
        ] {
            assert!(parse_pass_pipeline(bad).is_err(), "{bad}");
        }
    }
}
