//! `TopK` as a generated kernel (gpt-oss's block returns its router's top-k scores through
//! one, beside the raised routing): one thread per row along the axis, k passes over the row,
//! each taking the best element that comes after the previous pick in the order the CPU
//! backend sorts by (value, largest or smallest first; equal values by lower index first), so
//! the results are the CPU backend's for any finite input. Values as f32; indices as f32 too,
//! as the device holds integers (exact: the axis is at most 2^24 long), read back as integers
//! by whatever reads them on the host.

use super::kernel_gen::{kernel, memref, operand_buffers, prologue, static_shape};
use ppmoe_runtime::program::{exact_in_f32, Op, Program};
use ppmoe_runtime::Tensor;
use std::fmt::Write as _;

/// The kernel of instruction `idx` if it is a `TopK` over a float input of static shape with a
/// constant k; its name, text and thread count.
pub(super) fn generate(
    p: &Program,
    idx: usize,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Option<(String, String, usize)> {
    let ins = &p.instructions[idx];
    let Op::TopK { axis, largest } = ins.op else {
        return None;
    };
    let bufs = operand_buffers(p, ins);
    let x = static_shape(bufs.first()?)?;
    if !bufs[0].dtype.is_float() || ins.outputs.len() != 2 {
        return None;
    }
    let k = usize::try_from(*constant(*ins.inputs.get(1)?)?.to_i64().first()?).ok()?;
    let rank = x.len() as i64;
    let a = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
    let len = *x.get(a)?;
    if k == 0 || k > len || !exact_in_f32(len as i64) {
        return None;
    }
    let outer: usize = x[..a].iter().product();
    let inner: usize = x[a + 1..].iter().product();
    let rows = outer.checked_mul(inner)?;
    let name = format!("k{idx}_top_k");
    let mut out = x.clone();
    out[a] = k;
    let mut body = String::new();
    prologue(&mut body, rows);
    let sizes = (x.iter().product(), out.iter().product());
    body.push_str(&row_body((len, inner, k), largest, sizes));
    let params = [memref(&x), memref(&out), memref(&out)];
    Some((name.clone(), kernel(&name, &params, &body), rows))
}

/// The k passes over row `%i` (see the module's comment): `%a0` the input, `%a1` the values,
/// `%a2` the indices.
fn row_body(
    (len, inner, k): (usize, usize, usize),
    largest: bool,
    (n_in, n_out): (usize, usize),
) -> String {
    // "Comes after" the previous pick: further from the top by value, or equal and later.
    let (after, better) = if largest {
        ("olt", "ogt")
    } else {
        ("ogt", "olt")
    };
    let mut b = String::new();
    let _ = writeln!(
        b,
        "        %c0 = arith.constant 0 : index\n        %c1 = arith.constant 1 : index\n        %cin = arith.constant {inner} : index\n        %clen = arith.constant {len} : index\n        %ck = arith.constant {k} : index\n        %clenin = arith.constant {} : index\n        %ckin = arith.constant {} : index\n        %zero = arith.constant 0.0 : f32\n        %none = arith.constant -1 : i64\n        %no = arith.constant false\n        %yes = arith.constant true\n        %o = arith.divui %i, %cin : index\n        %ii = arith.remui %i, %cin : index\n        %b0 = arith.muli %o, %clenin : index\n        %base = arith.addi %b0, %ii : index\n        %ob0 = arith.muli %o, %ckin : index\n        %obase = arith.addi %ob0, %ii : index",
        len * inner,
        k * inner
    );
    let _ = writeln!(
        b,
        "        %picks:2 = scf.for %j = %c0 to %ck step %c1 iter_args(%pv = %zero, %pi = %none) -> (f32, i64) {{\n          %first = arith.cmpi eq, %pi, %none : i64\n          %best:3 = scf.for %c = %c0 to %clen step %c1 iter_args(%bv = %zero, %bi = %none, %found = %no) -> (f32, i64, i1) {{\n            %cs = arith.muli %c, %cin : index\n            %off = arith.addi %base, %cs : index\n            %v = memref.load %a0[%off] : memref<{}xf32>\n            %c64 = arith.index_cast %c : index to i64\n            %past = arith.cmpf {after}, %v, %pv : f32\n            %same = arith.cmpf oeq, %v, %pv : f32\n            %later = arith.cmpi sgt, %c64, %pi : i64\n            %tie = arith.andi %same, %later : i1\n            %after0 = arith.ori %past, %tie : i1\n            %after = arith.ori %first, %after0 : i1\n            %over = arith.cmpf {better}, %v, %bv : f32\n            %unset = arith.xori %found, %yes : i1\n            %better = arith.ori %unset, %over : i1\n            %take = arith.andi %after, %better : i1\n            %nbv = arith.select %take, %v, %bv : f32\n            %nbi = arith.select %take, %c64, %bi : i64\n            %nf = arith.ori %found, %take : i1\n            scf.yield %nbv, %nbi, %nf : f32, i64, i1\n          }}\n          %js = arith.muli %j, %cin : index\n          %at = arith.addi %obase, %js : index\n          memref.store %best#0, %a1[%at] : memref<{}xf32>\n          %bif = arith.sitofp %best#1 : i64 to f32\n          memref.store %bif, %a2[%at] : memref<{}xf32>\n          scf.yield %best#0, %best#1 : f32, i64\n        }}",
        n_in, n_out, n_out
    );
    b
}
