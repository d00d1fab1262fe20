//! Type and shape inference over the imported graph, with the small integer constants that
//! shape arithmetic needs (Shape -> Gather -> Concat -> Reshape chains) folded as it goes.
//! Where the file states a type (value_info) and ppmoe has no rule for the op, the file's word
//! is taken; where neither exists, the error names the node.

use crate::dtype::DType;
use crate::error::ImportError;
use crate::graph::{AttrValue, Dim, Model, Node, TensorData, TensorType};
use std::collections::HashMap;

/// The inferred types of every value, and the values of small integer constants.
#[derive(Clone, Debug, Default)]
pub struct Types {
    pub types: HashMap<String, TensorType>,
    pub consts: HashMap<String, TensorData>,
}

/// Constants larger than this are not tracked: shape arithmetic never needs them.
const MAX_CONST: usize = 4096;

impl Types {
    pub fn get(&self, name: &str) -> Option<&TensorType> {
        self.types.get(name)
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.consts.get(name).and_then(TensorData::as_i64)
    }
}

/// Infers the types of all values of `model`, given the types of its inputs (which may differ
/// from the file's when `--input-shape` fixed a symbolic dimension).
pub fn infer_types(model: &Model) -> Result<Types, ImportError> {
    let g = &model.graph;
    let mut t = Types::default();
    for v in &g.inputs {
        t.types.insert(v.name.clone(), v.ty.clone());
    }
    for (name, data) in &g.initializers {
        t.types.insert(name.clone(), data.ty());
        if data.len() <= MAX_CONST && data.as_i64().is_some() {
            t.consts.insert(name.clone(), data.clone());
        }
    }
    for node in &g.nodes {
        let fail = |reason: String| ImportError::BadNode {
            path: model.path.clone(),
            node: node.name.clone(),
            op: node.qualified_op(),
            reason,
        };
        let outs = infer_node(node, &t).map_err(fail)?;
        for (i, out) in node.outputs.iter().enumerate() {
            let inferred = outs.get(i).cloned().flatten();
            let (ty, value) = match inferred {
                Some(r) => (r.ty, r.value),
                None => match g.value_info.get(out).or_else(|| g.outputs.iter().find(|o| &o.name == out).map(|o| &o.ty)) {
                    Some(ty) => (ty.clone(), None),
                    None => {
                        return Err(fail(format!("cannot infer the type of output '{out}': no rule for this op and no value_info in the file")))
                    }
                },
            };
            if let Some(v) = value {
                if v.len() <= MAX_CONST {
                    t.consts.insert(out.clone(), v);
                }
            }
            t.types.insert(out.clone(), ty);
        }
    }
    Ok(t)
}

/// One output's inferred type and, when known at compile time, its (small integer) value.
#[derive(Clone, Debug)]
pub struct Out {
    pub ty: TensorType,
    pub value: Option<TensorData>,
}

fn out(ty: TensorType) -> Option<Out> {
    Some(Out { ty, value: None })
}

fn int_attr(node: &Node, name: &str, default: i64) -> i64 {
    match node.attr(name) {
        Some(AttrValue::Int(v)) => *v,
        _ => default,
    }
}

fn ints_attr(node: &Node, name: &str) -> Option<Vec<i64>> {
    match node.attr(name) {
        Some(AttrValue::Ints(v)) => Some(v.clone()),
        _ => None,
    }
}

/// Normalises a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// As `norm_axis`, for ops that index the axis's size (Concat, Split, Slice, TopK): a scalar
/// has none.
pub fn size_axis(axis: i64, rank: usize) -> Result<usize, String> {
    if rank == 0 {
        return Err(format!(
            "axis {axis} of a scalar (the input must have rank 1 or more)"
        ));
    }
    norm_axis(axis, rank)
}

/// Numpy-style broadcast of several shapes.
pub fn broadcast(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut outd = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            let o = &mut outd[off + i];
            *o = match (&*o, d) {
                (Dim::Known(1), d) => d.clone(),
                (o, Dim::Known(1)) => o.clone(),
                (Dim::Known(a), Dim::Known(b)) if a != b => {
                    return Err(format!(
                        "shapes {} cannot be broadcast together",
                        fmt_shapes(shapes)
                    ))
                }
                (Dim::Known(a), _) | (_, Dim::Known(a)) => Dim::Known(*a),
                (a, b) if a == b => a.clone(),
                _ => Dim::Unknown,
            };
        }
    }
    Ok(outd)
}

fn fmt_shapes(shapes: &[&[Dim]]) -> String {
    shapes
        .iter()
        .map(|s| {
            TensorType {
                dtype: DType::F32,
                dims: s.to_vec(),
            }
            .mlir()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn known(dims: &[i64]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Known(d)).collect()
}

/// Infers a node's outputs; `None` for an output means "no rule" (the file's value_info is used).
fn infer_node(node: &Node, t: &Types) -> Result<Vec<Option<Out>>, String> {
    let input = |i: usize| -> Result<&TensorType, String> {
        let name = node
            .inputs
            .get(i)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("input {i} is missing"))?;
        t.types
            .get(name)
            .ok_or_else(|| format!("input '{name}' has no known type"))
    };
    let has = |i: usize| node.inputs.get(i).is_some_and(|n| !n.is_empty());
    let cints = |i: usize| -> Option<Vec<i64>> { node.inputs.get(i).and_then(|n| t.ints(n)) };
    let cdata =
        |i: usize| -> Option<&TensorData> { node.inputs.get(i).and_then(|n| t.consts.get(n)) };
    let x = || input(0);

    // The statistics outputs of the normalisations (mean, inverse std-dev): the input's
    // shape with its last axis 1, f32.
    let stats = || -> Result<Option<Out>, String> {
        let mut ty = x()?.clone();
        if let Some(last) = ty.dims.last_mut() {
            *last = Dim::Known(1);
        }
        ty.dtype = DType::F32;
        Ok(out(ty))
    };
    if !node.domain.is_empty() {
        return Ok(match (node.domain.as_str(), node.op_type.as_str()) {
            ("com.microsoft", "MoE" | "QMoE") => vec![out(x()?.clone())],
            // (output, mean, inv_std_var, input_skip_bias_sum)
            ("com.microsoft", "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization") => {
                let mut v = vec![out(x()?.clone()), stats()?, stats()?, out(x()?.clone())];
                v.truncate(node.outputs.len());
                v
            }
            // The attention's output: the query's [B, S] and num_heads heads (of a packed
            // query's width over its Q, K and V heads). The present caches are the lowering's.
            ("com.microsoft", "GroupQueryAttention") => {
                let mut ty = x()?.clone();
                let (n, kv) = (
                    int_attr(node, "num_heads", 0),
                    int_attr(node, "kv_num_heads", 0),
                );
                let heads = if has(1) { n } else { n + 2 * kv };
                match ty.dims.last_mut() {
                    Some(Dim::Known(w)) if n > 0 && kv > 0 => *w = *w / heads * n,
                    _ => return Ok(vec![None; node.outputs.len()]),
                }
                let mut v = vec![out(ty)];
                v.resize(node.outputs.len(), None);
                v
            }
            ("com.microsoft", "SimplifiedLayerNormalization") => {
                let mut v = vec![out(x()?.clone()), stats()?];
                v.truncate(node.outputs.len());
                v
            }
            _ => vec![None; node.outputs.len()],
        });
    }
    let op = node.op_type.as_str();
    let same = || -> Result<Vec<Option<Out>>, String> { Ok(vec![out(x()?.clone())]) };
    Ok(match op {
        "Identity" => {
            let v = cdata(0).cloned();
            vec![Some(Out {
                ty: x()?.clone(),
                value: v,
            })]
        }
        "Sqrt" | "Neg" | "Reciprocal" | "Exp" | "Log" | "Sigmoid" | "Tanh" | "Erf" | "Abs"
        | "Relu" | "Not" | "Sin" | "Cos" | "Floor" | "Ceil" | "Sign" | "Softmax" | "LogSoftmax"
        | "Clip" | "Gelu" | "LeakyRelu" | "CumSum" | "Trilu" | "HardSigmoid" => same()?,
        "SimplifiedLayerNormalization" => {
            let mut v = vec![out(x()?.clone()), stats()?];
            v.truncate(node.outputs.len());
            v
        }
        "LayerNormalization" | "RMSNormalization" => {
            let ty = x()?.clone();
            let mut v = vec![out(ty.clone())];
            v.resize(node.outputs.len(), None);
            v
        }
        // The shape of the input, booleans: inferred rather than read from the file, whose
        // value_info (from an export at another size) may leave the sizes unknown.
        "IsNaN" | "IsInf" => {
            let mut ty = x()?.clone();
            ty.dtype = DType::Bool;
            vec![out(ty)]
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "And" | "Or" | "Xor" | "Equal"
        | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Mod" => {
            let a = input(0)?;
            let b = input(1)?;
            let dims = broadcast(&[&a.dims, &b.dims])?;
            let dtype = match op {
                "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => DType::Bool,
                _ => a.dtype,
            };
            let value = match (
                cints(0),
                cints(1),
                dims.iter().map(Dim::known).collect::<Option<Vec<_>>>(),
            ) {
                (Some(av), Some(bv), Some(d)) => fold_binary(op, &av, &a.dims, &bv, &b.dims, &d)
                    .map(|v| retype(TensorData::from_i64(d.clone(), &v), dtype)),
                _ => None,
            };
            vec![Some(Out {
                ty: TensorType { dtype, dims },
                value,
            })]
        }
        "Where" => {
            let (c, a, b) = (input(0)?, input(1)?, input(2)?);
            let dims = broadcast(&[&c.dims, &a.dims, &b.dims])?;
            let value = match (cints(0), cints(1), cints(2)) {
                (Some(cv), Some(av), Some(bv)) if c.dims == a.dims && a.dims == b.dims => {
                    let v: Vec<i64> = cv
                        .iter()
                        .zip(av.iter().zip(&bv))
                        .map(|(&c, (&a, &b))| if c != 0 { a } else { b })
                        .collect();
                    dims.iter()
                        .map(Dim::known)
                        .collect::<Option<Vec<_>>>()
                        .map(|d| retype(TensorData::from_i64(d, &v), a.dtype))
                }
                _ => None,
            };
            vec![Some(Out {
                ty: TensorType {
                    dtype: a.dtype,
                    dims,
                },
                value,
            })]
        }
        "MatMul" => {
            let (a, b) = (input(0)?, input(1)?);
            vec![out(TensorType {
                dtype: a.dtype,
                dims: matmul_dims(&a.dims, &b.dims)?,
            })]
        }
        "Gemm" => {
            let (a, b) = (input(0)?, input(1)?);
            if a.dims.len() != 2 || b.dims.len() != 2 {
                return Err("Gemm takes 2-D operands".into());
            }
            let m = if int_attr(node, "transA", 0) != 0 {
                &a.dims[1]
            } else {
                &a.dims[0]
            };
            let n = if int_attr(node, "transB", 0) != 0 {
                &b.dims[0]
            } else {
                &b.dims[1]
            };
            vec![out(TensorType {
                dtype: a.dtype,
                dims: vec![m.clone(), n.clone()],
            })]
        }
        "Cast" => {
            let to = int_attr(node, "to", 0);
            let dtype = DType::from_onnx(to as i32)
                .ok_or_else(|| format!("Cast to unsupported type {to}"))?;
            let value = cdata(0)
                .and_then(|d| d.as_i64().map(|v| (d.dims.clone(), v)))
                .filter(|_| !dtype.is_float())
                .map(|(d, v)| retype(TensorData::from_i64(d, &v), dtype));
            vec![Some(Out {
                ty: TensorType {
                    dtype,
                    dims: x()?.dims.clone(),
                },
                value,
            })]
        }
        "CastLike" => vec![out(TensorType {
            dtype: input(1)?.dtype,
            dims: x()?.dims.clone(),
        })],
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
        | "ArgMax" | "ArgMin" => {
            let x = x()?;
            let rank = x.dims.len();
            let axes: Vec<usize> = if op.starts_with("Arg") {
                vec![norm_axis(int_attr(node, "axis", 0), rank)?]
            } else {
                let axes =
                    ints_attr(node, "axes")
                        .or_else(|| if has(1) { cints(1) } else { Some(vec![]) });
                let axes = axes.ok_or("the reduction axes are computed at run time")?;
                if axes.is_empty() {
                    if int_attr(node, "noop_with_empty_axes", 0) != 0 {
                        vec![]
                    } else {
                        (0..rank).collect()
                    }
                } else {
                    axes.iter()
                        .map(|&a| norm_axis(a, rank))
                        .collect::<Result<_, _>>()?
                }
            };
            let keep = int_attr(node, "keepdims", 1) != 0;
            let mut dims = Vec::new();
            for (i, d) in x.dims.iter().enumerate() {
                if axes.contains(&i) {
                    if keep {
                        dims.push(Dim::Known(1));
                    }
                } else {
                    dims.push(d.clone());
                }
            }
            let dtype = if op.starts_with("Arg") {
                DType::I64
            } else {
                x.dtype
            };
            vec![out(TensorType { dtype, dims })]
        }
        "Reshape" => {
            let x = x()?;
            let Some(shape) = cints(1) else {
                return Ok(vec![out(TensorType {
                    dtype: x.dtype,
                    dims: vec![Dim::Unknown; run_time_rank(input(1)?)?],
                })]);
            };
            let allow_zero = int_attr(node, "allowzero", 0) != 0;
            let mut dims: Vec<Dim> = shape
                .iter()
                .enumerate()
                .map(|(i, &s)| match s {
                    0 if !allow_zero => x.dims.get(i).cloned().unwrap_or(Dim::Unknown),
                    -1 => Dim::Unknown,
                    s => Dim::Known(s),
                })
                .collect();
            if let Some(pos) = shape.iter().position(|&s| s == -1) {
                let total = known_product(x.dims.iter().map(Dim::known));
                let rest = known_product(
                    dims.iter()
                        .enumerate()
                        .filter(|(i, _)| *i != pos)
                        .map(|(_, d)| d.known()),
                );
                if let (Some(total), Some(rest)) = (total, rest) {
                    if rest == 0 || total % rest != 0 {
                        return Err(format!("cannot reshape {} to {shape:?}", x.mlir()));
                    }
                    dims[pos] = Dim::Known(total / rest);
                }
            }
            let value = cdata(0).and_then(|d| {
                dims.iter()
                    .map(Dim::known)
                    .collect::<Option<Vec<_>>>()
                    .map(|nd| TensorData {
                        dims: nd,
                        ..d.clone()
                    })
            });
            vec![Some(Out {
                ty: TensorType {
                    dtype: x.dtype,
                    dims,
                },
                value,
            })]
        }
        "Flatten" => {
            let x = x()?;
            let axis = int_attr(node, "axis", 1);
            let rank = x.dims.len() as i64;
            let axis = if axis < 0 { axis + rank } else { axis };
            if !(0..=rank).contains(&axis) {
                return Err(format!("Flatten axis {axis} out of range for rank {rank}"));
            }
            let axis = axis as usize;
            let p = |ds: &[Dim]| {
                known_product(ds.iter().map(Dim::known))
                    .map(Dim::Known)
                    .unwrap_or(Dim::Unknown)
            };
            vec![out(TensorType {
                dtype: x.dtype,
                dims: vec![p(&x.dims[..axis]), p(&x.dims[axis..])],
            })]
        }
        "Transpose" => {
            let x = x()?;
            let perm =
                ints_attr(node, "perm").unwrap_or_else(|| (0..x.dims.len() as i64).rev().collect());
            if perm.len() != x.dims.len() {
                return Err(format!(
                    "perm {perm:?} does not match rank {}",
                    x.dims.len()
                ));
            }
            let dims = perm
                .iter()
                .map(|&p| {
                    x.dims
                        .get(p as usize)
                        .cloned()
                        .ok_or(format!("bad perm {perm:?}"))
                })
                .collect::<Result<_, _>>()?;
            vec![out(TensorType {
                dtype: x.dtype,
                dims,
            })]
        }
        "Squeeze" | "Unsqueeze" => {
            let x = x()?;
            let axes = ints_attr(node, "axes").or_else(|| if has(1) { cints(1) } else { None });
            let dims = if op == "Squeeze" {
                match axes {
                    Some(axes) => {
                        let axes: Vec<usize> = axes
                            .iter()
                            .map(|&a| norm_axis(a, x.dims.len()))
                            .collect::<Result<_, _>>()?;
                        x.dims
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !axes.contains(i))
                            .map(|(_, d)| d.clone())
                            .collect()
                    }
                    None if has(1) => {
                        return Err("the squeeze axes are computed at run time".into())
                    }
                    None => x
                        .dims
                        .iter()
                        .filter(|d| **d != Dim::Known(1))
                        .cloned()
                        .collect(),
                }
            } else {
                let axes = axes.ok_or("the unsqueeze axes are computed at run time")?;
                let rank = x.dims.len() + axes.len();
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Result<_, _>>()?;
                axes.sort();
                if axes.windows(2).any(|w| w[0] == w[1]) {
                    return Err(format!("Unsqueeze axes {axes:?} repeat an axis"));
                }
                let mut dims = x.dims.clone();
                for a in axes {
                    dims.insert(a, Dim::Known(1));
                }
                dims
            };
            let value = cdata(0).and_then(|d| {
                dims.iter()
                    .map(Dim::known)
                    .collect::<Option<Vec<_>>>()
                    .map(|nd| TensorData {
                        dims: nd,
                        ..d.clone()
                    })
            });
            vec![Some(Out {
                ty: TensorType {
                    dtype: x.dtype,
                    dims,
                },
                value,
            })]
        }
        "Concat" => {
            let first = x()?;
            let axis = size_axis(int_attr(node, "axis", 0), first.dims.len())?;
            let mut dims = first.dims.clone();
            let mut total = Some(0i64);
            let mut values: Option<Vec<i64>> = Some(vec![]);
            for i in 0..node.inputs.len() {
                let ti = input(i)?;
                total = total
                    .zip(ti.dims.get(axis).and_then(Dim::known))
                    .and_then(|(a, b)| a.checked_add(b));
                values = match (values, cints(i)) {
                    (Some(mut v), Some(c)) if first.dims.len() == 1 => {
                        v.extend(c);
                        Some(v)
                    }
                    _ => None,
                };
            }
            dims[axis] = total.map(Dim::Known).unwrap_or(Dim::Unknown);
            let value =
                values.map(|v| retype(TensorData::from_i64(vec![v.len() as i64], &v), first.dtype));
            vec![Some(Out {
                ty: TensorType {
                    dtype: first.dtype,
                    dims,
                },
                value,
            })]
        }
        "Split" => {
            let x = x()?;
            let axis = size_axis(int_attr(node, "axis", 0), x.dims.len())?;
            let n = node.outputs.len();
            let sizes: Vec<Dim> =
                match ints_attr(node, "split").or_else(|| if has(1) { cints(1) } else { None }) {
                    Some(s) => known(&s),
                    None if has(1) => return Err("the split sizes are computed at run time".into()),
                    None => match x.dims[axis].known() {
                        Some(d) => {
                            let chunk = (d + n as i64 - 1) / n as i64;
                            (0..n)
                                .map(|i| Dim::Known(chunk.min(d - chunk * i as i64).max(0)))
                                .collect()
                        }
                        None => vec![Dim::Unknown; n],
                    },
                };
            sizes
                .into_iter()
                .map(|s| {
                    let mut dims = x.dims.clone();
                    dims[axis] = s;
                    out(TensorType {
                        dtype: x.dtype,
                        dims,
                    })
                })
                .collect()
        }
        "Slice" => {
            let x = x()?;
            let rank = x.dims.len();
            let (starts, ends) = match (cints(1), cints(2)) {
                (Some(s), Some(e)) => (s, e),
                _ => {
                    // Run-time bounds: the rank stays, the sliced sizes are unknown.
                    let axes = if has(3) {
                        cints(3)
                    } else {
                        Some((0..rank as i64).collect())
                    };
                    let mut dims = x.dims.clone();
                    match axes {
                        Some(axes) => {
                            for a in axes {
                                dims[size_axis(a, rank)?] = Dim::Unknown;
                            }
                        }
                        None => dims.iter_mut().for_each(|d| *d = Dim::Unknown),
                    }
                    return Ok(vec![out(TensorType {
                        dtype: x.dtype,
                        dims,
                    })]);
                }
            };
            let axes = if has(3) {
                cints(3).ok_or("the slice axes are computed at run time")?
            } else {
                (0..starts.len() as i64).collect()
            };
            let steps = if has(4) {
                cints(4).ok_or("the slice steps are computed at run time")?
            } else {
                vec![1; starts.len()]
            };
            let mut dims = x.dims.clone();
            let mut ranges = vec![];
            for (((&s, &e), &a), &st) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
                let a = size_axis(a, rank)?;
                if st == 0 {
                    return Err("slice step 0".into());
                }
                if let Some(d) = x.dims[a].known() {
                    let (lo, hi) = slice_bounds(s, e, st, d);
                    let n = if st > 0 {
                        (hi - lo + st - 1) / st
                    } else {
                        (lo - hi - st - 1) / (-st)
                    }
                    .max(0);
                    dims[a] = Dim::Known(n);
                    ranges.push((a, lo, st, n));
                } else {
                    dims[a] = Dim::Unknown;
                }
            }
            let value = match (cints(0), rank) {
                (Some(v), 1) if ranges.len() == 1 => {
                    let (_, lo, st, n) = ranges[0];
                    let picked: Vec<i64> = (0..n).map(|i| v[(lo + i * st) as usize]).collect();
                    Some(retype(TensorData::from_i64(vec![n], &picked), x.dtype))
                }
                _ => None,
            };
            vec![Some(Out {
                ty: TensorType {
                    dtype: x.dtype,
                    dims,
                },
                value,
            })]
        }
        "Gather" => {
            let (d, i) = (input(0)?, input(1)?);
            if d.dims.is_empty() {
                return Err("Gather of a scalar (its data must have rank 1 or more)".into());
            }
            let axis = norm_axis(int_attr(node, "axis", 0), d.dims.len())?;
            let mut dims = d.dims[..axis].to_vec();
            dims.extend(i.dims.iter().cloned());
            dims.extend(d.dims[axis + 1..].iter().cloned());
            let value = match (cints(0), cints(1)) {
                (Some(dv), Some(iv)) if d.dims.len() == 1 => {
                    let n = dv.len() as i64;
                    let picked: Option<Vec<i64>> = iv
                        .iter()
                        .map(|&k| dv.get((if k < 0 { k + n } else { k }) as usize).copied())
                        .collect();
                    picked.and_then(|p| {
                        dims.iter()
                            .map(Dim::known)
                            .collect::<Option<Vec<_>>>()
                            .map(|nd| retype(TensorData::from_i64(nd, &p), d.dtype))
                    })
                }
                _ => None,
            };
            vec![Some(Out {
                ty: TensorType {
                    dtype: d.dtype,
                    dims,
                },
                value,
            })]
        }
        "GatherElements" => vec![out(TensorType {
            dtype: x()?.dtype,
            dims: input(1)?.dims.clone(),
        })],
        "GatherND" => {
            let (d, i) = (input(0)?, input(1)?);
            let b = int_attr(node, "batch_dims", 0) as usize;
            let k = i
                .dims
                .last()
                .and_then(Dim::known)
                .ok_or("GatherND's index depth must be static")? as usize;
            let mut dims = i.dims[..i.dims.len() - 1].to_vec();
            dims.extend(d.dims.get(b + k..).unwrap_or(&[]).iter().cloned());
            vec![out(TensorType {
                dtype: d.dtype,
                dims,
            })]
        }
        "ScatterND" | "ScatterElements" => same()?,
        "Expand" => {
            let x = x()?;
            let target = match cints(1) {
                Some(shape) => known(&shape),
                None => vec![Dim::Unknown; run_time_rank(input(1)?)?.max(x.dims.len())],
            };
            vec![out(TensorType {
                dtype: x.dtype,
                dims: broadcast(&[&x.dims, &target])?,
            })]
        }
        "Tile" => {
            let x = x()?;
            let Some(reps) = cints(1) else {
                return Ok(vec![out(TensorType {
                    dtype: x.dtype,
                    dims: vec![Dim::Unknown; x.dims.len()],
                })]);
            };
            let dims = x
                .dims
                .iter()
                .zip(&reps)
                .map(|(d, &r)| d.known().map(|d| Dim::Known(d * r)).unwrap_or(Dim::Unknown))
                .collect();
            vec![out(TensorType {
                dtype: x.dtype,
                dims,
            })]
        }
        "TopK" => {
            let x = x()?;
            let axis = size_axis(int_attr(node, "axis", -1), x.dims.len())?;
            let k = cints(1).and_then(|v| v.first().copied());
            let mut dims = x.dims.clone();
            dims[axis] = k.map(Dim::Known).unwrap_or(Dim::Unknown);
            vec![
                out(TensorType {
                    dtype: x.dtype,
                    dims: dims.clone(),
                }),
                out(TensorType {
                    dtype: DType::I64,
                    dims,
                }),
            ]
        }
        "OneHot" => {
            let i = x()?;
            let depth = cints(1).and_then(|v| v.first().copied());
            let vals = input(2)?;
            let rank = i.dims.len() + 1;
            let axis = norm_axis(int_attr(node, "axis", -1), rank)?;
            let mut dims = i.dims.clone();
            dims.insert(axis, depth.map(Dim::Known).unwrap_or(Dim::Unknown));
            vec![out(TensorType {
                dtype: vals.dtype,
                dims,
            })]
        }
        "Range" => {
            let s = x()?;
            // The count is known from the operands; the values are made only when small.
            let (value, n) = match (cints(0), cints(1), cints(2)) {
                (Some(a), Some(b), Some(c))
                    if c.first().is_some_and(|&c| c != 0) && !a.is_empty() && !b.is_empty() =>
                {
                    let (a, b, c) = (a[0], b[0], c[0]);
                    let n = ((b as f64 - a as f64) / c as f64).ceil().max(0.0) as i64;
                    let value = (n as u64 <= MAX_CONST as u64).then(|| {
                        let v: Vec<i64> = (0..n).map(|i| a + i * c).collect();
                        retype(TensorData::from_i64(vec![n], &v), s.dtype)
                    });
                    (value, Dim::Known(n))
                }
                _ => (None, Dim::Unknown),
            };
            vec![Some(Out {
                ty: TensorType {
                    dtype: s.dtype,
                    dims: vec![n],
                },
                value,
            })]
        }
        "Shape" => {
            let x = x()?;
            let r = x.dims.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clampi(int_attr(node, "start", 0));
            let end = clampi(int_attr(node, "end", r));
            let dims = &x.dims[start..end.max(start)];
            let value = dims
                .iter()
                .map(Dim::known)
                .collect::<Option<Vec<_>>>()
                .map(|v| TensorData::from_i64(vec![v.len() as i64], &v));
            vec![Some(Out {
                ty: TensorType::new(DType::I64, &[dims.len() as i64]),
                value,
            })]
        }
        "Size" => {
            let n = known_product(x()?.dims.iter().map(Dim::known));
            vec![Some(Out {
                ty: TensorType::new(DType::I64, &[]),
                value: n.map(|n| TensorData::from_i64(vec![], &[n])),
            })]
        }
        "ConstantOfShape" => {
            let fill = match node.attr("value") {
                Some(AttrValue::Tensor(t)) => t.clone(),
                _ => TensorData::from_f32(vec![1], &[0.0]),
            };
            let Some(shape) = cints(0) else {
                return Ok(vec![out(TensorType {
                    dtype: fill.dtype,
                    dims: vec![Dim::Unknown; run_time_rank(x()?)?],
                })]);
            };
            let n = known_product(shape.iter().map(|&d| Some(d))).unwrap_or(i64::MAX);
            let value =
                (fill.as_i64().is_some() && (0..=MAX_CONST as i64).contains(&n)).then(|| {
                    let v = fill
                        .as_i64()
                        .unwrap_or_default()
                        .first()
                        .copied()
                        .unwrap_or(0);
                    retype(
                        TensorData::from_i64(shape.clone(), &vec![v; n as usize]),
                        fill.dtype,
                    )
                });
            vec![Some(Out {
                ty: TensorType::new(fill.dtype, &shape),
                value,
            })]
        }
        "Constant" => {
            let data = constant_value(node)?;
            vec![Some(Out {
                ty: data.ty(),
                value: Some(data),
            })]
        }
        "NonZero" => vec![out(TensorType {
            dtype: DType::I64,
            dims: vec![Dim::Known(x()?.dims.len() as i64), Dim::Unknown],
        })],
        "Einsum" => {
            let Some(AttrValue::String(eq)) = node.attr("equation") else {
                return Err("Einsum needs an 'equation'".into());
            };
            let ins: Vec<&TensorType> = (0..node.inputs.len())
                .map(input)
                .collect::<Result<_, _>>()?;
            vec![out(einsum_type(eq, &ins)?)]
        }
        _ => vec![None; node.outputs.len()],
    })
}

/// The rank of a result whose shape is the value of a 1-D tensor computed at run time.
fn run_time_rank(shape: &TensorType) -> Result<usize, String> {
    match shape.dims.as_slice() {
        [Dim::Known(n)] => Ok(*n as usize),
        _ => Err(format!(
            "the result's rank depends on a run-time shape tensor of type {}",
            shape.mlir()
        )),
    }
}

/// The value of a Constant node, from whichever of its attributes holds it.
pub fn constant_value(node: &Node) -> Result<TensorData, String> {
    Ok(match node.attributes.first().map(|(n, v)| (n.as_str(), v)) {
        Some(("value", AttrValue::Tensor(t))) => t.clone(),
        Some(("value_float", AttrValue::Float(f))) => TensorData::from_f32(vec![], &[*f]),
        Some(("value_floats", AttrValue::Floats(f))) => TensorData::from_f32(vec![f.len() as i64], f),
        Some(("value_int", AttrValue::Int(i))) => TensorData::from_i64(vec![], &[*i]),
        Some(("value_ints", AttrValue::Ints(i))) => TensorData::from_i64(vec![i.len() as i64], i),
        _ => return Err("a Constant needs one of value, value_float(s), value_int(s); strings are not supported".into()),
    })
}

fn slice_bounds(s: i64, e: i64, step: i64, d: i64) -> (i64, i64) {
    let fix = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v + d } else { v };
        v.clamp(lo, hi)
    };
    if step > 0 {
        (fix(s, 0, d), fix(e, 0, d))
    } else {
        (fix(s, -1, d - 1), fix(e, -1, d - 1))
    }
}

/// Output dims of numpy matmul.
pub fn matmul_dims(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    let a2: Vec<Dim> = if a.len() == 1 {
        vec![Dim::Known(1), a[0].clone()]
    } else {
        a.to_vec()
    };
    let b2: Vec<Dim> = if b.len() == 1 {
        vec![b[0].clone(), Dim::Known(1)]
    } else {
        b.to_vec()
    };
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
        if x != y {
            return Err(format!("MatMul contraction sizes differ: {x} vs {y}"));
        }
    }
    let mut dims = broadcast(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]])?;
    if a.len() > 1 {
        dims.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        dims.push(b2[b2.len() - 1].clone());
    }
    Ok(dims)
}

fn einsum_type(eq: &str, ins: &[&TensorType]) -> Result<TensorType, String> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = eq
        .split_once("->")
        .ok_or("only explicit einsum equations (with '->') are supported")?;
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ins.len() || eq.contains("...") {
        return Err(format!(
            "einsum '{eq}': {} terms for {} inputs (ellipsis is not supported)",
            terms.len(),
            ins.len()
        ));
    }
    let mut sizes: HashMap<char, Dim> = HashMap::new();
    for (term, ty) in terms.iter().zip(ins) {
        if term.len() != ty.dims.len() {
            return Err(format!(
                "einsum term '{term}' does not match rank {}",
                ty.dims.len()
            ));
        }
        for (c, d) in term.chars().zip(&ty.dims) {
            let e = sizes.entry(c).or_insert(d.clone());
            if e.known().is_none() {
                *e = d.clone();
            }
        }
    }
    let dims = rhs
        .chars()
        .map(|c| {
            sizes
                .get(&c)
                .cloned()
                .ok_or(format!("einsum output index '{c}' is not in any input"))
        })
        .collect::<Result<_, _>>()?;
    Ok(TensorType {
        dtype: ins[0].dtype,
        dims,
    })
}

fn fold_binary(
    op: &str,
    a: &[i64],
    ad: &[Dim],
    b: &[i64],
    bd: &[Dim],
    out: &[i64],
) -> Option<Vec<i64>> {
    let n = known_product(out.iter().map(|&d| Some(d)))?;
    let idx = |flat: i64, dims: &[Dim]| -> Option<usize> {
        // Broadcast index of `flat` (in `out`) into an operand of shape `dims`.
        let dims: Vec<i64> = dims.iter().map(Dim::known).collect::<Option<_>>()?;
        let off = out.len() - dims.len();
        let mut rem = flat;
        let mut pos = 0i64;
        let mut stride = 1i64;
        for i in (0..out.len()).rev() {
            let c = rem % out[i];
            rem /= out[i];
            if i >= off {
                let d = dims[i - off];
                pos += if d == 1 { 0 } else { c } * stride;
                stride *= d;
            }
        }
        Some(pos as usize)
    };
    (0..n)
        .map(|f| {
            let (x, y) = (*a.get(idx(f, ad)?)?, *b.get(idx(f, bd)?)?);
            Some(match op {
                // Shape arithmetic of a hostile model may overflow: wrap, never trap.
                "Add" => x.wrapping_add(y),
                "Sub" => x.wrapping_sub(y),
                "Mul" => x.wrapping_mul(y),
                "Div" => x.checked_div_euclid(y)?,
                "Max" => x.max(y),
                "Min" => x.min(y),
                "Equal" => (x == y) as i64,
                "Less" => (x < y) as i64,
                "Greater" => (x > y) as i64,
                "LessOrEqual" => (x <= y) as i64,
                "GreaterOrEqual" => (x >= y) as i64,
                "And" => (x != 0 && y != 0) as i64,
                "Or" => (x != 0 || y != 0) as i64,
                _ => return None,
            })
        })
        .collect()
}

/// Integer constants (shape arithmetic) stored as `dtype`; other targets keep them as they are.
fn retype(t: TensorData, dtype: DType) -> TensorData {
    if dtype.is_float() {
        return t;
    }
    t.to_dtype(dtype).unwrap_or(t)
}

/// The product of sizes, None when one is unknown or the product overflows (a hostile model's
/// sizes are then unknown, never a wrapped number).
fn known_product(mut dims: impl Iterator<Item = Option<i64>>) -> Option<i64> {
    dims.try_fold(1i64, |acc, d| acc.checked_mul(d?))
}
