//! StableHLO ops -> the imported graph's ONNX-equivalent nodes, so that everything after the
//! import (core lowering, the MoE raise, distribution, codegen) is shared with ONNX models.
//! Private functions are inlined at their calls. The index-moving ops are in `indexing`,
//! shard_map and its all_to_all in `shard_map`, the softmax re-fusion in `softmax`.

use super::attrs;
use super::ir::{HOp, HRegion};
use crate::dtype::DType;
use crate::graph::{AttrValue, Node, TensorData, TensorType};
use std::collections::HashMap;

pub(super) type Env = HashMap<usize, String>;

/// Where a region is being lowered: the whole program, or device `d` of a manual computation.
#[derive(Clone, Default)]
pub(super) struct Device {
    pub(super) index: usize,
    pub(super) count: usize,
    /// The manual mesh axis the devices are on.
    pub(super) axis: String,
    /// A sharded argument's block -> (the whole argument, the dimension it is split on).
    pub(super) whole: HashMap<String, (String, usize)>,
    /// Inside a dispatch all_to_all pair: (local experts, slots after the exchange, experts, slots
    /// per source), for translating the shapes the source states.
    pub(super) exchange: Option<[i64; 4]>,
}

pub struct Lowering {
    funcs: HashMap<String, HOp>,
    pub(super) meshes: HashMap<String, Vec<(String, i64)>>,
    pub nodes: Vec<Node>,
    pub initializers: Vec<(String, TensorData)>,
    pub(super) consts: HashMap<String, TensorData>,
    iotas: HashMap<String, i64>,
    /// Broadcasts of a scalar, kept as the scalar while only elementwise ops read them
    /// (numpy broadcasting does the rest): a constant spread to [E, C, F] would otherwise look
    /// like one more expert weight stack. Materialised (name -> (scalar, dims)) where needed.
    lazy: HashMap<String, (String, Vec<i64>)>,
    /// A lazy scalar's full-shape tensor, once some op needed it.
    materialized: HashMap<String, String>,
    counter: usize,
}

const ELEMENTWISE_BINARY: [(&str, &str); 8] = [
    ("stablehlo.add", "Add"),
    ("stablehlo.subtract", "Sub"),
    ("stablehlo.multiply", "Mul"),
    ("stablehlo.divide", "Div"),
    ("stablehlo.maximum", "Max"),
    ("stablehlo.minimum", "Min"),
    ("stablehlo.power", "Pow"),
    ("stablehlo.remainder", "Mod"),
];

const ELEMENTWISE_UNARY: [(&str, &str); 12] = [
    ("stablehlo.negate", "Neg"),
    ("stablehlo.abs", "Abs"),
    ("stablehlo.exponential", "Exp"),
    ("stablehlo.log", "Log"),
    ("stablehlo.logistic", "Sigmoid"),
    ("stablehlo.tanh", "Tanh"),
    ("stablehlo.sqrt", "Sqrt"),
    ("stablehlo.sine", "Sin"),
    ("stablehlo.cosine", "Cos"),
    ("stablehlo.floor", "Floor"),
    ("stablehlo.ceil", "Ceil"),
    ("stablehlo.sign", "Sign"),
];

/// How many operands an op takes, where that is fixed: the ops are unregistered, so nothing but
/// this checks the text before the lowering indexes them.
fn arity(name: &str) -> Option<usize> {
    if ELEMENTWISE_BINARY.iter().any(|(n, _)| *n == name) {
        return Some(2);
    }
    if ELEMENTWISE_UNARY.iter().any(|(n, _)| *n == name) {
        return Some(1);
    }
    Some(match name {
        "stablehlo.constant" | "stablehlo.iota" => 0,
        "stablehlo.rsqrt"
        | "stablehlo.convert"
        | "stablehlo.not"
        | "chlo.erf"
        | "chlo.erfc"
        | "stablehlo.exponential_minus_one"
        | "stablehlo.log_plus_one"
        | "stablehlo.reshape"
        | "stablehlo.transpose"
        | "stablehlo.broadcast_in_dim"
        | "stablehlo.slice"
        | "stablehlo.all_to_all"
        | "chlo.top_k" => 1,
        "stablehlo.compare"
        | "stablehlo.and"
        | "stablehlo.or"
        | "stablehlo.xor"
        | "stablehlo.dot_general"
        | "stablehlo.gather"
        | "stablehlo.reduce_window" => 2,
        "stablehlo.select" | "stablehlo.clamp" | "stablehlo.scatter" => 3,
        _ => return None,
    })
}

fn is_elementwise(name: &str) -> bool {
    ELEMENTWISE_BINARY.iter().any(|(n, _)| *n == name)
        || ELEMENTWISE_UNARY.iter().any(|(n, _)| *n == name)
        || matches!(
            name,
            "stablehlo.rsqrt"
                | "stablehlo.convert"
                | "stablehlo.compare"
                | "stablehlo.select"
                | "stablehlo.and"
                | "stablehlo.or"
                | "stablehlo.not"
                | "stablehlo.xor"
                | "chlo.erf"
                | "chlo.erfc"
                | "stablehlo.clamp"
                | "stablehlo.exponential_minus_one"
                | "stablehlo.log_plus_one"
                | "stablehlo.constant"
        )
}

impl Lowering {
    pub fn new(funcs: HashMap<String, HOp>, meshes: HashMap<String, Vec<(String, i64)>>) -> Self {
        Lowering {
            funcs,
            meshes,
            nodes: Vec::new(),
            initializers: Vec::new(),
            consts: HashMap::new(),
            iotas: HashMap::new(),
            lazy: HashMap::new(),
            materialized: HashMap::new(),
            counter: 0,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    fn node(
        &mut self,
        op_type: &str,
        inputs: Vec<String>,
        attributes: Vec<(&str, AttrValue)>,
        outputs: usize,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..outputs)
            .map(|_| self.fresh(&op_type.to_lowercase()))
            .collect();
        self.nodes.push(Node {
            name: format!("{}_{}", op_type, self.nodes.len()),
            op_type: op_type.into(),
            domain: String::new(),
            inputs,
            outputs: outs.clone(),
            attributes: attributes
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
        });
        outs
    }

    pub(super) fn one(
        &mut self,
        op_type: &str,
        inputs: Vec<String>,
        attributes: Vec<(&str, AttrValue)>,
    ) -> String {
        self.node(op_type, inputs, attributes, 1).remove(0)
    }

    pub fn constant(&mut self, t: TensorData) -> String {
        let name = self.fresh("const");
        self.consts.insert(name.clone(), t.clone());
        self.initializers.push((name.clone(), t));
        name
    }

    pub(super) fn i64s(&mut self, v: &[i64]) -> String {
        self.constant(TensorData::from_i64(vec![v.len() as i64], v))
    }

    pub(super) fn reshape(&mut self, x: String, dims: &[i64]) -> String {
        let shape = self.i64s(dims);
        self.one("Reshape", vec![x, shape], vec![])
    }

    /// A lazily broadcast scalar as a tensor of its full shape (other names as they are).
    fn materialize(&mut self, name: String) -> String {
        let Some((scalar, dims)) = self.lazy.get(&name).cloned() else {
            return name;
        };
        if let Some(done) = self.materialized.get(&name) {
            return done.clone();
        }
        let r = self.reshape(scalar, &vec![1; dims.len()]);
        let o = self.i64s(&dims);
        let full = self.one("Expand", vec![r, o], vec![]);
        self.materialized.insert(name, full.clone());
        full
    }

    /// Lowers a function's body (its arguments already named in `env`); returns its results.
    pub fn lower_function(&mut self, body: &HRegion, env: &mut Env) -> Result<Vec<String>, String> {
        self.region(&body.ops, env, &mut Device::default())
    }

    /// Lowers `ops` in `env`; returns what the region's terminator returns.
    pub(super) fn region(
        &mut self,
        ops: &[HOp],
        env: &mut Env,
        dev: &mut Device,
    ) -> Result<Vec<String>, String> {
        let producers: HashMap<usize, &HOp> = ops
            .iter()
            .flat_map(|o| o.results.iter().map(move |r| (r.id, o)))
            .collect();
        for op in ops {
            if let Some(n) = arity(&op.name).filter(|&n| n != op.operands.len()) {
                return Err(format!(
                    "{}: {} operands where the op takes {n}",
                    op.describe(),
                    op.operands.len()
                ));
            }
            // JAX spells softmax out (max, subtract, exp, sum, divide); the MoE raise knows
            // routers by their softmax, so the spelled-out form becomes one Softmax again.
            if let Some((x, axis)) = super::softmax::softmax_of(op, &producers) {
                if let (Some(xn), Some(r)) = (env.get(&x).cloned(), op.results.first()) {
                    let s = self.one("Softmax", vec![xn], vec![("axis", AttrValue::Int(axis))]);
                    env.insert(r.id, s);
                    continue;
                }
            }
            if matches!(
                op.name.as_str(),
                "func.return" | "stablehlo.return" | "sdy.return"
            ) {
                let names: Vec<String> = op
                    .operands
                    .iter()
                    .map(|v| {
                        env.get(v)
                            .cloned()
                            .ok_or_else(|| format!("{}: operand %v{v} is not defined", op.name))
                    })
                    .collect::<Result<_, _>>()?;
                return Ok(names.into_iter().map(|n| self.materialize(n)).collect());
            }
            let mut args: Vec<String> = op
                .operands
                .iter()
                .map(|v| {
                    env.get(v)
                        .cloned()
                        .ok_or_else(|| format!("{}: operand %v{v} is not defined", op.describe()))
                })
                .collect::<Result<_, _>>()?;
            // A broadcast scalar stays a scalar where an elementwise op's other operand has the
            // result's shape.
            let out_dims = op.results.first().and_then(|r| r.ty.static_dims());
            let full = is_elementwise(&op.name)
                && args
                    .iter()
                    .zip(&op.operand_types)
                    .any(|(a, t)| !self.lazy.contains_key(a) && t.static_dims() == out_dims);
            for a in args.iter_mut() {
                *a = match self.lazy.get(a).cloned() {
                    Some((scalar, _)) if full => scalar,
                    _ => self.materialize(a.clone()),
                };
            }
            if dev.exchange.is_some()
                && !is_elementwise(&op.name)
                && !matches!(
                    op.name.as_str(),
                    // A call's body is inlined and its ops checked one by one, here.
                    "stablehlo.dot_general"
                        | "stablehlo.broadcast_in_dim"
                        | "stablehlo.all_to_all"
                        | "func.call"
                )
            {
                return Err(format!("{}: between a dispatch all_to_all and its return, ppmoe raises only per-expert work (elementwise ops, batched dot_generals on the expert dimension, and calls of functions made of them)", op.describe()));
            }
            let outs = self.op(op, args, dev).map_err(|e| {
                if e.contains(&op.name) {
                    e
                } else {
                    format!("{}: {e}", op.describe())
                }
            })?;
            if outs.len() != op.results.len() {
                return Err(format!(
                    "{}: {} results lowered for {}",
                    op.describe(),
                    outs.len(),
                    op.results.len()
                ));
            }
            for (r, o) in op.results.iter().zip(outs) {
                env.insert(r.id, o);
            }
        }
        Err("a region without a terminator".into())
    }

    /// The result type the source states, translated inside an all_to_all pair (see `Device`).
    fn result_dims(&self, op: &HOp, i: usize, dev: &Device) -> Result<Vec<i64>, String> {
        let dims = op
            .results
            .get(i)
            .and_then(|r| r.ty.static_dims())
            .ok_or("a result of dynamic shape")?;
        Ok(match dev.exchange {
            Some([el, rows, e, c]) if dims.len() >= 2 && dims[0] == el && dims[1] == rows => {
                let mut d = vec![e, c];
                d.extend(&dims[2..]);
                d
            }
            _ => dims,
        })
    }

    fn op(&mut self, op: &HOp, args: Vec<String>, dev: &mut Device) -> Result<Vec<String>, String> {
        let name = op.name.as_str();
        let attr = |n: &str| {
            op.attr(n)
                .ok_or_else(|| format!("attribute {n} is missing"))
        };
        let arg = |i: usize| {
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("operand {i} is missing"))
        };
        if let Some((_, onnx)) = ELEMENTWISE_BINARY.iter().find(|(n, _)| *n == name) {
            return Ok(vec![self.one(onnx, vec![arg(0)?, arg(1)?], vec![])]);
        }
        if let Some((_, onnx)) = ELEMENTWISE_UNARY.iter().find(|(n, _)| *n == name) {
            return Ok(vec![self.one(onnx, vec![arg(0)?], vec![])]);
        }
        let out_ty = |i: usize| {
            op.results
                .get(i)
                .map(|r| r.ty.clone())
                .ok_or_else(|| format!("result {i} is missing"))
        };
        Ok(match name {
            "stablehlo.constant" => {
                let t = op.dense("value").ok_or("its value is not a dense elements attribute")?.clone();
                vec![self.constant(t)]
            }
            "stablehlo.iota" => vec![self.iota(&out_ty(0)?, attr("iota_dimension"))?],
            "stablehlo.rsqrt" => {
                let s = self.one("Sqrt", vec![arg(0)?], vec![]);
                vec![self.one("Reciprocal", vec![s], vec![])]
            }
            "stablehlo.exponential_minus_one" | "stablehlo.log_plus_one" => {
                vec![self.near_one(name, arg(0)?, &out_ty(0)?)?]
            }
            "chlo.erf" => vec![self.one("Erf", vec![arg(0)?], vec![])],
            "chlo.erfc" => {
                let e = self.one("Erf", vec![arg(0)?], vec![]);
                let one = self.scalar_like(1.0, &out_ty(0)?)?;
                vec![self.one("Sub", vec![one, e], vec![])]
            }
            "stablehlo.clamp" => {
                let lo = self.one("Max", vec![arg(1)?, arg(0)?], vec![]);
                vec![self.one("Min", vec![lo, arg(2)?], vec![])]
            }
            "stablehlo.and" | "stablehlo.or" | "stablehlo.xor" | "stablehlo.not" => {
                vec![self.logic(name, args.clone(), &out_ty(0)?)?]
            }
            "stablehlo.convert" => vec![self.one("Cast", vec![arg(0)?], vec![("to", AttrValue::Int(out_ty(0)?.dtype.to_onnx() as i64))])],
            "stablehlo.compare" => {
                let dir = attrs::enum_value(attr("comparison_direction")?, "comparison_direction")?;
                vec![self.compare(&dir, arg(0)?, arg(1)?)?]
            }
            "stablehlo.select" => vec![self.one("Where", vec![arg(0)?, arg(1)?, arg(2)?], vec![])],
            "stablehlo.reshape" => {
                let dims = self.result_dims(op, 0, dev)?;
                vec![self.reshape(arg(0)?, &dims)]
            }
            "stablehlo.transpose" => {
                let perm = attrs::i64_array(attr("permutation")?)?;
                vec![self.one("Transpose", vec![arg(0)?], vec![("perm", AttrValue::Ints(perm))])]
            }
            "stablehlo.broadcast_in_dim" => vec![self.broadcast_in_dim(op, arg(0)?, dev)?],
            "stablehlo.dot_general" => vec![self.dot_general(op, arg(0)?, arg(1)?, dev)?],
            "stablehlo.concatenate" => {
                let axis = attrs::integer(attr("dimension")?)?;
                vec![self.one("Concat", args.clone(), vec![("axis", AttrValue::Int(axis))])]
            }
            "stablehlo.slice" => {
                let bounds = ["start_indices", "limit_indices", "strides"].map(attr);
                let [s, l, st] = bounds.map(|b| b.and_then(attrs::i64_array));
                vec![self.slice(arg(0)?, (&s?, &l?, &st?))]
            }
            "stablehlo.reduce" => self.reduce(op, &args)?,
            "stablehlo.reduce_window" => vec![self.cumsum(op, arg(0)?)?],
            "stablehlo.gather" => vec![self.gather(op, arg(0)?, arg(1)?)?],
            "stablehlo.scatter" => vec![self.scatter(op, &args)?],
            "stablehlo.custom_call" | "chlo.top_k" => self.custom_call(op, &args)?,
            "func.call" => self.call(&attrs::symbol(attr("callee")?), args, dev)?,
            "sdy.manual_computation" => self.manual_computation(op, args)?,
            "stablehlo.all_to_all" => vec![self.all_to_all(op, arg(0)?, dev)?],
            "stablehlo.optimization_barrier" => args.clone(),
            "stablehlo.while" => self.counted_loop(op, args.clone(), dev)?,
            "stablehlo.dynamic_slice" => vec![self.dynamic_slice(op, &args)?],
            other => {
                return Err(format!(
                    "{other} is not supported (ppmoe reads dot_general, broadcast_in_dim, reshape, transpose, convert, compare, select, reduce, reduce_window (cumsum), iota, constant, concatenate, slice, gather (row lookups), custom_call (top-k), the elementwise ops, func.call, while (counted loops, unrolled), dynamic_slice, sdy.manual_computation and all_to_all)"
                ))
            }
        })
    }

    /// An iota as the constant it is (remembered as one, for the gathers that read it).
    fn iota(&mut self, ty: &TensorType, axis: Result<&str, String>) -> Result<String, String> {
        let dims = ty.static_dims().ok_or("dynamic shape")?;
        let axis = attrs::integer(axis?)? as usize;
        if axis >= dims.len() {
            return Err(format!(
                "iota_dimension {axis} of a rank-{} result",
                dims.len()
            ));
        }
        let strides: Vec<i64> = (0..dims.len())
            .map(|i| dims[i + 1..].iter().product())
            .collect();
        let n: i64 = dims.iter().product();
        let values: Vec<i64> = (0..n).map(|k| (k / strides[axis]) % dims[axis]).collect();
        let t = retype(TensorData::from_i64(dims, &values), ty.dtype)?;
        let c = self.constant(t);
        self.iotas.insert(c.clone(), axis as i64);
        Ok(c)
    }

    /// exp(x) - 1 and log(1 + x), as the plain ops.
    fn near_one(&mut self, name: &str, x: String, ty: &TensorType) -> Result<String, String> {
        let one = self.scalar_like(1.0, ty)?;
        Ok(if name.ends_with("minus_one") {
            let e = self.one("Exp", vec![x], vec![]);
            self.one("Sub", vec![e, one], vec![])
        } else {
            let p = self.one("Add", vec![x, one], vec![]);
            self.one("Log", vec![p], vec![])
        })
    }

    /// and / or / xor / not of booleans (ONNX has no bitwise logic on integers).
    fn logic(&mut self, name: &str, args: Vec<String>, ty: &TensorType) -> Result<String, String> {
        if ty.dtype != DType::Bool {
            return Err("bitwise logic on integers is not supported (only on i1)".into());
        }
        let onnx = match name {
            "stablehlo.and" => "And",
            "stablehlo.or" => "Or",
            "stablehlo.xor" => "Xor",
            _ => "Not",
        };
        Ok(self.one(onnx, args, vec![]))
    }

    fn compare(&mut self, dir: &str, a: String, b: String) -> Result<String, String> {
        Ok(match dir {
            "EQ" => self.one("Equal", vec![a, b], vec![]),
            "NE" => {
                let e = self.one("Equal", vec![a, b], vec![]);
                self.one("Not", vec![e], vec![])
            }
            "LT" => self.one("Less", vec![a, b], vec![]),
            "LE" => self.one("LessOrEqual", vec![a, b], vec![]),
            "GT" => self.one("Greater", vec![a, b], vec![]),
            "GE" => self.one("GreaterOrEqual", vec![a, b], vec![]),
            other => {
                return Err(format!(
                    "comparison_direction {other} is not one of EQ, NE, LT, LE, GT, GE"
                ))
            }
        })
    }

    /// A static slice: starts, limits and strides on every axis.
    fn slice(&mut self, x: String, (s, l, st): (&[i64], &[i64], &[i64])) -> String {
        let axes: Vec<i64> = (0..s.len() as i64).collect();
        let (a, b, c, d) = (self.i64s(s), self.i64s(l), self.i64s(&axes), self.i64s(st));
        self.one("Slice", vec![x, a, b, c, d], vec![])
    }

    /// A call of a function of the module, inlined.
    fn call(
        &mut self,
        callee: &str,
        args: Vec<String>,
        dev: &mut Device,
    ) -> Result<Vec<String>, String> {
        let f = self
            .funcs
            .get(callee)
            .cloned()
            .ok_or_else(|| format!("calls @{callee}, which the module does not define"))?;
        let body = f
            .regions
            .first()
            .ok_or_else(|| format!("@{callee} has no body"))?;
        self.inline(body, args, dev)
    }

    fn inline(
        &mut self,
        body: &HRegion,
        args: Vec<String>,
        dev: &mut Device,
    ) -> Result<Vec<String>, String> {
        if body.args.len() != args.len() {
            return Err(format!(
                "a call passes {} arguments to a function of {}",
                args.len(),
                body.args.len()
            ));
        }
        let mut env: Env = body.args.iter().map(|a| a.id).zip(args).collect();
        self.region(&body.ops, &mut env, dev)
    }

    /// A scalar of `ty`'s element type.
    pub(super) fn scalar_like(&mut self, v: f64, ty: &TensorType) -> Result<String, String> {
        let t = if ty.dtype.is_float() {
            TensorData::from_f32(vec![], &[v as f32])
        } else {
            TensorData::from_i64(vec![], &[v as i64])
        };
        Ok(self.constant(retype(t, ty.dtype)?))
    }

    fn broadcast_in_dim(&mut self, op: &HOp, x: String, dev: &Device) -> Result<String, String> {
        let dims = attrs::i64_array(
            op.attr("broadcast_dimensions")
                .ok_or("attribute broadcast_dimensions is missing")?,
        )?;
        let out = self.result_dims(op, 0, dev)?;
        let in_dims = op.operand_dims(0)?;
        if dims.len() != in_dims.len() || dims.iter().any(|&d| d < 0 || d as usize >= out.len()) {
            return Err(format!(
                "broadcast_dimensions {dims:?} do not map a rank-{} operand into a rank-{} result",
                in_dims.len(),
                out.len()
            ));
        }
        if dims.is_empty() {
            let name = self.fresh("broadcast");
            self.lazy.insert(name.clone(), (x, out));
            return Ok(name);
        }
        let mut x = x;
        // Operand dimensions in increasing result order first.
        let mut order: Vec<usize> = (0..dims.len()).collect();
        order.sort_by_key(|&i| dims[i]);
        if order.iter().enumerate().any(|(k, &i)| k != i) {
            x = self.one(
                "Transpose",
                vec![x],
                vec![(
                    "perm",
                    AttrValue::Ints(order.iter().map(|&i| i as i64).collect()),
                )],
            );
        }
        let mut sorted: Vec<i64> = dims.clone();
        sorted.sort();
        // The operand's own sizes where they map, 1 elsewhere; then expand to the result.
        let mut shape = vec![1i64; out.len()];
        for (k, &d) in sorted.iter().enumerate() {
            let src = order[k];
            shape[d as usize] = in_dims.get(src).copied().unwrap_or(out[d as usize]);
            // Inside an exchange the source's sizes are the local ones: take the result's.
            if dev.exchange.is_some() && shape[d as usize] != 1 {
                shape[d as usize] = out[d as usize];
            }
        }
        let r = self.reshape(x, &shape);
        if shape == out {
            return Ok(r);
        }
        let o = self.i64s(&out);
        Ok(self.one("Expand", vec![r, o], vec![]))
    }

    fn dot_general(
        &mut self,
        op: &HOp,
        lhs: String,
        rhs: String,
        dev: &Device,
    ) -> Result<String, String> {
        let d = attrs::dot_dims(
            op.attr("dot_dimension_numbers")
                .ok_or("attribute dot_dimension_numbers is missing")?,
        )?;
        let (lr, rr) = (op.operand_rank(0)?, op.operand_rank(1)?);
        let within = |v: &[i64], r: usize| v.iter().all(|&d| d >= 0 && (d as usize) < r);
        if !within(&d.lhs_batch, lr)
            || !within(&d.lhs_contract, lr)
            || !within(&d.rhs_batch, rr)
            || !within(&d.rhs_contract, rr)
        {
            return Err(format!(
                "dimension numbers {d:?} name dimensions beyond the operands' ranks {lr} and {rr}"
            ));
        }
        let mut rhs = rhs;
        if dev.exchange.is_some() {
            // Per-expert work: the expert dimension is the batch, the slots are not contracted,
            // and the weights are the whole expert stacks.
            if d.lhs_batch.first() != Some(&0)
                || d.rhs_batch.first() != Some(&0)
                || d.lhs_contract.contains(&1)
            {
                return Err("a dot_general between the all_to_alls is not batched over the experts (dimension 0)".into());
            }
            if let Some((whole, 0)) = dev.whole.get(&rhs) {
                rhs = whole.clone();
            }
        }
        // A plain matrix product (rows of lhs times a matrix) is a MatMul: what the MoE raise
        // reads a router's logits as.
        if d.lhs_batch.is_empty()
            && rr == 2
            && d.lhs_contract == [lr as i64 - 1]
            && d.rhs_contract == [0]
        {
            return Ok(self.one("MatMul", vec![lhs, rhs], vec![]));
        }
        let letters: Vec<char> = ('a'..='z').collect();
        let mut next = 0;
        let mut lhs_l = vec![' '; lr];
        let mut rhs_l = vec![' '; rr];
        for (&a, &b) in d
            .lhs_batch
            .iter()
            .zip(&d.rhs_batch)
            .chain(d.lhs_contract.iter().zip(&d.rhs_contract))
        {
            let c = *letters.get(next).ok_or("too many dimensions")?;
            next += 1;
            lhs_l[a as usize] = c;
            rhs_l[b as usize] = c;
        }
        for l in lhs_l.iter_mut().chain(rhs_l.iter_mut()) {
            if *l == ' ' {
                *l = *letters.get(next).ok_or("too many dimensions")?;
                next += 1;
            }
        }
        let mut out: String = d.lhs_batch.iter().map(|&a| lhs_l[a as usize]).collect();
        out.extend(
            (0..lr)
                .filter(|i| {
                    !d.lhs_batch.contains(&(*i as i64)) && !d.lhs_contract.contains(&(*i as i64))
                })
                .map(|i| lhs_l[i]),
        );
        out.extend(
            (0..rr)
                .filter(|i| {
                    !d.rhs_batch.contains(&(*i as i64)) && !d.rhs_contract.contains(&(*i as i64))
                })
                .map(|i| rhs_l[i]),
        );
        let eq = format!(
            "{},{}->{}",
            lhs_l.iter().collect::<String>(),
            rhs_l.iter().collect::<String>(),
            out
        );
        Ok(self.one(
            "Einsum",
            vec![lhs, rhs],
            vec![("equation", AttrValue::String(eq))],
        ))
    }

    fn reduce(&mut self, op: &HOp, args: &[String]) -> Result<Vec<String>, String> {
        let dims = attrs::i64_array(
            op.attr("dimensions")
                .ok_or("attribute dimensions is missing")?,
        )?;
        let body = op.regions.first().ok_or("no reduction body")?;
        let n = args.len() / 2;
        let computing: Vec<&HOp> = body
            .ops
            .iter()
            .filter(|o| o.name != "stablehlo.return")
            .collect();
        if n == 1 {
            let [single] = computing[..] else {
                return Err(format!(
                    "a reduction body of {} ops (ppmoe reads add, maximum, minimum, multiply)",
                    computing.len()
                ));
            };
            let onnx = match single.name.as_str() {
                "stablehlo.add" => "ReduceSum",
                "stablehlo.maximum" => "ReduceMax",
                "stablehlo.minimum" => "ReduceMin",
                "stablehlo.multiply" => "ReduceProd",
                other => return Err(format!("a reduction by {other} is not supported")),
            };
            let axes = self.i64s(&dims);
            let r = self.one(
                onnx,
                vec![args[0].clone(), axes],
                vec![("keepdims", AttrValue::Int(0))],
            );
            // The initial value joins the result, unless it is the reduction's identity.
            let init = &args[1];
            let identity = self
                .consts
                .get(init)
                .and_then(TensorData::as_f64)
                .is_some_and(|v| {
                    v.len() == 1
                        && match onnx {
                            "ReduceSum" => v[0] == 0.0,
                            "ReduceProd" => v[0] == 1.0,
                            "ReduceMax" => v[0] == f64::NEG_INFINITY || v[0] <= i32::MIN as f64,
                            _ => v[0] == f64::INFINITY || v[0] >= i32::MAX as f64,
                        }
                });
            if identity {
                return Ok(vec![r]);
            }
            let combine = match onnx {
                "ReduceSum" => "Add",
                "ReduceProd" => "Mul",
                "ReduceMax" => "Max",
                _ => "Min",
            };
            return Ok(vec![self.one(combine, vec![r, init.clone()], vec![])]);
        }
        // (values, indices) with an iota of the reduced dimension: arg max / arg min, first index
        // on ties.
        if n == 2 && dims.len() == 1 {
            let axis = dims[0];
            let is_iota = self.iotas.get(&args[1]) == Some(&axis);
            let first = computing
                .iter()
                .find(|o| o.name == "stablehlo.compare")
                .and_then(|o| o.attr("comparison_direction"))
                .map(|a| attrs::enum_value(a, "comparison_direction"));
            let dir = first.transpose()?.unwrap_or_default();
            if is_iota && (dir == "GT" || dir == "LT") {
                let (val, arg) = if dir == "GT" {
                    ("ReduceMax", "ArgMax")
                } else {
                    ("ReduceMin", "ArgMin")
                };
                let axes = self.i64s(&dims);
                let v = self.one(
                    val,
                    vec![args[0].clone(), axes],
                    vec![("keepdims", AttrValue::Int(0))],
                );
                let i = self.one(
                    arg,
                    vec![args[0].clone()],
                    vec![
                        ("axis", AttrValue::Int(axis)),
                        ("keepdims", AttrValue::Int(0)),
                    ],
                );
                let to = op.results.get(1).map(|r| r.ty.dtype).unwrap_or(DType::I64);
                let i = self.one(
                    "Cast",
                    vec![i],
                    vec![("to", AttrValue::Int(to.to_onnx() as i64))],
                );
                return Ok(vec![v, i]);
            }
        }
        Err(format!("a reduction of {n} operands over {dims:?} that is not an arg max or arg min (values with an iota of the reduced dimension)"))
    }

    fn custom_call(&mut self, op: &HOp, args: &[String]) -> Result<Vec<String>, String> {
        let target = if op.name == "chlo.top_k" {
            "TopK".to_string()
        } else {
            op.attr("call_target_name")
                .map(|s| s.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        match target.as_str() {
            "mhlo.topk" | "TopK" | "stablehlo.top_k" => {
                let k = op.results.first().and_then(|r| r.ty.dims.last().and_then(|d| d.known())).ok_or("top-k of unknown k")?;
                let kc = self.i64s(&[k]);
                let x = args.first().cloned().ok_or("a top-k of no operand")?;
                let outs = self.node("TopK", vec![x, kc], vec![("axis", AttrValue::Int(-1)), ("largest", AttrValue::Int(1)), ("sorted", AttrValue::Int(1))], 2);
                let to = op.results.get(1).map(|r| r.ty.dtype).unwrap_or(DType::I64);
                let idx = self.one("Cast", vec![outs[1].clone()], vec![("to", AttrValue::Int(to.to_onnx() as i64))]);
                Ok(vec![outs[0].clone(), idx])
            }
            "Sharding" | "SPMDFullToShardShape" | "SPMDShardToFullShape" => Ok(args.to_vec()),
            other => Err(format!("custom_call @{other} is not supported (ppmoe reads the top-k calls mhlo.topk / TopK)")),
        }
    }
}

impl HOp {
    fn operand_rank(&self, i: usize) -> Result<usize, String> {
        self.operand_dims(i).map(|d| d.len())
    }

    /// The static dims of operand `i`, recorded by the reader.
    pub fn operand_dims(&self, i: usize) -> Result<Vec<i64>, String> {
        self.operand_types
            .get(i)
            .and_then(|t| t.static_dims())
            .ok_or_else(|| format!("operand {i} has no static type"))
    }
}

/// A constant of integers or floats stored as `dtype`.
fn retype(t: TensorData, dtype: DType) -> Result<TensorData, String> {
    t.to_dtype(dtype)
        .ok_or_else(|| format!("constants of {dtype:?} are not supported"))
}
