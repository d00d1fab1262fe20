//! One instruction of a rank's program on the GPU, as its plan entry says: a GEMM, a
//! generated kernel, an experts step, a collective, an alias, or host work.

use super::{alltoall_experts, blas, dptr, experts, gemm, Rank};
use crate::error::RuntimeError;
use crate::kernels;
use crate::program::GpuOp;
use crate::tensor::Tensor;
use cudarc::driver::{LaunchConfig, PushKernelArg};

impl Rank<'_> {
    pub(super) fn step(&mut self, i: usize, how: &GpuOp) -> Result<(), RuntimeError> {
        let ins = &self.program.instructions[i];
        let fail = |reason: String| RuntimeError::Execute {
            rank: self.program.rank,
            index: i,
            op: ins.op.name(),
            origin: ins.origin.clone(),
            reason,
        };
        // A manifest is data: an instruction without the results its op makes is an error.
        let wanted = match how {
            GpuOp::Route { .. } => 2,
            GpuOp::Collective | GpuOp::Host | GpuOp::Fused { .. } | GpuOp::ReducedBy { .. } => 0,
            _ => 1,
        };
        if ins.outputs.len() < wanted {
            return Err(fail(format!(
                "{} result(s) where {wanted} are needed",
                ins.outputs.len()
            )));
        }
        match how {
            GpuOp::Alias => {
                let (src, dst) = (
                    ins.inputs
                        .first()
                        .copied()
                        .flatten()
                        .ok_or_else(|| fail("no operand".into()))?,
                    ins.outputs[0],
                );
                let shape = self.static_shape(dst);
                self.alias(src, dst, shape)?;
            }
            GpuOp::Gemm => {
                let (a, b) = (
                    ins.inputs
                        .first()
                        .copied()
                        .flatten()
                        .ok_or_else(|| fail("no operand".into()))?,
                    ins.inputs
                        .get(1)
                        .copied()
                        .flatten()
                        .ok_or_else(|| fail("no operand".into()))?,
                );
                let (sa, sb) = (self.shape(a), self.shape(b));
                let out = ins.outputs[0];
                match gemm::plan(&sa, &sb) {
                    Some(g) => {
                        // A bf16 model's GEMMs of two activations (attention's scores and
                        // values) run in bf16 as PyTorch's do: both operands rounded to bf16
                        // (their type in the model; taken as the bits where they are held so),
                        // fp32 accumulation.
                        let weight16 = self.slots[b].as_ref().is_some_and(|s| s.dev16.is_some());
                        let (bp, elem, _b16) = if !weight16 && self.both_bf16(a, b) {
                            let (p, keep) = self.operand_as(b, blas::Elem::Bf16).map_err(&fail)?;
                            (p, blas::Elem::Bf16, keep)
                        } else {
                            let (p, elem) = self.gemm_operand(b)?;
                            (p, elem, None)
                        };
                        let (ap, _narrowed) = self.operand_as(a, elem).map_err(&fail)?;
                        self.gemm_into(out, (ap, bp), elem, &g).map_err(&fail)?;
                    }
                    None => {
                        // Batch broadcasting cuBLAS's strides cannot express: the host does it.
                        let (ta, tb) = (self.host(a)?, self.host(b)?);
                        let r =
                            kernels::execute(&ins.op, &[Some(&ta), Some(&tb)], 1).map_err(&fail)?;
                        self.put_host(out, r.into_iter().next().expect("one result"));
                    }
                }
            }
            GpuOp::Kernel {
                name,
                threads,
                bf16,
            }
            | GpuOp::Pointwise {
                name,
                threads,
                bf16,
                ..
            } => {
                // Generated kernels take the float and boolean operands; integer ones (axes,
                // bounds, shapes) were constants baked into the kernel, except a concat's,
                // which it moves as f32 (the compiler's `data_movement`: integers exact in
                // f32, the padding of the routing's ids); a chain its inputs and one result.
                let program = self.program;
                let (inputs, results) = program
                    .generated_operands(i, how)
                    .ok_or_else(|| fail("no such instruction".into()))?;
                self.launch_generated(name, (&inputs, results), *threads, bf16)
                    .map_err(&fail)?;
            }
            GpuOp::Route {
                name,
                threads,
                capacity,
                bf16_logits,
            } => {
                let func = self
                    .functions
                    .get(name)
                    .ok_or_else(|| fail(format!("kernel {name} is not in the PTX")))?
                    .clone();
                let l = ins
                    .inputs
                    .first()
                    .copied()
                    .flatten()
                    .ok_or_else(|| fail("no logits".into()))?;
                let (w_out, id_out) = (ins.outputs[0], ins.outputs[1]);
                let shape = self.static_shape(w_out);
                let n: usize = shape.iter().product();
                let nl = self.shape(l).iter().product::<usize>() as i64;
                // bf16 logits as their bits (a bf16 GEMM's result), else narrowed; f32 ones on
                // the device.
                let (bits, _narrowed) = match bf16_logits {
                    true => {
                        let (p, y) = self.operand_as(l, blas::Elem::Bf16).map_err(&fail)?;
                        (Some(p), y)
                    }
                    false => {
                        self.device(l)?;
                        (None, None)
                    }
                };
                // Not zeroed: every form of the route kernel writes each token's k slots (a
                // capacity's follow-ups zero the dropped ones), and two memsets were two more
                // nodes in a one-token forward's chain.
                let (w, ids) = (
                    experts::alloc(&self.stream, n, blas::Elem::F32).map_err(&fail)?,
                    experts::alloc(&self.stream, n, blas::Elem::F32).map_err(&fail)?,
                );
                // The score-correction bias [E] (DeepSeek-V3's), where the router has one.
                let bias_id = ins.inputs.get(1).copied().flatten();
                if let Some(b) = bias_id {
                    self.device(b)?;
                }
                let slots = &self.slots;
                let dev = |id: usize| {
                    slots[id]
                        .as_ref()
                        .and_then(|s| s.dev.as_deref())
                        .expect("uploaded above")
                };
                let bias = bias_id.map(dev);
                let dl = bits.unwrap_or_else(|| dptr(dev(l), &self.stream));
                let (zero, one, nn) = (0i64, 1i64, n as i64);
                let mut launch = self.stream.launch_builder(&func);
                launch.arg(&dl).arg(&dl).arg(&zero).arg(&nl).arg(&one);
                launch.arg(&w).arg(&w).arg(&zero).arg(&nn).arg(&one);
                launch.arg(&ids).arg(&ids).arg(&zero).arg(&nn).arg(&one);
                let nb = bias.map_or(0, |b| b.len() as i64);
                if let Some(b) = bias {
                    launch.arg(b).arg(b).arg(&zero).arg(&nb).arg(&one);
                }
                let cfg = LaunchConfig {
                    grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: the kernel was generated for these sizes.
                unsafe { launch.launch(cfg) }.map_err(|e| fail(e.to_string()))?;
                if *capacity {
                    let experts = self.shape(l).get(1).copied().unwrap_or(0);
                    self.route_capacity(name, &w, &ids, experts, *threads)
                        .map_err(&fail)?;
                }
                self.put_dev(w_out, w, shape.clone());
                // The ids stay on the device (as f32, exact for any expert count): a step
                // routed on the device reads them there, one grouped on the host reads them
                // back (`host`, as the buffer's integers) when it needs them.
                self.put_dev(id_out, ids, shape);
            }
            GpuOp::Experts { prefix, bf16 } => {
                let prefix = prefix.clone();
                self.experts(i, &prefix, *bf16)?;
            }
            GpuOp::LocalExperts {
                prefix,
                bf16,
                slice,
                ffn,
                reduce,
            } => {
                let prefix = prefix.clone();
                self.local_experts(i, &prefix, *bf16, (*slice, *ffn), *reduce)?;
            }
            // Its all-reduce was done by the earlier step.
            GpuOp::ReducedBy { .. } => {}
            GpuOp::AllToAllExperts {
                prefix,
                bf16,
                dispatch,
                exchange,
                ffn,
                slices,
                ..
            } => {
                let step = alltoall_experts::AllToAllStep {
                    prefix,
                    bf16: *bf16,
                    dispatch: *dispatch,
                    exchange: *exchange,
                    ffn: *ffn,
                    slices,
                };
                self.alltoall_experts(i, &step)?;
            }
            GpuOp::Embedding { name } => {
                let name = name.clone();
                self.embedding(i, &name).map_err(&fail)?;
            }
            // Its step, later, reads its operands itself.
            GpuOp::Fused { .. } => {}
            GpuOp::Collective => {
                let start = self.comm_start().map_err(&fail)?;
                self.collective(i)?;
                self.comm_stop(start).map_err(&fail)?;
            }
            GpuOp::Host => {
                let args: Vec<Option<Tensor>> = ins
                    .inputs
                    .iter()
                    .map(|o| o.map(|b| self.host(b)).transpose())
                    .collect::<Result<_, _>>()?;
                let refs: Vec<Option<&Tensor>> = args.iter().map(Option::as_ref).collect();
                let outs = kernels::execute(&ins.op, &refs, ins.outputs.len()).map_err(&fail)?;
                for (&o, t) in ins.outputs.iter().zip(outs) {
                    self.put_host(o, t);
                }
            }
        }
        Ok(())
    }
}
