//! How a split travels through each op family: each rule takes an instruction whose operands
//! may be split and, where the op can compute on rank t's pieces, returns the instruction
//! rewritten to read them (its outputs marked split or partial); `None` where it cannot, and
//! the caller then makes every operand whole. A rule may have cut pieces before it gives up:
//! they stay (unread) in the program.

use super::{map_reshape, Tp, S};
use ppmoe_runtime::program::{BinaryFn, BufferId, BufferKind, Instruction, Op, ReduceFn};
use ppmoe_runtime::{DType, Tensor};

/// `axis` of a rank-`rank` value counted from the front (ONNX allows negative axes).
fn from_front(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64) as usize
    } else {
        axis as usize
    }
}

impl Tp<'_> {
    /// The split state of operand `i` (an absent operand is replicated).
    fn operand(&self, ins: &Instruction, i: usize) -> S {
        ins.inputs
            .get(i)
            .copied()
            .flatten()
            .map(|b| self.state[b])
            .unwrap_or(S::Rep)
    }

    /// The rank of `b` in the one-rank program (0 where unknown).
    fn rank_of(&self, b: BufferId) -> usize {
        self.full[b].as_ref().map_or(0, Vec::len)
    }

    /// The first output's rank (0 where there is none or it is unknown).
    fn out_rank(&self, ins: &Instruction) -> usize {
        ins.outputs.first().map_or(0, |&o| self.rank_of(o))
    }

    fn first_out(ins: &Instruction) -> BufferId {
        ins.outputs.first().copied().unwrap_or(0)
    }

    /// `ins` with its operands replaced.
    fn reading(ins: &Instruction, inputs: Vec<Option<BufferId>>) -> Instruction {
        Instruction {
            inputs,
            ..ins.clone()
        }
    }

    /// The rule for `ins`'s op family.
    pub(super) fn split_rule(&mut self, ins: &Instruction) -> Option<Instruction> {
        match &ins.op {
            Op::MatMul => self.matmul(ins),
            Op::Unary { .. } | Op::Cast { .. } => self.unary(ins),
            Op::Binary { .. } | Op::Where => self.elementwise(ins),
            Op::ReshapeTo { shape } => self.reshape(ins, shape),
            Op::Transpose { perm } => self.transpose(ins, perm),
            Op::Softmax { axis, .. } => self.along_other_axis(ins, *axis),
            Op::Reduce { f, keepdims, .. } if *f != ReduceFn::L2 => {
                let rank = self.rank_of(ins.inputs[0].unwrap_or(0));
                let axes_b = ins.inputs.get(1).copied().flatten();
                let axes = axes_b.and_then(|b| self.weight(b)).map(|t| t.to_i64())?;
                let axes: Vec<usize> = axes.iter().map(|&v| from_front(v, rank)).collect();
                self.reduce(ins, &axes, *keepdims)
            }
            Op::ReduceAxes { f, axes, keepdims } if *f != ReduceFn::L2 => {
                self.reduce(ins, axes, *keepdims)
            }
            Op::Concat { axis } => self.concat(ins, *axis),
            Op::Slice | Op::Split { .. } => self.slice(ins),
            Op::ExtractSlice {
                offsets,
                sizes,
                strides,
            } => self.extract_slice(ins, (offsets, sizes, strides)),
            Op::Expand => self.expand(ins),
            Op::ExpandTo { shape } => self.expand_to(ins, shape),
            _ => None,
        }
    }

    fn matmul(&mut self, ins: &Instruction) -> Option<Instruction> {
        let (a, b) = (ins.inputs[0].unwrap_or(0), ins.inputs[1].unwrap_or(0));
        let o = Self::first_out(ins);
        let (sa, sb) = (self.operand(ins, 0), self.operand(ins, 1));
        let (ra, rb) = (self.rank_of(a), self.rank_of(b));
        let out_rank = self.out_rank(ins);
        let weight_2d = self.is_weight(b) && rb == 2;
        // Column split: replicated tokens times a weight whose columns divide by tp.
        if out_rank >= 1
            && (sa, sb) == (S::Rep, S::Rep)
            && weight_2d
            && self.splittable(o, out_rank - 1)
        {
            if let Some(bp) = self.piece(b, 1, &ins.origin) {
                self.set_split(o, out_rank - 1);
                return Some(Self::reading(ins, vec![Some(a), Some(bp)]));
            }
        }
        // Row split: the split axis is the one contracted: a partial sum.
        if ra >= 1 && sa == S::Split(ra - 1) && sb == S::Rep && weight_2d {
            if let Some(bp) = self.piece(b, 0, &ins.origin) {
                self.set_partial(o);
                return Some(Self::reading(ins, vec![Some(a), Some(bp)]));
            }
        }
        // Batched over a split axis (attention's heads): both sides split alike.
        if let (S::Split(x), S::Split(y)) = (sa, sb) {
            if ra == rb && x == y && x + 2 < ra {
                self.set_split(o, x);
                return Some(ins.clone());
            }
        }
        if let S::Split(x) = sa {
            if x + 2 < ra && sb == S::Rep && ra == rb {
                if let Some(bp) = self.batch_piece(b, x, &ins.origin) {
                    self.set_split(o, x);
                    return Some(Self::reading(ins, vec![Some(a), Some(bp)]));
                }
            }
            if x + 2 == ra && sb == S::Rep {
                // Rows of A split: rows of the product split.
                self.set_split(o, out_rank - 2);
                return Some(ins.clone());
            }
        }
        if let S::Split(y) = sb {
            if y + 2 < rb && sa == S::Rep && ra == rb {
                if let Some(ap) = self.batch_piece(a, y, &ins.origin) {
                    self.set_split(o, y);
                    return Some(Self::reading(ins, vec![Some(ap), Some(b)]));
                }
            }
        }
        None
    }

    /// A replicated batched-matmul operand's piece along batch axis `x`: itself where it
    /// broadcasts there (size 1).
    fn batch_piece(&mut self, b: BufferId, x: usize, origin: &str) -> Option<BufferId> {
        let size = self.full[b].as_ref().map_or(0, |s| s[x]);
        if size == 1 {
            Some(b)
        } else {
            self.piece(b, x, origin)
        }
    }

    fn unary(&mut self, ins: &Instruction) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        self.set_split(Self::first_out(ins), x);
        Some(ins.clone())
    }

    /// Binary ops and Where: operands split alike (the replicated ones cut to match, or
    /// broadcast along the split axis), or a sum of two partial sums.
    fn elementwise(&mut self, ins: &Instruction) -> Option<Instruction> {
        let o = Self::first_out(ins);
        let states: Vec<S> = (0..ins.inputs.len())
            .map(|i| self.operand(ins, i))
            .collect();
        let is_add = matches!(ins.op, Op::Binary { f: BinaryFn::Add });
        if is_add && states.get(..2) == Some(&[S::Partial, S::Partial]) {
            self.set_partial(o);
            return Some(ins.clone());
        }
        let splits: Vec<usize> = states
            .iter()
            .filter_map(|s| match s {
                S::Split(x) => Some(*x),
                _ => None,
            })
            .collect();
        let &x = splits.first()?;
        let mut ok = splits.iter().all(|&y| y == x) && !states.contains(&S::Partial);
        let out_rank = self.out_rank(ins);
        let mut inputs = Vec::new();
        for &inp in &ins.inputs {
            let Some(b) = inp else {
                inputs.push(None);
                continue;
            };
            match self.state[b] {
                S::Split(_) => inputs.push(Some(b)),
                _ => match self.aligned_piece(b, x, out_rank, &ins.origin) {
                    Some(piece) => inputs.push(Some(piece)),
                    None => {
                        ok = false;
                        inputs.push(Some(b));
                    }
                },
            }
        }
        // Only operands of the output's rank can carry the split on axis x as is.
        let aligned = ins.inputs.iter().flatten().all(|&b| match self.state[b] {
            S::Split(_) => self.rank_of(b) == out_rank,
            _ => true,
        });
        if ok && self.splittable(o, x) && aligned {
            self.set_split(o, x);
            return Some(Self::reading(ins, inputs));
        }
        None
    }

    /// A replicated operand of an elementwise op whose output is split along `x`, aligned
    /// to the output's rank: itself where it broadcasts along `x` (absent or of size 1 there),
    /// else its piece; `None` where it cannot be cut (a shape known only at run time).
    fn aligned_piece(
        &mut self,
        b: BufferId,
        x: usize,
        out_rank: usize,
        origin: &str,
    ) -> Option<BufferId> {
        let shape = self.full[b].clone().unwrap_or_default();
        let off = out_rank.saturating_sub(shape.len());
        if x < off || shape.get(x - off) == Some(&1) {
            Some(b)
        } else if shape.len() <= x - off {
            None
        } else {
            self.piece(b, x - off, origin)
        }
    }

    fn reshape(&mut self, ins: &Instruction, shape: &[usize]) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        let full_in = self.full[ins.inputs[0].unwrap_or(0)]
            .clone()
            .unwrap_or_default();
        let j = map_reshape(&full_in, shape, x, self.tp)?;
        let mut local = shape.to_vec();
        local[j] /= self.tp;
        self.set_split(Self::first_out(ins), j);
        Some(Instruction {
            op: Op::ReshapeTo { shape: local },
            ..ins.clone()
        })
    }

    fn transpose(&mut self, ins: &Instruction, perm: &[usize]) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        let j = perm.iter().position(|&p| p == x)?;
        self.set_split(Self::first_out(ins), j);
        Some(ins.clone())
    }

    /// An op along one axis (softmax) keeps a split on any other.
    fn along_other_axis(&mut self, ins: &Instruction, axis: i64) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        if from_front(axis, self.out_rank(ins)) == x {
            return None;
        }
        self.set_split(Self::first_out(ins), x);
        Some(ins.clone())
    }

    /// A reduction over constant axes other than the split one keeps the split (moved left
    /// by the axes reduced before it, where they are dropped).
    fn reduce(&mut self, ins: &Instruction, axes: &[usize], keepdims: bool) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        if axes.is_empty() || axes.contains(&x) {
            return None;
        }
        let nx = if keepdims {
            x
        } else {
            x - axes.iter().filter(|&&a| a < x).count()
        };
        self.set_split(Self::first_out(ins), nx);
        Some(ins.clone())
    }

    /// Concatenation along another axis of operands all split alike.
    fn concat(&mut self, ins: &Instruction, axis: i64) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        let all_alike = (0..ins.inputs.len()).all(|i| self.operand(ins, i) == S::Split(x));
        if from_front(axis, self.out_rank(ins)) == x || !all_alike {
            return None;
        }
        self.set_split(Self::first_out(ins), x);
        Some(ins.clone())
    }

    /// Slice and Split with bounds on other axes only (constant axes): the split carried
    /// through to every output.
    fn slice(&mut self, ins: &Instruction) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        let axes: Vec<i64> = match &ins.op {
            Op::Split { axis } => vec![*axis],
            _ => self.weight(ins.inputs.get(3).copied().flatten()?)?.to_i64(),
        };
        let rank = self.rank_of(ins.inputs[0].unwrap_or(0));
        if axes.iter().any(|&v| from_front(v, rank) == x) {
            return None;
        }
        for &o in &ins.outputs {
            self.set_split(o, x);
        }
        Some(ins.clone())
    }

    /// A static slice that takes the split axis whole keeps the split, the rank's piece of it.
    fn extract_slice(
        &mut self,
        ins: &Instruction,
        (offsets, sizes, strides): (&[usize], &[usize], &[usize]),
    ) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        let full_in = self.full[ins.inputs[0].unwrap_or(0)].clone()?;
        let whole = offsets.get(x) == Some(&0)
            && strides.get(x) == Some(&1)
            && sizes.get(x) == full_in.get(x);
        if !whole {
            return None;
        }
        let mut local = sizes.to_vec();
        local[x] /= self.tp;
        self.set_split(Self::first_out(ins), x);
        Some(Instruction {
            op: Op::ExtractSlice {
                offsets: offsets.to_vec(),
                sizes: local,
                strides: strides.to_vec(),
            },
            ..ins.clone()
        })
    }

    /// A broadcast to a static shape keeps a split on an axis it does not broadcast, the
    /// shape's piece of it the rank's.
    fn expand_to(&mut self, ins: &Instruction, shape: &[usize]) -> Option<Instruction> {
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        let full_in = self.full[ins.inputs[0].unwrap_or(0)].clone()?;
        let off = shape.len().checked_sub(full_in.len())?;
        if full_in.get(x) != shape.get(x + off) {
            return None;
        }
        let mut local = shape.to_vec();
        local[x + off] /= self.tp;
        self.set_split(Self::first_out(ins), x + off);
        Some(Instruction {
            op: Op::ExpandTo { shape: local },
            ..ins.clone()
        })
    }

    /// An expand that keeps the split axis's size: the target shape's piece (a new constant).
    fn expand(&mut self, ins: &Instruction) -> Option<Instruction> {
        let (inp, shp) = (ins.inputs[0].unwrap_or(0), ins.inputs[1].unwrap_or(0));
        let S::Split(x) = self.operand(ins, 0) else {
            return None;
        };
        let target = self.weight(shp)?.to_i64();
        let full_in = self.full[inp].clone().unwrap_or_default();
        let off = target.len().saturating_sub(full_in.len());
        if full_in[x] as i64 != target[x + off] {
            return None;
        }
        let mut local = target.clone();
        local[x + off] /= self.tp as i64;
        let name = format!(
            "{}.tp_shape{}",
            self.rp.program.buffers[shp].name,
            self.rp.program.buffers.len()
        );
        let id = self.new_buf(
            name.clone(),
            DType::I64,
            vec![local.len()],
            BufferKind::Weight,
        );
        self.rp
            .weights
            .push((name, Tensor::i64(vec![local.len()], local)));
        self.rank_pieces.insert(id);
        self.set_split(Self::first_out(ins), x + off);
        Some(Self::reading(ins, vec![Some(inp), Some(id)]))
    }
}
