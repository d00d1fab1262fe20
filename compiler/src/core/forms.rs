//! The instructions that print as several upstream ops (`linalg.generic`s and the fills they
//! start from): a reduction (`reduce`), a running sum (`cum_sum`), a cast no single `arith` op
//! makes as ppmoe does (`cast_map`), an arg-max (`arg_max`), a top-k (`top_k`), a layer norm
//! (`layer_norm`), a one-hot (`one_hot`), a gather of elements (`gather_elements`), a
//! scatter of elements (`scatter_elements`), a gather that widens (`widening_gather`) and a
//! concatenation of mixed types (`mixed_concat`). Each form says whether it prints an
//! instruction, and if so its lines
//! and the names its results are read by; `print_instruction` tries them in this order before
//! the one-op forms.

use ppmoe_runtime::program::{Buffer, Instruction, Program};

/// An instruction printed by one of the forms: its lines, and each result buffer's name.
pub(super) struct Printed {
    pub text: String,
    pub results: Vec<(usize, String)>,
}

/// What a form reads: the program, the instruction (and its index), the names of the values
/// printed so far (by buffer), and the instruction's location.
struct At<'a> {
    p: &'a Program,
    i: usize,
    ins: &'a Instruction,
    names: &'a [String],
    loc: &'a str,
}

impl At<'_> {
    /// The first operand and the first result, where the instruction has both.
    fn unary(&self) -> Option<(usize, &Buffer, usize, &Buffer)> {
        let (x, o) = (
            self.ins.inputs.first().copied().flatten()?,
            *self.ins.outputs.first()?,
        );
        Some((x, &self.p.buffers[x], o, &self.p.buffers[o]))
    }
}

type Form = fn(&At) -> Option<Printed>;

const FORMS: [Form; 11] = [
    reduction,
    running_sum,
    cast_map,
    arg_max,
    top_k,
    layer_norm,
    one_hot,
    gather_elements,
    scatter_elements,
    widening_gather,
    mixed_concat,
];

/// Instruction `i` printed by the first form that prints it; None where none does.
pub(super) fn print(
    p: &Program,
    (i, ins): (usize, &Instruction),
    names: &[String],
    loc: &str,
) -> Option<Printed> {
    let at = At {
        p,
        i,
        ins,
        names,
        loc,
    };
    FORMS.iter().find_map(|form| form(&at))
}

/// One result, named `%v{i}_0`.
fn single(at: &At, o: usize, text: String) -> Printed {
    Printed {
        text,
        results: vec![(o, format!("%v{}_0", at.i))],
    }
}

fn reduction(at: &At) -> Option<Printed> {
    let (x, input, o, output) = at.unary()?;
    let (f, axes, keepdims) = super::reduce::printable(&at.ins.op, input, output)?;
    let result = format!("%v{}_0", at.i);
    let text = super::reduce::lines(
        (at.i, f, axes, keepdims),
        (&at.names[x], input),
        (&result, output),
        at.loc,
    );
    Some(single(at, o, text))
}

fn running_sum(at: &At) -> Option<Printed> {
    let (x, input, o, output) = at.unary()?;
    let (axis, exclusive, reverse) = super::cum_sum::printable(&at.ins.op, input, output)?;
    let text = super::cum_sum::lines(
        (at.i, axis, exclusive, reverse),
        (&at.names[x], input),
        &format!("%v{}_0", at.i),
        at.loc,
    );
    Some(single(at, o, text))
}

fn cast_map(at: &At) -> Option<Printed> {
    let (x, input, o, output) = at.unary()?;
    if !super::cast_map::printable(&at.ins.op, input, output) {
        return None;
    }
    let text = super::cast_map::lines(
        at.i,
        (&at.names[x], input),
        (&format!("%v{}_0", at.i), output.dtype),
        at.loc,
    );
    Some(single(at, o, text))
}

fn arg_max(at: &At) -> Option<Printed> {
    let (x, input, o, output) = at.unary()?;
    let (axis, keepdims, max) = super::arg_max::printable(&at.ins.op, input, output)?;
    let (text, position) = super::arg_max::lines(
        (at.i, axis, keepdims, max),
        (&at.names[x], input),
        (&format!("%v{}_w", at.i), output),
        at.loc,
    );
    Some(Printed {
        text,
        results: vec![(o, position)],
    })
}

fn top_k(at: &At) -> Option<Printed> {
    let x = at.ins.inputs.first().copied().flatten()?;
    let &[values, indices] = &at.ins.outputs[..] else {
        return None;
    };
    let (p, input) = (at.p, &at.p.buffers[x]);
    let outs = [&p.buffers[values], &p.buffers[indices]];
    let (axis, k, largest) = super::top_k::printable(&at.ins.op, input, outs)?;
    let result = format!("%v{}_w", at.i);
    let text = super::top_k::lines(
        (at.i, axis, k, largest),
        (&at.names[x], input),
        &result,
        at.loc,
    );
    Some(Printed {
        text,
        results: vec![
            (values, format!("{result}#0")),
            (indices, format!("{result}#1")),
        ],
    })
}

fn layer_norm(at: &At) -> Option<Printed> {
    let (_, _, o, output) = at.unary()?;
    let operands: Vec<Option<&Buffer>> = (at.ins.inputs.iter())
        .map(|b| b.map(|b| &at.p.buffers[b]))
        .collect();
    let (axis, epsilon) = super::layer_norm::printable(&at.ins.op, &operands, output)?;
    let operand_names: Vec<&str> = (at.ins.inputs.iter().flatten())
        .map(|&b| at.names[b].as_str())
        .collect();
    let buffers: Vec<&Buffer> = operands.into_iter().flatten().collect();
    let text = super::layer_norm::lines(
        (at.i, axis, epsilon),
        (&operand_names, &buffers),
        &format!("%v{}_0", at.i),
        at.loc,
    );
    Some(single(at, o, text))
}

/// The instruction's operands (all present) as buffers and by the names they are printed as.
fn operands<'a, const N: usize>(at: &At<'a>) -> Option<([&'a Buffer; N], [&'a str; N])> {
    let ids: [usize; N] = (at.ins.inputs.iter().copied())
        .collect::<Option<Vec<usize>>>()?
        .try_into()
        .ok()?;
    Some((
        ids.map(|b| &at.p.buffers[b]),
        ids.map(|b| at.names[b].as_str()),
    ))
}

fn one_hot(at: &At) -> Option<Printed> {
    let (buffers, names) = operands::<3>(at)?;
    let o = *at.ins.outputs.first()?;
    let out = &at.p.buffers[o];
    if !super::one_hot::printable(&at.ins.op, buffers, out) {
        return None;
    }
    let result = format!("%v{}_0", at.i);
    let text = super::one_hot::lines(at.i, (names, buffers), (&result, out), at.loc);
    Some(single(at, o, text))
}

fn gather_elements(at: &At) -> Option<Printed> {
    let (buffers, names) = operands::<2>(at)?;
    let o = *at.ins.outputs.first()?;
    let axis = super::gather_elements::printable(&at.ins.op, buffers, &at.p.buffers[o])?;
    let result = format!("%v{}_0", at.i);
    let text = super::gather_elements::lines((at.i, axis), (names, buffers), &result, at.loc);
    Some(single(at, o, text))
}

fn scatter_elements(at: &At) -> Option<Printed> {
    let (buffers, names) = operands::<3>(at)?;
    let o = *at.ins.outputs.first()?;
    let axis = super::scatter_elements::printable(&at.ins.op, buffers, &at.p.buffers[o])?;
    let sum = matches!(
        at.ins.op,
        ppmoe_runtime::program::Op::ScatterElements {
            reduction: ppmoe_runtime::program::Reduction::Add,
            ..
        }
    );
    let [data, ids, _] = buffers;
    let result = format!("%v{}_0", at.i);
    let text =
        super::scatter_elements::lines((at.i, axis, sum), (names, [data, ids]), &result, at.loc);
    Some(single(at, o, text))
}

fn widening_gather(at: &At) -> Option<Printed> {
    let (buffers, names) = operands::<2>(at)?;
    let o = *at.ins.outputs.first()?;
    let out = &at.p.buffers[o];
    if !super::widening_gather::printable(&at.ins.op, buffers, out) {
        return None;
    }
    let result = format!("%v{}_0", at.i);
    let text = super::widening_gather::lines(at.i, (names, buffers), (&result, out), at.loc);
    Some(single(at, o, text))
}

fn mixed_concat(at: &At) -> Option<Printed> {
    let ids: Vec<usize> = at.ins.inputs.iter().copied().collect::<Option<_>>()?;
    let buffers: Vec<&Buffer> = ids.iter().map(|&b| &at.p.buffers[b]).collect();
    let names: Vec<&str> = ids.iter().map(|&b| at.names[b].as_str()).collect();
    let o = *at.ins.outputs.first()?;
    let out = &at.p.buffers[o];
    let axis = super::mixed_concat::printable(&at.ins.op, &buffers, out)?;
    let result = format!("%v{}_0", at.i);
    let text = super::mixed_concat::lines((at.i, axis), (&names, &buffers), (&result, out), at.loc);
    Some(single(at, o, text))
}
