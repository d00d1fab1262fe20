//! Elementwise ops with numpy broadcasting.

use super::{broadcast_map, broadcast_shape, KResult};
use crate::program::{BinaryFn, UnaryFn};
use crate::tensor::{DType, Data, Tensor};

pub fn unary(f: UnaryFn, x: &Tensor) -> KResult<Tensor> {
    let shape = x.shape.clone();
    Ok(match (&*x.data, f) {
        (Data::Half(_), _) => return unary(f, &x.clone().widened()),
        (Data::Bool(v), UnaryFn::Not) => Tensor::bool(shape, v.iter().map(|b| !b).collect()),
        (Data::I64(v), _) => {
            let g = |a: i64| -> KResult<i64> {
                Ok(match f {
                    UnaryFn::Neg => a.wrapping_neg(),
                    UnaryFn::Abs => a.wrapping_abs(),
                    UnaryFn::Relu => a.max(0),
                    UnaryFn::Sign => a.signum(),
                    _ => return Err(format!("{f:?} of an integer tensor")),
                })
            };
            let v = v.iter().map(|&a| g(a).map(|v| wrapped(v, x.dtype)));
            Tensor::i64(shape, v.collect::<KResult<_>>()?).with_dtype(x.dtype)
        }
        (Data::F32(v), _) => {
            let g: fn(f32) -> f32 = match f {
                UnaryFn::Neg => |a| -a,
                UnaryFn::Abs => f32::abs,
                UnaryFn::Sqrt => f32::sqrt,
                UnaryFn::Reciprocal => |a| 1.0 / a,
                UnaryFn::Exp => f32::exp,
                UnaryFn::Log => f32::ln,
                UnaryFn::Sigmoid => |a| 1.0 / (1.0 + (-a).exp()),
                UnaryFn::Tanh => f32::tanh,
                UnaryFn::Erf => libm::erff,
                UnaryFn::Relu => |a| a.max(0.0),
                UnaryFn::Sin => f32::sin,
                UnaryFn::Cos => f32::cos,
                UnaryFn::Floor => f32::floor,
                UnaryFn::Ceil => f32::ceil,
                UnaryFn::Sign => |a| {
                    if a > 0.0 {
                        1.0
                    } else if a < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                },
                UnaryFn::Gelu => |a| 0.5 * a * (1.0 + libm::erff(a / std::f32::consts::SQRT_2)),
                UnaryFn::GeluTanh => {
                    |a| 0.5 * a * (1.0 + (0.797_884_6 * (a + 0.044715 * a * a * a)).tanh())
                }
                UnaryFn::Not => return Err("Not of a float tensor".into()),
            };
            Tensor::f32(shape, v.iter().map(|&a| g(a)).collect()).with_dtype(x.dtype)
        }
        (Data::Bool(_), _) => return Err(format!("{f:?} of a bool tensor")),
    })
}

pub fn binary(f: BinaryFn, a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let (ia, ib) = (
        broadcast_map(&a.shape, &shape),
        broadcast_map(&b.shape, &shape),
    );
    let at = Broadcast {
        a: &ia,
        b: &ib,
        shape,
    };
    Ok(match (&*a.data, &*b.data) {
        (Data::F32(x), Data::F32(y)) => binary_f32(f, (x, y), at, a.dtype)?,
        (Data::I64(x), Data::I64(y)) => binary_i64(f, (x, y), at, a.dtype)?,
        (Data::Bool(x), Data::Bool(y)) => binary_bool(f, (x, y), at)?,
        (Data::F32(x), Data::I64(y)) if f == BinaryFn::Pow => {
            let pow = at.pairs().map(|(i, j)| pow_f32(x[i], y[j] as f32));
            Tensor::f32(at.shape.clone(), pow.collect()).with_dtype(a.dtype)
        }
        _ => {
            return Err(format!(
                "{f:?} of {} and {} tensors",
                a.dtype.name(),
                b.dtype.name()
            ))
        }
    })
}

/// Where each output element of a broadcast binary op reads its two operands.
struct Broadcast<'a> {
    a: &'a [usize],
    b: &'a [usize],
    shape: Vec<usize>,
}

impl Broadcast<'_> {
    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.a.iter().copied().zip(self.b.iter().copied())
    }
}

/// Floats (a compare gives booleans; anything else is stored as `dtype`, a's type).
fn binary_f32(
    f: BinaryFn,
    (x, y): (&[f32], &[f32]),
    at: Broadcast,
    dtype: DType,
) -> KResult<Tensor> {
    if f.is_comparison() {
        let c = at.pairs().map(|(i, j)| cmp(f, x[i].partial_cmp(&y[j])));
        return Ok(Tensor::bool(at.shape.clone(), c.collect()));
    }
    let g: fn(f32, f32) -> f32 = match f {
        BinaryFn::Add => |p, q| p + q,
        BinaryFn::Sub => |p, q| p - q,
        BinaryFn::Mul => |p, q| p * q,
        BinaryFn::Div => |p, q| p / q,
        BinaryFn::Pow => pow_f32,
        BinaryFn::Max => f32::max,
        BinaryFn::Min => f32::min,
        BinaryFn::Mod => |p, q| p % q,
        _ => return Err(format!("{f:?} of float tensors")),
    };
    let v = at.pairs().map(|(i, j)| g(x[i], y[j]));
    Ok(Tensor::f32(at.shape.clone(), v.collect()).with_dtype(dtype))
}

/// Integers, wrapping (a compare gives booleans; anything else is stored as `dtype`).
fn binary_i64(
    f: BinaryFn,
    (x, y): (&[i64], &[i64]),
    at: Broadcast,
    dtype: DType,
) -> KResult<Tensor> {
    if f.is_comparison() {
        let c = at.pairs().map(|(i, j)| cmp(f, Some(x[i].cmp(&y[j]))));
        return Ok(Tensor::bool(at.shape.clone(), c.collect()));
    }
    let g = |p: i64, q: i64| -> KResult<i64> {
        Ok(match f {
            BinaryFn::Add => p.wrapping_add(q),
            BinaryFn::Sub => p.wrapping_sub(q),
            BinaryFn::Mul => p.wrapping_mul(q),
            // ONNX integer Div truncates toward zero, as C does.
            // i64::MIN / -1 wraps (as two's complement does) instead of trapping.
            BinaryFn::Div if q != 0 => p.wrapping_div(q),
            BinaryFn::Div | BinaryFn::Mod if q == 0 => {
                return Err("integer division by zero".into())
            }
            // fmod = 0: the sign follows the divisor, as in Python.
            BinaryFn::Mod => p.wrapping_rem(q).wrapping_add(q).wrapping_rem(q),
            BinaryFn::Pow => p.wrapping_pow(q.clamp(0, u32::MAX as i64) as u32),
            BinaryFn::Max => p.max(q),
            BinaryFn::Min => p.min(q),
            _ => return Err(format!("{f:?} of integer tensors")),
        })
    };
    // Computed in i64, then wrapped to the type's width, as arithmetic of that width wraps.
    let v = at
        .pairs()
        .map(|(i, j)| g(x[i], y[j]).map(|v| wrapped(v, dtype)));
    Ok(Tensor::i64(at.shape.clone(), v.collect::<KResult<_>>()?).with_dtype(dtype))
}

/// `v` wrapped to the width of integer type `dtype` (two's complement), as held in i64.
pub fn wrapped(v: i64, dtype: DType) -> i64 {
    match dtype {
        DType::I32 => v as i32 as i64,
        DType::I16 => v as i16 as i64,
        DType::I8 => v as i8 as i64,
        DType::U32 => v as u32 as i64,
        DType::U16 => v as u16 as i64,
        DType::U8 => v as u8 as i64,
        _ => v,
    }
}

fn binary_bool(f: BinaryFn, (x, y): (&[bool], &[bool]), at: Broadcast) -> KResult<Tensor> {
    let g = |p: bool, q: bool| -> KResult<bool> {
        Ok(match f {
            BinaryFn::And => p && q,
            BinaryFn::Or => p || q,
            BinaryFn::Xor => p ^ q,
            BinaryFn::Equal => p == q,
            _ => return Err(format!("{f:?} of bool tensors")),
        })
    };
    let v = at.pairs().map(|(i, j)| g(x[i], y[j]));
    Ok(Tensor::bool(at.shape.clone(), v.collect::<KResult<_>>()?))
}

/// x^y with the integer exponents exporters use (x^2 in RMS norm) computed exactly.
fn pow_f32(x: f32, y: f32) -> f32 {
    if y == 2.0 {
        x * x
    } else if y == 1.0 {
        x
    } else if y == 0.5 {
        x.sqrt()
    } else {
        x.powf(y)
    }
}

fn cmp(f: BinaryFn, o: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::*;
    match (f, o) {
        (_, None) => false,
        (BinaryFn::Equal, Some(o)) => o == Equal,
        (BinaryFn::Less, Some(o)) => o == Less,
        (BinaryFn::Greater, Some(o)) => o == Greater,
        (BinaryFn::LessOrEqual, Some(o)) => o != Greater,
        (BinaryFn::GreaterOrEqual, Some(o)) => o != Less,
        _ => false,
    }
}

pub fn where_(c: &Tensor, x: &Tensor, y: &Tensor) -> KResult<Tensor> {
    let shape = broadcast_shape(&broadcast_shape(&c.shape, &x.shape)?, &y.shape)?;
    let (ic, ix, iy) = (
        broadcast_map(&c.shape, &shape),
        broadcast_map(&x.shape, &shape),
        broadcast_map(&y.shape, &shape),
    );
    let cond: Vec<bool> = c.to_i64().iter().map(|&v| v != 0).collect();
    let n = shape.iter().product::<usize>();
    Ok(match (&*x.data, &*y.data) {
        (Data::F32(a), Data::F32(b)) => Tensor::f32(
            shape,
            (0..n)
                .map(|k| if cond[ic[k]] { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        (Data::I64(a), Data::I64(b)) => Tensor::i64(
            shape,
            (0..n)
                .map(|k| if cond[ic[k]] { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        (Data::Bool(a), Data::Bool(b)) => Tensor::bool(
            shape,
            (0..n)
                .map(|k| if cond[ic[k]] { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        _ => return Err("Where of tensors of different types".into()),
    }
    .with_dtype(x.dtype))
}

pub fn cast(x: &Tensor, to: DType) -> Tensor {
    let shape = x.shape.clone();
    if to == DType::Bool {
        return Tensor::bool(shape, x.to_f32().iter().map(|&v| v != 0.0).collect());
    }
    if to.is_float() {
        let v = x.to_f32();
        // Narrow float types round through their own precision.
        let v = match to {
            DType::F16 => v.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect(),
            DType::BF16 => v
                .iter()
                .map(|&a| half::bf16::from_f32(a).to_f32())
                .collect(),
            _ => v,
        };
        return Tensor::f32(shape, v).with_dtype(to);
    }
    let v: Vec<i64> = match &*x.data {
        Data::F32(f) => f.iter().map(|&a| a.trunc() as i64).collect(),
        _ => x.to_i64(),
    };
    let v = v.into_iter().map(|a| wrapped(a, to)).collect();
    Tensor::i64(shape, v).with_dtype(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_arithmetic_wraps_at_its_types_width() {
        let i32s = |v: Vec<i64>| Tensor::i64(vec![v.len()], v).with_dtype(DType::I32);
        let a = i32s(vec![i32::MAX as i64, i32::MIN as i64, 7]);
        let b = i32s(vec![1, -1, 3]);
        let sum = binary(BinaryFn::Add, &a, &b).unwrap();
        assert_eq!(sum.to_i64(), [i32::MIN as i64, i32::MAX as i64, 10]);
        let product = binary(BinaryFn::Mul, &a, &b).unwrap();
        assert_eq!(product.to_i64(), [i32::MAX as i64, i32::MIN as i64, 21]);
        let negated = unary(UnaryFn::Neg, &a).unwrap();
        assert_eq!(negated.to_i64(), [-(i32::MAX as i64), i32::MIN as i64, -7]);
        let i64s = Tensor::i64(vec![1], vec![i64::MIN]);
        assert_eq!(unary(UnaryFn::Neg, &i64s).unwrap().to_i64(), [i64::MIN]);
        assert_eq!(
            cast(&i32s(vec![-1]), DType::U32).to_i64(),
            [u32::MAX as i64]
        );
    }
}
