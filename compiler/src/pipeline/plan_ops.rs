//! The `kernels` ops of a rank's plan (`func.func @rank<N>_plan`), one per instruction of its
//! program: how the step runs (`GpuOp`, the runtime's plan entry) printed with every field, and
//! read back to the same step, so that the plan a module holds is the plan the bundle ships.

use crate::codegen::KernelPlan;
use crate::core::read::{attribute_text, i64_list, op_name, PLAN_OF};
use crate::distribute::shard_moe::RankProgram;
use melior::ir::attribute::{Attribute, IntegerAttribute};
use melior::ir::operation::{OperationLike, OperationRef};
use ppmoe_runtime::program::GpuOp;
use std::collections::HashSet;

/// One rank's plan as a function of `kernels` ops, one per instruction.
pub(crate) fn print_plan(rp: &RankProgram, plan: &KernelPlan) -> String {
    let kernels = kernel_names(&plan.module);
    let r = rp.program.rank;
    let mut s = format!("  func.func @rank{r}_plan() attributes {{{PLAN_OF} = @rank{r}}} {{\n");
    let steps = rp.program.instructions.iter().zip(&plan.lowered);
    for (i, (ins, step)) in steps.enumerate() {
        let (line, op) = (print_step(step, &kernels, r), ins.op.name());
        s.push_str(&format!(
            "    {line}op = \"{op}\", instruction = {i} : i64}} : () -> ()\n"
        ));
    }
    s.push_str("    func.return\n  }\n");
    s
}

/// One step as its op, up to its instruction: `"kernels.<step>"() {<fields>, ` (the
/// instruction's op and number, which close the attributes, are the caller's: every step
/// says which instruction it runs). Every field of the step prints, so that the op reads back
/// as the step it is (`read_plan`).
fn print_step(step: &GpuOp, kernels: &HashSet<&str>, r: usize) -> String {
    let kernel = |name: &str| format!("kernel = @rank{r}_kernels::@{name}");
    let experts = |prefix: &str, bf16: bool| {
        format!(
            "gather = @rank{r}_kernels::@{prefix}_gather, act = @rank{r}_kernels::@{prefix}_act, combine = @rank{r}_kernels::@{prefix}_combine, activations = \"{}\", ",
            if bf16 { "bf16" } else { "f32" }
        )
    };
    match step {
        GpuOp::Kernel { name, threads, bf16 } => format!(
            "\"kernels.launch\"() {{{}, threads = {threads} : i64, {}",
            kernel(name),
            i64_array("bf16", bf16)
        ),
        GpuOp::Pointwise { name, threads, inputs, members, bf16 } => format!(
            "\"kernels.launch\"() {{{}, threads = {threads} : i64, fused = {}, inputs = {}, {}",
            kernel(name),
            array(members),
            array(inputs),
            i64_array("bf16", bf16)
        ),
        GpuOp::Route { name, threads, capacity, bf16_logits } => format!(
            "\"kernels.route\"() {{{}, threads = {threads} : i64, {}{}",
            kernel(name),
            if *capacity { "capacity, " } else { "" },
            if *bf16_logits { "bf16_logits, " } else { "" }
        ),
        GpuOp::Gemm => "\"kernels.cublas_gemm\"() {".into(),
        GpuOp::Experts { prefix, bf16 } => format!(
            "\"kernels.moe_experts\"() {{{}{}, ",
            experts(prefix, *bf16),
            experts_path(kernels, prefix)
        ),
        GpuOp::LocalExperts { prefix, bf16, slice, ffn, reduce } => format!(
            "\"kernels.moe_local_experts\"() {{{}{}, slice = {slice} : i64, ffn = {ffn} : i64, {}",
            experts(prefix, *bf16),
            experts_path(kernels, prefix),
            reduce.map_or(String::new(), |r| format!("all_reduce = {r} : i64, overlap = \"chunked, second stream\", "))
        ),
        GpuOp::ReducedBy { step } => format!("\"kernels.reduced_by\"() {{step = {step} : i64, "),
        GpuOp::AllToAllExperts { prefix, bf16, dispatch, exchange, ffn, slices, members } => format!(
            "\"kernels.moe_alltoall_experts\"() {{{}grouping = \"host\", gemms = \"cublas grouped\", exchange = \"nccl ragged send/recv\", dispatch = {dispatch} : i64, all_to_all = {exchange} : i64, ffn = {ffn} : i64, slices = {}, fused = {}, ",
            experts(prefix, *bf16),
            array(slices),
            array(members)
        ),
        GpuOp::Embedding { name } => format!("\"kernels.embedding\"() {{{}, ", kernel(name)),
        GpuOp::Fused { into } => format!("\"kernels.fused\"() {{into = {into} : i64, "),
        GpuOp::Collective => "\"kernels.nccl\"() {".into(),
        GpuOp::Alias => "\"kernels.alias\"() {".into(),
        GpuOp::Host => "\"kernels.host\"() {".into(),
    }
}

/// The kind of a step that runs something of its own, as its plan op names it (`kernels.` and
/// this; a pointwise chain's op is a `kernels.launch` with `inputs`): what `--host-steps`
/// names; None for a member, a collective and host work.
pub(crate) fn step_kind(step: &GpuOp) -> Option<&'static str> {
    Some(match step {
        GpuOp::Kernel { .. } => "launch",
        GpuOp::Pointwise { .. } => "pointwise",
        GpuOp::Route { .. } => "route",
        GpuOp::Gemm => "cublas_gemm",
        GpuOp::Experts { .. } => "moe_experts",
        GpuOp::LocalExperts { .. } => "moe_local_experts",
        GpuOp::AllToAllExperts { .. } => "moe_alltoall_experts",
        GpuOp::Embedding { .. } => "embedding",
        GpuOp::Alias => "alias",
        GpuOp::ReducedBy { .. } | GpuOp::Fused { .. } | GpuOp::Collective | GpuOp::Host => {
            return None
        }
    })
}

/// `array<i64: ...>` of a list of positions (`array<i64>` where empty).
fn array(list: &[usize]) -> String {
    if list.is_empty() {
        return "array<i64>".into();
    }
    let list: Vec<String> = list.iter().map(|k| k.to_string()).collect();
    format!("array<i64: {}>", list.join(", "))
}

/// An optional list attribute (`NAME = array<i64: ..>, `), or nothing where it is empty.
fn i64_array(name: &str, list: &[usize]) -> String {
    if list.is_empty() {
        return String::new();
    }
    format!("{name} = {}, ", array(list))
}

/// A plan function's ops (its `func.return` aside) read back as the steps they print, one per
/// instruction in order; an op that is no step, or a field missing or of another form, is
/// refused by the op's position and name.
pub(super) fn read_plan(ops: &[OperationRef], rank: usize) -> Result<Vec<GpuOp>, String> {
    let read = |(i, op): (usize, &OperationRef)| {
        let fields = Fields { op, rank };
        let at = |e: String| format!("op {i} (`{}`): {e}", op_name(op));
        let n = fields.position("instruction").map_err(at)?;
        if n != i {
            return Err(at(format!(
                "instruction = {n}, where the plan's ops are its instructions in order"
            )));
        }
        fields.step().map_err(at)
    };
    ops.iter().enumerate().map(read).collect()
}

/// The fields of one plan op.
struct Fields<'o, 'c, 'a> {
    op: &'o OperationRef<'c, 'a>,
    rank: usize,
}

impl Fields<'_, '_, '_> {
    fn step(&self) -> Result<GpuOp, String> {
        Ok(match op_name(self.op).as_str() {
            "kernels.launch" if self.has("inputs") => GpuOp::Pointwise {
                name: self.kernel("kernel")?,
                threads: self.position("threads")?,
                inputs: self.positions("inputs")?,
                members: self.positions("fused")?,
                bf16: self.optional_positions("bf16")?,
            },
            "kernels.launch" => GpuOp::Kernel {
                name: self.kernel("kernel")?,
                threads: self.position("threads")?,
                bf16: self.optional_positions("bf16")?,
            },
            "kernels.route" => GpuOp::Route {
                name: self.kernel("kernel")?,
                threads: self.position("threads")?,
                capacity: self.has("capacity"),
                bf16_logits: self.has("bf16_logits"),
            },
            "kernels.cublas_gemm" => GpuOp::Gemm,
            "kernels.moe_experts" => GpuOp::Experts {
                prefix: self.prefix()?,
                bf16: self.bf16()?,
            },
            "kernels.moe_local_experts" => GpuOp::LocalExperts {
                prefix: self.prefix()?,
                bf16: self.bf16()?,
                slice: self.position("slice")?,
                ffn: self.position("ffn")?,
                reduce: match self.has("all_reduce") {
                    true => Some(self.position("all_reduce")?),
                    false => None,
                },
            },
            "kernels.reduced_by" => GpuOp::ReducedBy {
                step: self.position("step")?,
            },
            "kernels.moe_alltoall_experts" => GpuOp::AllToAllExperts {
                prefix: self.prefix()?,
                bf16: self.bf16()?,
                dispatch: self.position("dispatch")?,
                exchange: self.position("all_to_all")?,
                ffn: self.position("ffn")?,
                slices: self.positions("slices")?,
                members: self.positions("fused")?,
            },
            "kernels.embedding" => GpuOp::Embedding {
                name: self.kernel("kernel")?,
            },
            "kernels.fused" => GpuOp::Fused {
                into: self.position("into")?,
            },
            "kernels.nccl" => GpuOp::Collective,
            "kernels.alias" => GpuOp::Alias,
            "kernels.host" => GpuOp::Host,
            _ => return Err(format!("not a plan step (expected one of {STEPS})")),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.op.attribute(name).is_ok()
    }

    fn field(&self, name: &str) -> Result<Attribute<'_>, String> {
        (self.op.attribute(name)).map_err(|_| format!("no `{name}`"))
    }

    /// An instruction's number, a thread count: a non-negative integer.
    fn position(&self, name: &str) -> Result<usize, String> {
        let a = self.field(name)?;
        let v = IntegerAttribute::try_from(a)
            .map_err(|_| format!("`{name} = {a}` is not an integer"))?
            .value();
        usize::try_from(v).map_err(|_| format!("`{name} = {v}` is negative"))
    }

    /// An `array<i64: ...>` of non-negative integers.
    fn positions(&self, name: &str) -> Result<Vec<usize>, String> {
        let a = self.field(name)?;
        let list = i64_list(a).ok_or_else(|| format!("`{name} = {a}` is not an array<i64>"))?;
        (list.into_iter())
            .map(|v| usize::try_from(v).map_err(|_| format!("`{name}` holds {v}, a negative")))
            .collect()
    }

    fn optional_positions(&self, name: &str) -> Result<Vec<usize>, String> {
        match self.has(name) {
            true => self.positions(name),
            false => Ok(vec![]),
        }
    }

    /// A kernel of the rank's `gpu.module`, by name (`@rank<N>_kernels::@<name>`).
    fn kernel(&self, name: &str) -> Result<String, String> {
        let text = self.field(name)?.to_string();
        let module = format!("@rank{}_kernels::@", self.rank);
        match text.strip_prefix(&module) {
            Some(kernel) if !kernel.is_empty() && !kernel.contains(['@', '"']) => Ok(kernel.into()),
            _ => Err(format!(
                "`{name} = {text}`, where a kernel of {module}... is expected"
            )),
        }
    }

    /// An experts step's kernels' common prefix, as its gather kernel's name gives it.
    fn prefix(&self) -> Result<String, String> {
        let gather = self.kernel("gather")?;
        match gather.strip_suffix("_gather") {
            Some(prefix) => Ok(prefix.into()),
            None => Err(format!(
                "`gather = @{gather}`: not a `<prefix>_gather` kernel"
            )),
        }
    }

    /// An experts step's `activations`: "bf16" or "f32".
    fn bf16(&self) -> Result<bool, String> {
        let a = self.field("activations")?;
        match attribute_text(a).as_deref() {
            Some("bf16") => Ok(true),
            Some("f32") => Ok(false),
            _ => Err(format!(
                "`activations = {a}`, where \"bf16\" or \"f32\" is expected"
            )),
        }
    }
}

/// The ops a plan holds, for the error that names an op that is none of them.
const STEPS: &str = "kernels.launch, kernels.route, kernels.cublas_gemm, kernels.moe_experts, kernels.moe_local_experts, kernels.reduced_by, kernels.moe_alltoall_experts, kernels.embedding, kernels.fused, kernels.nccl, kernels.alias, kernels.host";

/// The names of the kernels a `gpu.module`'s text defines.
fn kernel_names(module: &str) -> HashSet<&str> {
    module
        .split("gpu.func @")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .collect()
}

/// Where an experts step's slots are grouped by expert and what multiplies them, as the
/// kernels generated for it say (the runtime takes the first it has, see its
/// `expert_source`): routed on the device where it has the slot listing `dgroup` (generated
/// projections: on the tensor cores, else on the CUDA cores; a few tokens' two kernels come
/// only beside it), grouped on the device for cuBLAS's pointer-batched GEMMs, or on the host
/// (the routing read back) for cuBLAS's grouped GEMMs.
fn experts_path(kernels: &HashSet<&str>, prefix: &str) -> String {
    use ppmoe_runtime::program::{PP_KERNELS, QP_KERNELS, SP_KERNELS, TC_KERNELS, WG_KERNELS};
    let has = |suffix: &str| kernels.contains(format!("{prefix}_{suffix}").as_str());
    let (grouping, gemms) = if has("dgroup") {
        let tensor = [TC_KERNELS, WG_KERNELS, SP_KERNELS, PP_KERNELS, QP_KERNELS]
            .iter()
            .flatten()
            .any(|k| has(k));
        let gemms = if tensor {
            "generated, tensor cores"
        } else {
            "generated, cuda cores"
        };
        ("device, routed", gemms)
    } else if has("tgroup") {
        ("device", "cublas pointer-batched")
    } else {
        ("host", "cublas grouped")
    };
    format!("grouping = \"{grouping}\", gemms = \"{gemms}\"")
}

#[cfg(test)]
mod tests {
    use super::{experts_path, kernel_names, print_plan, read_plan};
    use crate::codegen::KernelPlan;
    use crate::distribute::shard_moe::RankProgram;
    use melior::ir::operation::OperationLike;
    use melior::ir::RegionLike;
    use ppmoe_runtime::program::{GpuOp, Instruction, Op, Program};

    /// Every kind of step, with each optional field set and unset, prints as an op that reads
    /// back as that step (the fields the fixtures' plans may never set among them).
    #[test]
    fn every_step_reads_back_as_itself() {
        let kernel = |name: &str| name.to_string();
        let steps = vec![
            GpuOp::Kernel {
                name: kernel("k0_add"),
                threads: 64,
                bf16: vec![],
            },
            GpuOp::Kernel {
                name: kernel("k1_add"),
                threads: 64,
                bf16: vec![0, 2],
            },
            GpuOp::Pointwise {
                name: kernel("k2_pointwise"),
                threads: 32,
                inputs: vec![4, 7],
                members: vec![0, 1],
                bf16: vec![1],
            },
            GpuOp::Route {
                name: kernel("k3_route"),
                threads: 512,
                capacity: false,
                bf16_logits: false,
            },
            GpuOp::Route {
                name: kernel("k4_route"),
                threads: 16,
                capacity: true,
                bf16_logits: true,
            },
            GpuOp::Gemm,
            GpuOp::Experts {
                prefix: kernel("k6_experts"),
                bf16: true,
            },
            GpuOp::LocalExperts {
                prefix: kernel("k7_local_experts"),
                bf16: false,
                slice: 5,
                ffn: 6,
                reduce: Some(8),
            },
            GpuOp::LocalExperts {
                prefix: kernel("k8_local_experts"),
                bf16: true,
                slice: 5,
                ffn: 6,
                reduce: None,
            },
            GpuOp::ReducedBy { step: 7 },
            GpuOp::AllToAllExperts {
                prefix: kernel("k10_experts"),
                bf16: false,
                dispatch: 1,
                exchange: 2,
                ffn: 3,
                slices: vec![],
                members: vec![1, 2, 3],
            },
            GpuOp::AllToAllExperts {
                prefix: kernel("k11_experts"),
                bf16: true,
                dispatch: 1,
                exchange: 2,
                ffn: 3,
                slices: vec![4, 5, 6],
                members: vec![1, 2, 3, 4, 5, 6],
            },
            GpuOp::Embedding {
                name: kernel("k12_embedding"),
            },
            GpuOp::Fused { into: 14 },
            GpuOp::Collective,
            GpuOp::Alias,
            GpuOp::Host,
        ];
        let mut program = Program::empty();
        program.rank = 3;
        program.instructions = (0..steps.len())
            .map(|_| Instruction {
                op: Op::MatMul,
                inputs: vec![],
                outputs: vec![],
                origin: String::new(),
            })
            .collect();
        let rp = RankProgram {
            program,
            weights: vec![],
        };
        let plan = KernelPlan {
            lowered: steps.clone(),
            module: String::new(),
        };
        let text = format!("module {{\n{}}}\n", print_plan(&rp, &plan));
        let context = ppmoe_dialect::context();
        let module = ppmoe_dialect::parse_verified(&context, &text).unwrap();
        let func = crate::passes::func_ops::block_ops(module.body())[0];
        let block = func.region(0).unwrap().first_block().unwrap();
        let mut ops = crate::passes::func_ops::block_ops(block);
        assert_eq!(
            ops.pop().map(|o| crate::core::read::op_name(&o)).as_deref(),
            Some("func.return")
        );
        assert_eq!(read_plan(&ops, 3).unwrap(), steps);
        // A step's kind is its op's name (a pointwise chain's, a launch's with inputs), and
        // every kind is one `--host-steps` takes.
        for (op, step) in ops.iter().zip(&steps) {
            if let Some(kind) = super::step_kind(step) {
                let name = if kind == "pointwise" { "launch" } else { kind };
                assert_eq!(crate::core::read::op_name(op), format!("kernels.{name}"));
                assert!(crate::passes::host_steps::KINDS.contains(&kind), "{kind}");
            }
        }
        // Another rank's kernel is refused by name.
        let err = read_plan(&ops, 2).unwrap_err();
        assert!(
            err.starts_with("op 0 (`kernels.launch`): `kernel = @rank3_kernels::@k0_add`"),
            "{err}"
        );
    }

    #[test]
    fn an_experts_steps_path_is_read_from_its_kernels() {
        let func = |name: &str| {
            format!("    gpu.func @k3_experts_{name}(%arg0: memref<?xf32>) kernel {{\n")
        };
        let module = |names: &[&str]| names.iter().map(|n| func(n)).collect::<String>();
        let path = |names: &[&str]| experts_path(&kernel_names(&module(names)), "k3_experts");
        // The persistent projections with the activation fused have no `_in` kernel.
        let tensor = path(&["gather", "dgroup", "pproj_act", "pproj_out", "tgroup"]);
        assert_eq!(
            tensor,
            "grouping = \"device, routed\", gemms = \"generated, tensor cores\""
        );
        let cuda = path(&["dgroup", "dproj_in", "dproj_out", "tgroup"]);
        assert_eq!(
            cuda,
            "grouping = \"device, routed\", gemms = \"generated, cuda cores\""
        );
        let few = path(&[
            "dgroup",
            "dproj_in",
            "dproj_out",
            "dtok_in_bf16",
            "dtok_out",
        ]);
        assert_eq!(
            few,
            "grouping = \"device, routed\", gemms = \"generated, cuda cores\""
        );
        let grouped = path(&["gather", "act", "combine", "tgroup"]);
        assert_eq!(
            grouped,
            "grouping = \"device\", gemms = \"cublas pointer-batched\""
        );
        assert_eq!(
            path(&["gather", "act", "combine"]),
            "grouping = \"host\", gemms = \"cublas grouped\""
        );
        // Another step's kernels are not this one's.
        let module = func("dgroup").replace("k3_", "k30_");
        let other = experts_path(&kernel_names(&module), "k3_experts");
        assert_eq!(other, "grouping = \"host\", gemms = \"cublas grouped\"");
    }
}
