//! Chains of pointwise instructions as one kernel. An exported model spells its norms, rotary
//! embeddings, masks and activations as many small elementwise ops, each of which would read
//! and write a whole activation tensor; fused, a chain reads its operands once and writes only
//! its last result. A chain is a tree of pointwise instructions (elementwise math, comparisons,
//! logical ops, `where`, casts) of one result shape in which every result but the last is read
//! once, by a later member, and is no program output: those results are never made. The fused
//! kernel evaluates each member's scalar expression in program order, the same expressions the
//! single kernels use, so the numbers are the single kernels' to the bit.

use super::kernel_gen::{
    binary_op, broadcast_offset_at, kernel, memref, operand_buffers, prologue, static_shape,
};
use super::kernel_gen::{pow_expr, unary_expr};
use super::Lowered;
use ppmoe_runtime::program::{BinaryFn, Op, Program};
use ppmoe_runtime::Tensor;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

/// One pointwise instruction as a scalar expression: the name each operand is read under (in
/// the order of its flattened inputs; None for one it does not read) and the text computing
/// `%r` from them.
pub(super) struct Scalar {
    operands: Vec<Option<&'static str>>,
    expr: String,
}

/// The scalar form of instruction `idx`, where it is pointwise with static shapes.
fn scalar(
    p: &Program,
    idx: usize,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Option<Scalar> {
    let ins = &p.instructions[idx];
    let bufs = operand_buffers(p, ins);
    let [out] = ins.outputs[..] else { return None };
    let out = &p.buffers[out];
    if bufs.iter().chain([&out]).any(|b| static_shape(b).is_none()) {
        return None;
    }
    if let Some((names, expr)) = super::masks::scalar(&ins.op, &bufs, out) {
        return Some(Scalar {
            operands: names.into_iter().map(Some).collect(),
            expr,
        });
    }
    if !bufs.iter().chain([&out]).all(|b| b.dtype.is_float()) {
        return None;
    }
    let (operands, expr) = match &ins.op {
        Op::Unary { f } if bufs.len() == 1 => (vec![Some("x")], unary_expr(*f)?),
        Op::Binary { f: BinaryFn::Pow } if bufs.len() == 2 => {
            let c = constant(ins.inputs.get(1).copied().flatten()).filter(|t| t.len() == 1)?;
            (vec![Some("x"), None], pow_expr(c.to_f32()[0])?)
        }
        Op::Binary { f } if bufs.len() == 2 => (
            vec![Some("x"), Some("y")],
            format!("        %r = {} %x, %y : f32\n", binary_op(*f)?),
        ),
        _ => return None,
    };
    Some(Scalar { operands, expr })
}

/// Whether an operand of shape `inp` broadcasts (NumPy's rule, trailing axes aligned) to `out`.
fn broadcasts(inp: &[usize], out: &[usize]) -> bool {
    inp.len() <= out.len()
        && inp
            .iter()
            .rev()
            .zip(out.iter().rev())
            .all(|(&i, &o)| i == o || i == 1)
}

/// How many times each buffer of `p` is read, a program output counting twice (so that a
/// count of 1 means: read once, by an instruction, and nothing else).
pub(super) fn read_counts(p: &Program) -> Vec<usize> {
    let mut uses = vec![0usize; p.buffers.len()];
    for b in p
        .instructions
        .iter()
        .flat_map(|i| i.inputs.iter().flatten())
    {
        uses[*b] += 1;
    }
    for &b in &p.outputs {
        uses[b] += 2;
    }
    uses
}

/// The instruction that makes each buffer of `p` (buffer -> instruction).
pub(super) fn producers(p: &Program) -> HashMap<usize, usize> {
    let mut producer = HashMap::new();
    for (i, ins) in p.instructions.iter().enumerate() {
        for &o in &ins.outputs {
            producer.insert(o, i);
        }
    }
    producer
}

/// The chains of `p`, each as its members in program order (the last is the chain's root;
/// a lone pointwise instruction is a chain of one), from each instruction's scalar form
/// (None: not pointwise, or taken).
fn chains(p: &Program, scalars: &[Option<Scalar>]) -> Vec<Vec<usize>> {
    let uses = read_counts(p);
    let producer = producers(p);
    // Chain id by root instruction; each chain's members.
    let mut chain_of_root: HashMap<usize, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (j, s) in scalars.iter().enumerate() {
        let Some(s) = s else { continue };
        let ins = &p.instructions[j];
        let shape = &p.buffers[ins.outputs[0]].shape;
        // Producers whose chains end in an operand read only here, of this result shape.
        let mut joined: Vec<usize> = Vec::new();
        for (b, name) in ins.inputs.iter().flatten().zip(&s.operands) {
            let Some(&prod) = producer.get(b) else {
                continue;
            };
            let Some(&c) = chain_of_root.get(&prod) else {
                continue;
            };
            if name.is_some()
                && uses[*b] == 1
                && &p.buffers[*b].shape == shape
                && !joined.contains(&c)
            {
                joined.push(c);
            }
        }
        let mut mine = vec![j];
        for c in joined {
            let root = *members[c].last().expect("a chain has a root");
            chain_of_root.remove(&root);
            mine.append(&mut members[c]);
        }
        mine.sort_unstable();
        chain_of_root.insert(j, members.len());
        members.push(mine);
    }
    members.into_iter().filter(|m| !m.is_empty()).collect()
}

/// The buffers a fused kernel reads from outside its chains, in parameter order (parameter k
/// is `%a{k}`), with their memref types.
#[derive(Default)]
pub(super) struct Operands {
    pub buffers: Vec<usize>,
    pub params: Vec<String>,
}

impl Operands {
    /// Buffer `b`'s element for the result element at flat index `idx` of `out` (NumPy
    /// broadcasting), loaded into `%{name}`; b becomes a parameter where it is not one yet.
    /// None where b is not static or does not broadcast to `out`.
    pub(super) fn load(
        &mut self,
        p: &Program,
        b: usize,
        out: &[usize],
        idx: &str,
        name: &str,
        body: &mut String,
    ) -> Option<()> {
        let shape = static_shape(&p.buffers[b])?;
        if !broadcasts(&shape, out) {
            return None;
        }
        let k = match self.buffers.iter().position(|&x| x == b) {
            Some(k) => k,
            None => {
                self.buffers.push(b);
                self.params.push(memref(&shape));
                self.buffers.len() - 1
            }
        };
        let off = broadcast_offset_at(body, name, &shape, out, idx);
        let _ = writeln!(
            body,
            "        %{name} = memref.load %a{k}[{off}] : {}",
            memref(&shape)
        );
        Some(())
    }
}

/// The members of `chain` (root last) evaluated for the result element at flat index `idx`
/// of shape `out`, appended to `body` with SSA names tagged `tag`; `bound` gives the values of
/// buffers the caller computed (a softmax's result). Returns the root's value.
pub(super) fn emit_chain(
    p: &Program,
    chain: &[usize],
    scalars: &[Option<Scalar>],
    (out, idx, tag): (&[usize], &str, &str),
    bound: &HashMap<usize, String>,
    ops: &mut Operands,
    body: &mut String,
) -> Option<String> {
    let result_of: HashMap<usize, usize> = chain
        .iter()
        .map(|&m| (p.instructions[m].outputs[0], m))
        .collect();
    // Each outside buffer is loaded once per evaluation.
    let mut loaded: HashMap<usize, String> = HashMap::new();
    for &m in chain {
        let s = scalars[m].as_ref()?;
        let mut values = BTreeMap::new();
        for (&b, name) in p.instructions[m].inputs.iter().flatten().zip(&s.operands) {
            let Some(name) = name else { continue };
            let value = if let Some(v) = bound.get(&b) {
                v.clone()
            } else if let Some(prod) = result_of.get(&b) {
                format!("%{tag}m{prod}_r")
            } else if let Some(v) = loaded.get(&b) {
                v.clone()
            } else {
                let v = format!("{tag}e{}", loaded.len());
                ops.load(p, b, out, idx, &v, body)?;
                loaded.insert(b, format!("%{v}"));
                format!("%{v}")
            };
            values.insert(*name, value);
        }
        body.push_str(&scoped(&s.expr, &format!("{tag}m{m}"), &values));
    }
    Some(format!("%{tag}m{}_r", chain.last()?))
}

/// The kernel of one chain: its text, the threads it is launched with, and the buffers it
/// reads (its parameters before the result); None where an operand does not broadcast.
fn chain_kernel(
    p: &Program,
    chain: &[usize],
    scalars: &[Option<Scalar>],
    name: &str,
) -> Option<(String, usize, Vec<usize>)> {
    let root = *chain.last()?;
    let out_shape = static_shape(&p.buffers[p.instructions[root].outputs[0]])?;
    let n: usize = out_shape.iter().product();
    let mut body = String::new();
    prologue(&mut body, n);
    let mut ops = Operands::default();
    let r = emit_chain(
        p,
        chain,
        scalars,
        (&out_shape, "%i", ""),
        &HashMap::new(),
        &mut ops,
        &mut body,
    )?;
    let _ = writeln!(
        body,
        "        memref.store {r}, %a{}[%i] : {}",
        ops.buffers.len(),
        memref(&out_shape)
    );
    ops.params.push(memref(&out_shape));
    Some((kernel(name, &ops.params, &body), n, ops.buffers))
}

/// `expr` with each SSA name `%v` made the member's own (`%TAG_v`), its operands' names
/// replaced by the values they stand for.
pub(super) fn scoped(expr: &str, tag: &str, operands: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(expr.len() * 2);
    let mut rest = expr;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let ident = &after[..len];
        match operands.get(ident) {
            Some(v) => out.push_str(v),
            None => {
                let _ = write!(out, "%{tag}_{ident}");
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The fused chains of `p`: for each member, `Fused` into its root, and for each root a
/// `Pointwise` step, its kernel appended to `funcs`. Instructions in `taken` are left out.
pub(super) fn plan(
    p: &Program,
    taken: &dyn Fn(usize) -> bool,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
    funcs: &mut String,
) -> HashMap<usize, Lowered> {
    let scalars: Vec<Option<Scalar>> = (0..p.instructions.len())
        .map(|i| {
            if taken(i) {
                None
            } else {
                scalar(p, i, constant)
            }
        })
        .collect();
    let all = chains(p, &scalars);
    let mut planned = HashMap::new();
    let mut used = vec![false; all.len()];
    // A bf16 model's attentions, each one kernel with its GEMMs, softmax and chains.
    let mut in_attention = HashSet::new();
    for a in super::attention::find(p, &all, taken, constant) {
        let Some((name, text, threads, inputs)) =
            super::attention::kernel_of(p, &all, &a, &scalars)
        else {
            continue;
        };
        funcs.push_str(&text);
        let members = a.members(&all);
        in_attention.extend(members.iter().copied());
        add_step(&mut planned, a.values, members, name, threads, inputs);
        if let Some(Lowered::Pointwise { bf16, .. }) = planned.get_mut(&a.values) {
            bf16.extend(super::attention::WORD_PARAMS);
        }
        for c in a.before.iter().chain(&a.after) {
            used[*c] = true;
        }
    }
    // Softmaxes and last-axis reductions with the chains around them, one kernel each.
    let taken_here = |i: usize| taken(i) || in_attention.contains(&i);
    let fusions = super::row_fused::find(p, &all, &taken_here, constant);
    for f in &fusions {
        let Some((name, text, threads, inputs)) =
            super::row_fused::kernel(p, &all, f, &scalars, constant)
        else {
            continue;
        };
        funcs.push_str(&text);
        let mut members: Vec<usize> = f.before.map(|c| all[c].clone()).unwrap_or_default();
        members.push(f.row);
        if let Some(c) = f.after {
            members.extend(&all[c]);
        }
        let root = members.pop().expect("the softmax at least");
        add_step(&mut planned, root, members, name, threads, inputs);
        for c in f.before.iter().chain(&f.after) {
            used[*c] = true;
        }
    }
    for (c, chain) in all.iter().enumerate() {
        if used[c] || chain.len() < 2 {
            continue;
        }
        let root = *chain.last().expect("a chain has a root");
        let name = format!("k{root}_pointwise");
        let Some((text, threads, inputs)) = chain_kernel(p, chain, &scalars, &name) else {
            continue;
        };
        funcs.push_str(&text);
        add_step(
            &mut planned,
            root,
            chain[..chain.len() - 1].to_vec(),
            name,
            threads,
            inputs,
        );
    }
    planned
}

/// One fused kernel's plan: its members `Fused` into `root`, which runs the kernel.
fn add_step(
    planned: &mut HashMap<usize, Lowered>,
    root: usize,
    members: Vec<usize>,
    name: String,
    threads: usize,
    inputs: Vec<usize>,
) {
    for &m in &members {
        planned.insert(m, Lowered::Fused { into: root });
    }
    planned.insert(
        root,
        Lowered::Pointwise {
            name,
            threads,
            inputs,
            members,
            bf16: Vec::new(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_names_are_its_own_and_its_operands_are_replaced() {
        let values = BTreeMap::from([("x", "%e0".to_string()), ("y", "%m3_r".to_string())]);
        let expr =
            "        %t = arith.cmpf olt, %x, %y : f32\n        %r = arith.uitofp %t : i1 to f32\n";
        assert_eq!(
            scoped(expr, "m7", &values),
            "        %m7_t = arith.cmpf olt, %e0, %m3_r : f32\n        %m7_r = arith.uitofp %m7_t : i1 to f32\n"
        );
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert!(broadcasts(&[4096], &[8, 512, 4096]));
        assert!(broadcasts(&[8, 1, 4096], &[8, 512, 4096]));
        assert!(!broadcasts(&[512, 4096], &[4096]));
        assert!(!broadcasts(&[2, 4096], &[8, 512, 4096]));
    }
}
