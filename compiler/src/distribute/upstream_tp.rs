//! Dense tensor parallelism by MLIR's own `sharding-propagation` and `shard-partition`, where
//! they apply: a region of the one-rank program whose every op carries upstream's sharding
//! interface (linalg's) and that Megatron's split closes: matmuls of replicated tokens by
//! weights split by columns, elementwise `linalg.map`s over their products, and one matmul by
//! a weight split by rows that contracts the split axis (a SwiGLU MLP: a shared expert, a
//! dense layer's feed-forward). ppmoe chooses the splits (the weights' `shard.shard`
//! annotations); upstream propagates them through the region and partitions it, placing the
//! collective (one `shard.all_reduce` of the partial sums); each rank's program reads the
//! partitioned function at its own process index (`read::read_partitioned`).
//!
//! Upstream's propagation refuses a function holding an op without the interface, which every
//! `core` and `moe` op and `tensor.reshape` lack: so each region goes to upstream as a
//! function of its own, and the rest of the program (attention through its reshapes to heads,
//! MoE layers) is split by ppmoe's own rules (`dense_tp`), which leave these regions as
//! upstream partitioned them.

use super::shard_moe::RankProgram;
use crate::core::upstream::{instruction_form, Upstream};
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op, Program};
use std::collections::{BTreeSet, HashMap, HashSet};

/// The passes that partition a region.
const PARTITION: &str =
    "builtin.module(func.func(sharding-propagation), func.func(shard-partition))";

/// A region upstream partitions: its instructions (indices into the program, in order), the
/// weights split by columns and the one split by rows, the replicated values it reads, and the
/// row-split matmul that ends it.
#[derive(Debug)]
pub struct Region {
    pub instructions: Vec<usize>,
    pub column_weights: Vec<BufferId>,
    pub row_weight: BufferId,
    pub inputs: Vec<BufferId>,
    pub terminal: usize,
}

/// The program's uses: for each buffer, the instructions that read it, and the one that makes
/// it.
fn uses(p: &Program) -> (HashMap<BufferId, Vec<usize>>, HashMap<BufferId, usize>) {
    let mut readers: HashMap<BufferId, Vec<usize>> = HashMap::new();
    let mut makers: HashMap<BufferId, usize> = HashMap::new();
    for (i, ins) in p.instructions.iter().enumerate() {
        for &b in ins.inputs.iter().flatten() {
            readers.entry(b).or_default().push(i);
        }
        for &b in &ins.outputs {
            makers.insert(b, i);
        }
    }
    (readers, makers)
}

/// The upstream op instruction `i` prints as.
fn form(p: &Program, i: usize) -> Option<Upstream> {
    instruction_form(p, &p.instructions[i])
}

/// The tokens and the weight of a matmul of tokens (a matrix or a stack of them, not a weight)
/// by a 2-D weight, printed as linalg's, where instruction `i` is one.
fn weight_matmul(p: &Program, i: usize) -> Option<(BufferId, BufferId)> {
    let ins = &p.instructions[i];
    if !matches!(
        form(p, i),
        Some(Upstream::Matmul("linalg.matmul") | Upstream::BroadcastMatmul)
    ) {
        return None;
    }
    let (x, w) = (ins.inputs.first().copied()??, ins.inputs.get(1).copied()??);
    let is_weight = |b: BufferId| p.buffers[b].kind == BufferKind::Weight;
    (is_weight(w) && !is_weight(x) && p.buffers[w].shape.len() == 2).then_some((x, w))
}

/// Dimension `axis` of `b`'s static shape.
fn dim(p: &Program, b: BufferId, axis: usize) -> Option<usize> {
    p.buffers[b].shape.get(axis).copied().flatten()
}

/// The last dimension of `b`'s static shape (the one a column split splits).
fn last_dim(p: &Program, b: BufferId) -> Option<usize> {
    p.buffers[b].shape.last().copied().flatten()
}

/// The regions of `p` upstream partitions over `tp` ranks (none at tp 1).
pub fn find_regions(p: &Program, tp: usize) -> Vec<Region> {
    if tp < 2 {
        return Vec::new();
    }
    let (readers, makers) = uses(p);
    let mut regions: Vec<Region> = Vec::new();
    for i in 0..p.instructions.len() {
        // Regions do not interleave (each is replaced where its last instruction was).
        if regions.last().is_some_and(|r| i <= r.terminal) {
            continue;
        }
        let after_the_last = |r: &Region| {
            regions
                .last()
                .is_none_or(|l| r.instructions[0] > l.terminal)
        };
        if let Some(region) = grow(p, (&readers, &makers), i, tp).filter(after_the_last) {
            regions.push(region);
        }
    }
    regions
}

/// The region that a column-split matmul at `seed` begins, if Megatron's split closes it.
fn grow(
    p: &Program,
    (readers, makers): (&HashMap<BufferId, Vec<usize>>, &HashMap<BufferId, usize>),
    seed: usize,
    tp: usize,
) -> Option<Region> {
    let splittable = |i: usize| {
        let (_, w) = weight_matmul(p, i)?;
        dim(p, w, 1).filter(|n| n % tp == 0).map(|_| ())
    };
    splittable(seed)?;
    let out = |i: usize| p.instructions[i].outputs[0];
    let mut members = BTreeSet::from([seed]);
    let mut work = vec![seed];
    let mut terminal = None;
    while let Some(i) = work.pop() {
        if p.outputs.contains(&out(i)) {
            return None;
        }
        for &u in readers.get(&out(i)).map_or(&[][..], Vec::as_slice) {
            if members.contains(&u) || terminal == Some(u) {
                continue;
            }
            let ins = &p.instructions[u];
            let contracts = weight_matmul(p, u)
                .filter(|&(x, w)| x == out(i) && dim(p, w, 0) == last_dim(p, out(i)));
            if contracts.is_some() && terminal.is_none() {
                terminal = Some(u);
                continue;
            }
            if !matches!(
                form(p, u),
                Some(Upstream::Elementwise(_) | Upstream::Composite(_))
            ) {
                return None;
            }
            // Every operand of an elementwise member is split alike: made in the region, or
            // by another column-split matmul, which joins it.
            for &b in ins.inputs.iter().flatten() {
                let maker = *makers.get(&b)?;
                if !members.contains(&maker) {
                    let elementwise = matches!(
                        form(p, maker),
                        Some(Upstream::Elementwise(_) | Upstream::Composite(_))
                    );
                    if splittable(maker).is_none() && !elementwise {
                        return None;
                    }
                    members.insert(maker);
                    work.push(maker);
                }
            }
            members.insert(u);
            work.push(u);
        }
    }
    let terminal = terminal?;
    region_of(p, members, terminal)
}

/// The region of `members` closed by `terminal`, checked: every member's value read only in
/// the region, every member's operand made in it but the column matmuls' tokens.
fn region_of(p: &Program, members: BTreeSet<usize>, terminal: usize) -> Option<Region> {
    let made: HashSet<BufferId> = members
        .iter()
        .map(|&i| p.instructions[i].outputs[0])
        .collect();
    let mut column_weights = Vec::new();
    let mut inputs = Vec::new();
    for &i in &members {
        if let Some((x, w)) = weight_matmul(p, i).filter(|(x, _)| !made.contains(x)) {
            column_weights.push(w);
            if !inputs.contains(&x) {
                inputs.push(x);
            }
        } else if !p.instructions[i]
            .inputs
            .iter()
            .flatten()
            .all(|b| made.contains(b))
        {
            return None;
        }
    }
    let all: BTreeSet<usize> = members.iter().copied().chain([terminal]).collect();
    let read_outside =
        p.instructions.iter().enumerate().any(|(j, ins)| {
            !all.contains(&j) && ins.inputs.iter().flatten().any(|b| made.contains(b))
        });
    let (_, row_weight) = weight_matmul(p, terminal)?;
    // The region is replaced where its last instruction, the row-split matmul, was.
    let ends_at_terminal = members.iter().all(|&i| i < terminal);
    (!read_outside && !column_weights.is_empty() && ends_at_terminal).then(|| Region {
        instructions: all.into_iter().collect(),
        column_weights,
        row_weight,
        inputs,
        terminal,
    })
}

/// The region as a program of its own: its tokens the inputs, its weights, the row matmul's
/// product the output; buffer ids of the sub-program and, for each, the program's id.
fn sub_program(p: &Program, r: &Region) -> (Program, Vec<BufferId>) {
    let mut sub = Program::empty();
    let mut ids: HashMap<BufferId, BufferId> = HashMap::new();
    let mut back = Vec::new();
    let mut take = |b: BufferId, kind: BufferKind, sub: &mut Program| -> BufferId {
        *ids.entry(b).or_insert_with(|| {
            sub.buffers.push(Buffer {
                kind,
                ..p.buffers[b].clone()
            });
            back.push(b);
            sub.buffers.len() - 1
        })
    };
    for &x in &r.inputs {
        let id = take(x, BufferKind::Input, &mut sub);
        sub.inputs.push(id);
    }
    for &w in r.column_weights.iter().chain([&r.row_weight]) {
        take(w, BufferKind::Weight, &mut sub);
    }
    for &i in &r.instructions {
        let ins = &p.instructions[i];
        let inputs = (ins.inputs.iter())
            .map(|b| b.map(|b| take(b, BufferKind::Temp, &mut sub)))
            .collect();
        let outputs = (ins.outputs.iter())
            .map(|&b| take(b, BufferKind::Temp, &mut sub))
            .collect();
        sub.instructions.push(Instruction {
            inputs,
            outputs,
            ..ins.clone()
        });
    }
    let out = take(
        p.instructions[r.terminal].outputs[0],
        BufferKind::Output,
        &mut sub,
    );
    sub.buffers[out].kind = BufferKind::Output;
    sub.outputs.push(out);
    (sub, back)
}

/// The region partitioned by upstream for every rank: the partitioned module's function read
/// at each process index (`Err`: MLIR's diagnostics). `dump`: MLIR prints the region's module
/// after each of the two passes (`--print-ir-after-all`).
fn partition(
    p: &Program,
    r: &Region,
    tp: usize,
    dump: bool,
) -> Result<(Vec<Program>, Vec<BufferId>), String> {
    let (sub, back) = sub_program(p, r);
    let column = r.column_weights.iter().map(|w| (id_in(&back, *w), 1));
    let splits: Vec<(usize, usize)> = column.chain([(id_in(&back, r.row_weight), 0)]).collect();
    let text = crate::core::print::print_for_partition(&sub, tp, &splits);
    melior::utility::register_all_passes();
    let context = ppmoe_dialect::context();
    let mut module = ppmoe_dialect::parse_verified(&context, &text)?;
    let pm = melior::pass::PassManager::new(&context);
    melior::utility::parse_pass_pipeline(pm.as_operation_pass_manager(), PARTITION)
        .map_err(|e| format!("{PARTITION} does not parse: {e}"))?;
    if dump {
        // MLIR prints from one thread only.
        context.enable_multi_threading(false);
        pm.enable_ir_printing(&melior::pass::PassIrPrintingOptions {
            before_all: false,
            after_all: true,
            module_scope: true,
            on_change: false,
            on_failure: false,
            flags: melior::ir::operation::OperationPrintingFlags::new(),
            tree_printing_path: Default::default(),
        });
    }
    let (ran, diagnostics) = ppmoe_dialect::with_diagnostics(&context, || pm.run(&mut module));
    ran.map_err(|e| format!("{PARTITION}: {e}: {diagnostics}"))?;
    let ranks = (0..tp)
        .map(|t| crate::core::read::read_partitioned(&module.as_operation(), t))
        .collect::<Result<_, _>>()?;
    Ok((ranks, back))
}

/// The sub-program's id of program buffer `b`.
fn id_in(back: &[BufferId], b: BufferId) -> usize {
    back.iter().position(|&x| x == b).unwrap_or(0)
}

/// Each rank's form of `one`: the regions upstream partitions in its place, their weights cut
/// into the rank's pieces (with their ids, which are the rank's own). A region upstream does not
/// partition as asked (MLIR's diagnostics, a piece of another shape, an op the programs do not
/// hold) is left whole, for ppmoe's rules, with a warning. `dump`: each region's module printed
/// after each upstream pass.
pub fn partition_regions(
    one: &RankProgram,
    tp: usize,
    dump: bool,
) -> Vec<(RankProgram, HashSet<BufferId>)> {
    let regions = find_regions(&one.program, tp);
    let mut ranks: Vec<(RankProgram, HashSet<BufferId>)> =
        (0..tp).map(|_| (one.clone(), HashSet::new())).collect();
    if regions.is_empty() {
        return ranks;
    }
    // Instruction indices shift as regions are replaced: replace the last region first.
    let mut taken = 0;
    for r in regions.iter().rev() {
        // All ranks or none: a region upstream did not partition as asked stays whole here,
        // and ppmoe's own rules split it (exact either way), said in the log.
        let spliced = partition(&one.program, r, tp, dump).and_then(|(partitioned, back)| {
            let mut next = ranks.clone();
            for (t, piece) in partitioned.into_iter().enumerate() {
                let (rp, pieces) = &mut next[t];
                splice(rp, r, (&piece, &back), t, pieces)?;
            }
            Ok(next)
        });
        match spliced {
            Ok(next) => {
                ranks = next;
                taken += 1;
            }
            Err(why) => tracing::warn!(
                "dense TP: the region ending at \"{}\" is left to ppmoe's rules: {why}",
                one.program.instructions[r.terminal].origin
            ),
        }
    }
    tracing::info!("dense TP: {taken} regions partitioned by upstream shard-partition");
    ranks
}

/// Region `r` of `rp` replaced by `piece`, the partitioned region as rank t reads it (`back`:
/// the program's id of each buffer of the region's own program); the weights' pieces cut and
/// added to `pieces`.
fn splice(
    rp: &mut RankProgram,
    r: &Region,
    (piece, back): (&Program, &[BufferId]),
    t: usize,
    pieces: &mut HashSet<BufferId>,
) -> Result<(), String> {
    let terminal_out = rp.program.instructions[r.terminal].outputs[0];
    let terminal_name = rp.program.buffers[terminal_out].name.clone();
    let made: HashMap<String, BufferId> = (r.instructions.iter())
        .map(|&i| rp.program.instructions[i].outputs[0])
        .filter(|&b| b != terminal_out)
        .map(|b| (rp.program.buffers[b].name.clone(), b))
        .collect();
    let mut ids: Vec<BufferId> = Vec::with_capacity(piece.buffers.len());
    for (k, b) in piece.buffers.iter().enumerate() {
        let id = if let Some(pos) = piece.inputs.iter().position(|&x| x == k) {
            r.inputs[pos]
        } else if piece.outputs.contains(&k) {
            terminal_out
        } else if b.kind == BufferKind::Weight {
            let cut = cut_piece(rp, r, (b, back), t)?;
            pieces.insert(cut);
            cut
        } else if let Some(&id) = made.get(&b.name).filter(|_| b.name != terminal_name) {
            rp.program.buffers[id].shape = b.shape.clone();
            id
        } else {
            let name = if b.name == terminal_name {
                format!("{}.partial", b.name)
            } else {
                b.name.clone()
            };
            rp.program.buffers.push(Buffer {
                name,
                kind: BufferKind::Temp,
                ..b.clone()
            });
            rp.program.buffers.len() - 1
        };
        ids.push(id);
    }
    let body = piece.instructions.iter().map(|ins| Instruction {
        inputs: ins.inputs.iter().map(|b| b.map(|b| ids[b])).collect(),
        outputs: ins.outputs.iter().map(|&b| ids[b]).collect(),
        ..ins.clone()
    });
    // The partitioned region where its last instruction was (everything it reads is made
    // before its first, and nothing outside it reads its values but the last one's).
    let at = r.terminal + 1 - r.instructions.len();
    let members: HashSet<usize> = r.instructions.iter().copied().collect();
    let kept = std::mem::take(&mut rp.program.instructions)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !members.contains(i))
        .map(|(_, ins)| ins);
    let mut instructions: Vec<Instruction> = kept.collect();
    instructions.splice(at..at, body);
    rp.program.instructions = instructions;
    Ok(())
}

/// Rank t's piece of the region's weight that the partitioned function reads as `b` (its
/// name the weight's, its shape the piece's): cut from the whole weight along the axis ppmoe
/// split it on, checked against the shape upstream gave it.
fn cut_piece(
    rp: &mut RankProgram,
    r: &Region,
    (b, back): (&Buffer, &[BufferId]),
    t: usize,
) -> Result<BufferId, String> {
    let whole = (r.column_weights.iter().map(|&w| (w, 1)))
        .chain([(r.row_weight, 0)])
        .find(|&(w, _)| rp.program.buffers[w].name == b.name && back.contains(&w));
    let (w, axis) = whole.ok_or_else(|| {
        format!(
            "the partitioned region reads a weight '{}' it was not given",
            b.name
        )
    })?;
    let tensor = (rp.weights.iter())
        .find(|(n, _)| *n == b.name)
        .map(|(_, x)| x.clone())
        .ok_or_else(|| format!("weight '{}' has no values", b.name))?;
    let tp = rp.program.buffers[w].shape[axis].unwrap_or(0) / b.shape[axis].unwrap_or(1).max(1);
    let slice = Op::TokenSlice {
        axis,
        index: t,
        parts: tp,
    };
    let cut = ppmoe_runtime::kernels::execute(&slice, &[Some(&tensor)], 1)
        .map_err(|e| format!("cutting weight '{}': {e}", b.name))?
        .remove(0);
    if cut.shape.iter().map(|&d| Some(d)).collect::<Vec<_>>() != b.shape {
        return Err(format!(
            "upstream gave weight '{}' the piece shape {:?}, where ppmoe cut {:?}",
            b.name, b.shape, cut.shape
        ));
    }
    let name = format!("{}.tp{t}_{axis}", b.name);
    rp.weights.push((name.clone(), cut));
    rp.program.buffers.push(Buffer {
        name,
        kind: BufferKind::Weight,
        ..b.clone()
    });
    Ok(rp.program.buffers.len() - 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ppmoe_runtime::program::UnaryFn;
    use ppmoe_runtime::{DType, Tensor};

    /// An f32 buffer of a known shape (also the dense TP writer's tests').
    pub(crate) fn buffer(name: &str, shape: &[usize], kind: BufferKind) -> Buffer {
        Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.iter().map(|&d| Some(d)).collect(),
            kind,
        }
    }

    fn step(op: Op, inputs: &[BufferId], output: BufferId) -> Instruction {
        Instruction {
            op,
            inputs: inputs.iter().map(|&b| Some(b)).collect(),
            outputs: vec![output],
            origin: String::new(),
        }
    }

    /// `y = (sigmoid-or-`middle`(x w1) * x w1) w2`: x [4, 8], w1 [8, 6], w2 [6, 8].
    fn mlp(middle: Op) -> RankProgram {
        let mut program = Program::empty();
        program.buffers = vec![
            buffer("x", &[4, 8], BufferKind::Input),
            buffer("w1", &[8, 6], BufferKind::Weight),
            buffer("w2", &[6, 8], BufferKind::Weight),
            buffer("h", &[4, 6], BufferKind::Temp),
            buffer("s", &[4, 6], BufferKind::Temp),
            buffer("a", &[4, 6], BufferKind::Temp),
            buffer("y", &[4, 8], BufferKind::Output),
        ];
        program.inputs = vec![0];
        program.outputs = vec![6];
        program.instructions = vec![
            step(Op::MatMul, &[0, 1], 3),
            step(middle, &[3], 4),
            step(
                Op::Binary {
                    f: ppmoe_runtime::program::BinaryFn::Mul,
                },
                &[3, 4],
                5,
            ),
            step(Op::MatMul, &[5, 2], 6),
        ];
        let values = |n: usize| (0..n).map(|i| i as f32).collect::<Vec<_>>();
        let weights = vec![
            ("w1".to_string(), Tensor::f32(vec![8, 6], values(48))),
            ("w2".to_string(), Tensor::f32(vec![6, 8], values(48))),
        ];
        RankProgram { program, weights }
    }

    #[test]
    fn a_swiglu_mlp_is_partitioned_by_upstream_into_pieces_and_one_all_reduce() {
        let one = mlp(Op::Unary {
            f: UnaryFn::Sigmoid,
        });
        let regions = find_regions(&one.program, 2);
        assert_eq!(regions.len(), 1, "{regions:?}");
        assert_eq!(
            (regions[0].column_weights.clone(), regions[0].row_weight),
            (vec![1], 2)
        );
        let ranks = partition_regions(&one, 2, false);
        for (t, (rp, pieces)) in ranks.iter().enumerate() {
            let ops: Vec<&Op> = rp.program.instructions.iter().map(|i| &i.op).collect();
            assert!(
                matches!(ops.last(), Some(Op::AllReduce { group }) if group == &[0, 1]),
                "{ops:?}"
            );
            assert_eq!(ops.len(), 5, "{ops:?}");
            // The all-reduce writes the region's output; the partial sum is a buffer of its own.
            assert_eq!(rp.program.instructions[4].outputs, vec![6]);
            let named = |n: &str| {
                rp.weights
                    .iter()
                    .find(|(w, _)| w == n)
                    .map(|(_, x)| x.clone())
            };
            let w1 = named(&format!("w1.tp{t}_1")).unwrap();
            let w2 = named(&format!("w2.tp{t}_0")).unwrap();
            assert_eq!(
                (w1.shape.clone(), w2.shape.clone()),
                (vec![8, 3], vec![3, 8])
            );
            // Rank t's columns of w1 (row r: 6r + 3t ..) and rows of w2 (from 24t).
            assert_eq!(
                w1.to_f32()[..3],
                [3.0 * t as f32, 3.0 * t as f32 + 1.0, 3.0 * t as f32 + 2.0]
            );
            assert_eq!(w2.to_f32()[0], 24.0 * t as f32);
            assert_eq!(pieces.len(), 2);
        }
    }

    #[test]
    fn a_region_with_an_op_upstream_cannot_split_is_left_to_ppmoes_rules() {
        let one = mlp(Op::Softmax {
            axis: -1,
            log: false,
        });
        assert!(find_regions(&one.program, 2).is_empty());
        assert!(find_regions(
            &mlp(Op::Unary {
                f: UnaryFn::Sigmoid
            })
            .program,
            1
        )
        .is_empty());
    }
}
