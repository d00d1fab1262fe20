//! The CUDA backend: libraries loaded at run time through cudarc (the binary builds and runs
//! where there is no CUDA), one rank on one GPU. Float buffers live on the device; GEMMs go to
//! cuBLAS, generated kernels are launched from the bundle's PTX, reshapes alias, and the ops not
//! generated yet run on the host (their operands copied over and back), as the bundle's
//! per-instruction plan says.

mod allreduce_bench;
mod alltoall_experts;
mod bf16_reduce;
mod blas;
mod embedding;
pub use allreduce_bench::bench_all_reduce;
mod collective;
mod comm;
mod comm_time;
mod device_grouped;
mod device_routed;
mod experts;
mod gemm;
mod graph;
mod grouped_choice;
mod mem_pool;
pub mod nccl;
mod overlap;
mod pipeline_send;
mod route_capacity;
mod single_token;
mod tensor_map;
mod workspace;

use crate::bundle::Bundle;
use crate::distributed::Dist;
use crate::error::RuntimeError;
use crate::kernels;
use crate::program::{BufferKind, GpuOp, Program};
use crate::tensor::{DType, Tensor};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::Arc;

/// A buffer's device address. cudarc's event tracking is off (`mem_pool`): the one place
/// that uses a second stream (`overlap`) orders the streams with its own events.
pub(super) fn dptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

fn backend_err(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Backend {
        backend: "cuda".into(),
        reason: reason.into(),
    }
}

/// Whether a CUDA GPU can be used: the driver library is there and sees a device. Says what
/// is missing and where it was looked for otherwise (never panics: cudarc's loader would).
pub fn available() -> Result<(), String> {
    // SAFETY: only looks the library up by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda (the NVIDIA driver library: libcuda.so, libcuda.so.1) was not found on the library path (LD_LIBRARY_PATH, /usr/lib, /usr/lib/x86_64-linux-gnu)".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Err("libcuda is present but sees no GPU".into()),
        Err(e) => return Err(format!("libcuda is present but cannot list GPUs: {e}")),
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("libcublas was not found on the library path (for CUDA 13: /usr/local/cuda-13.0/targets/x86_64-linux/lib; add it to LD_LIBRARY_PATH)".into());
    }
    Ok(())
}

/// `available`, its reason as the error a run or a bench returns when CUDA was asked for.
pub fn require() -> Result<(), RuntimeError> {
    available().map_err(|reason| RuntimeError::Unavailable {
        backend: "cuda".into(),
        reason,
    })
}

/// The GPUs this process can use; None where CUDA cannot be used at all.
pub fn gpu_count() -> Option<usize> {
    available().ok()?;
    CudaContext::device_count().ok().map(|n| n as usize)
}

/// A buffer's value: on the device (f32), on the host, or both; a bf16 weight that feeds GEMMs
/// also (or only) as its bf16 bits on the device.
/// A value's bf16 bits on the device, shared by the buffers that hold it.
type Bits = Arc<CudaSlice<u16>>;

struct Slot {
    /// Shared: a reshape's result is its operand's buffer (no buffer is written after it is
    /// made, so sharing is safe).
    dev: Option<Arc<CudaSlice<f32>>>,
    dev16: Option<CudaSlice<u16>>,
    /// An activation's bf16 bits for the GEMMs and experts that read it: narrowed once where
    /// more than one instruction does (each narrowing reads and writes the whole tensor), or
    /// the value itself where it came as bf16 (a bf16 input of a device feed, a GEMM's bf16
    /// result), `dev` then widened from it only when an f32 reader needs it.
    narrowed: Option<Bits>,
    /// Token ids an embedding reads on the device, checked against its table (a device feed's).
    ids: Option<CudaSlice<i32>>,
    host: Option<Tensor>,
    shape: Vec<usize>,
    dtype: DType,
}

struct Rank<'a> {
    stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    functions: HashMap<String, cudarc::driver::CudaFunction>,
    program: &'a Program,
    slots: Vec<Option<Slot>>,
    /// NCCL, when the run has more than one rank.
    comms: Option<&'a comm::Comms>,
    /// The microbatch in flight (pipeline messages carry it).
    microbatch: u64,
    /// While a forward is timed: the event pairs around its communications (`comm_time`).
    comm_spans: std::cell::RefCell<Option<comm_time::CommSpans>>,
    /// A second stream, for communication overlapped with computation (multi-rank runs).
    comm_stream: Option<Arc<CudaStream>>,
    /// The path each grouped-GEMM shape runs by, once chosen (see `grouped_choice`).
    gemm_paths: std::cell::RefCell<HashMap<grouped_choice::ShapeKey, grouped_choice::GroupedPath>>,
    /// Device-to-host copies so far (each one a synchronisation inside the forward).
    host_reads: std::cell::Cell<usize>,
    /// While an instruction is profiled: events marking the ends of the parts of its step
    /// (`phase`), by the part's name.
    marks: std::cell::RefCell<Option<Vec<(&'static str, cudarc::driver::CudaEvent)>>>,
    /// The profiled parts' times so far in this forward (ms, summed by name).
    phase_ms: std::cell::RefCell<std::collections::BTreeMap<&'static str, f64>>,
    /// Whether this rank's sends go on the second stream (`pipeline_send`), and the buffers
    /// those in flight read.
    sends_aside: bool,
    in_flight: std::cell::RefCell<Vec<pipeline_send::InFlight>>,
    /// When forwards are captured as CUDA graphs, the one captured, and what the last eager
    /// forward did (whether the next like it can be captured).
    graph_use: graph::GraphUse,
    graph: Option<graph::Captured>,
    last_eager: Option<graph::Eager>,
    /// The tensor maps of the stacks the warp-specialised projections read (`tensor_map`).
    tensor_maps: tensor_map::TensorMaps,
    /// The buffers the sorted rows' projections read through tensor maps (`workspace`).
    workspaces: workspace::Workspaces,
    /// The device's multiprocessors, once asked (`device_routed`).
    multiprocessors: std::cell::OnceCell<u32>,
    /// The GEMM results every reader takes as bf16 bits (`Program::reads_as_bits`), found
    /// once: a bf16 one is rounded to bf16 and kept as its bits (`gemm_into`).
    bits_results: std::collections::HashSet<usize>,
}

impl Rank<'_> {
    /// Marks the end of the step's part `name` while the step is profiled (its time is from
    /// the previous mark, or the step's start); nothing otherwise.
    fn phase(&self, name: &'static str) -> Result<(), String> {
        if let Some(marks) = self.marks.borrow_mut().as_mut() {
            marks.push((name, comm_time::event_on(&self.stream)?));
        }
        Ok(())
    }

    fn host(&mut self, id: usize) -> Result<Tensor, RuntimeError> {
        let slot = self.slots[id].as_mut().ok_or_else(|| {
            backend_err(format!(
                "buffer '{}' read before it is written",
                self.program.buffers[id].name
            ))
        })?;
        if slot.host.is_none() && slot.dev.is_none() {
            self.device(id)?;
        }
        let slot = self.slots[id].as_mut().expect("checked above");
        if slot.host.is_none() {
            let dev = slot
                .dev
                .as_deref()
                .ok_or_else(|| backend_err("a buffer with no value"))?;
            self.host_reads.set(self.host_reads.get() + 1);
            let v = self
                .stream
                .clone_dtoh(dev)
                .map_err(|e| backend_err(e.to_string()))?;
            // A boolean is held on the device as 0 or 1.
            slot.host = Some(if slot.dtype == DType::Bool {
                Tensor::bool(slot.shape.clone(), v.iter().map(|&x| x != 0.0).collect())
            } else {
                Tensor::f32(slot.shape.clone(), v).with_dtype(slot.dtype)
            });
        }
        Ok(slot.host.clone().expect("set above"))
    }

    fn device(&mut self, id: usize) -> Result<&CudaSlice<f32>, RuntimeError> {
        let stream = self.stream.clone();
        // Only bf16 bits on the device (see `Slot::narrowed`): widened there.
        let bits_only = self.slots[id]
            .as_ref()
            .filter(|s| s.dev.is_none())
            .and_then(|s| s.narrowed.clone());
        if let Some(bits) = bits_only {
            let wide = self.widened(&bits).map_err(backend_err)?;
            if let Some(slot) = self.slots[id].as_mut() {
                slot.dev = Some(Arc::new(wide));
            }
        }
        let slot = self.slots[id].as_mut().ok_or_else(|| {
            backend_err(format!(
                "buffer '{}' read before it is written",
                self.program.buffers[id].name
            ))
        })?;
        if slot.dev.is_none() {
            let t = slot
                .host
                .as_ref()
                .ok_or_else(|| backend_err("a buffer with no value"))?;
            // Integers go as f32 where every value is exact in it (a kernel moving expert ids,
            // for instance); others cannot.
            let exact_ints = match &*t.data {
                crate::tensor::Data::I64(v) => v.iter().all(|&x| crate::program::exact_in_f32(x)),
                _ => false,
            };
            if !exact_ints
                && !matches!(
                    *t.data,
                    crate::tensor::Data::F32(_)
                        | crate::tensor::Data::Half(_)
                        | crate::tensor::Data::Bool(_)
                )
            {
                return Err(backend_err(format!(
                    "buffer '{}' is not float or boolean, nor integers exact in f32: it cannot go to a kernel",
                    self.program.buffers[id].name
                )));
            }
            // bf16/f16 bits are widened here (the kernels compute in f32), booleans 0 or 1.
            let v = t.f32_values();
            slot.dev = Some(Arc::new(
                graph::upload(&stream, &v).map_err(|e| backend_err(e.to_string()))?,
            ));
        }
        Ok(slot.dev.as_deref().expect("set above"))
    }

    /// Buffer `id`'s shape as the program gives it (an unknown size as 0).
    fn static_shape(&self, id: usize) -> Vec<usize> {
        self.program.buffers[id]
            .shape
            .iter()
            .map(|d| d.unwrap_or(0))
            .collect()
    }

    fn shape(&self, id: usize) -> Vec<usize> {
        self.slots[id]
            .as_ref()
            .map(|s| s.shape.clone())
            .unwrap_or_default()
    }

    fn put_host(&mut self, id: usize, t: Tensor) {
        let dtype = self.program.buffers[id].dtype;
        self.slots[id] = Some(Slot {
            dev: None,
            dev16: None,
            narrowed: None,
            ids: None,
            shape: t.shape.clone(),
            host: Some(t.with_dtype(dtype)),
            dtype,
        });
    }

    /// Buffer `id`'s value on the device (a new buffer, or one shared with the buffer it
    /// reshapes).
    fn put_dev(&mut self, id: usize, dev: impl Into<Arc<CudaSlice<f32>>>, shape: Vec<usize>) {
        self.put_on_device(id, (Some(dev.into()), None), shape);
    }

    /// Whether buffer `id` is held as bf16 bits on the device (see `Slot::narrowed`).
    fn holds_bits(&self, id: usize) -> bool {
        self.slots[id]
            .as_ref()
            .is_some_and(|s| s.narrowed.is_some())
    }

    /// Buffer `id`'s value as bf16 bits on the device only (see `Slot::narrowed`).
    fn put_bits(&mut self, id: usize, bits: Bits, shape: Vec<usize>) {
        self.put_on_device(id, (None, Some(bits)), shape);
    }

    /// Buffer `id`'s value on the device: as f32, as bf16 bits, or both (a reshape shares
    /// what its operand holds).
    fn put_on_device(
        &mut self,
        id: usize,
        (dev, narrowed): (Option<Arc<CudaSlice<f32>>>, Option<Bits>),
        shape: Vec<usize>,
    ) {
        self.slots[id] = Some(Slot {
            dev,
            dev16: None,
            narrowed,
            ids: None,
            host: None,
            shape,
            dtype: self.program.buffers[id].dtype,
        });
    }

    /// A GEMM weight operand as a device pointer: its bf16 bits where it has them, else f32.
    fn gemm_operand(&mut self, id: usize) -> Result<(u64, blas::Elem), RuntimeError> {
        let stream = self.stream.clone();
        if let Some(d16) = self.slots[id].as_ref().and_then(|s| s.dev16.as_ref()) {
            return Ok((dptr(d16, &stream), blas::Elem::Bf16));
        }
        let p = dptr(self.device(id)?, &stream);
        Ok((p, blas::Elem::F32))
    }

    /// Buffer `id`'s device buffer, shared (None where it is on the host only).
    fn shared_dev(&self, id: usize) -> Option<Arc<CudaSlice<f32>>> {
        self.slots[id].as_ref().and_then(|s| s.dev.clone())
    }

    /// Buffer `id` on the device as a GEMM operand of `elem` (see `activation`): narrowed once
    /// where several instructions read it (the slot keeps the copy; none is written after it
    /// is made, and a new value empties the slot).
    pub(super) fn operand_as(
        &mut self,
        id: usize,
        elem: blas::Elem,
    ) -> Result<(u64, Option<CudaSlice<u16>>), String> {
        let n: usize = self.shape(id).iter().product();
        if elem == blas::Elem::Bf16 {
            let slot = self.slots[id].as_ref();
            let kept = slot.and_then(|s| s.narrowed.as_deref().or(s.dev16.as_ref()));
            if let Some(y) = kept {
                return Ok((dptr(y, &self.stream), None));
            }
        }
        self.device(id).map_err(|e| e.to_string())?;
        let d = self.dev_ref(id)?;
        let (p, y) = self.activation(d, n, elem)?;
        // A weight's copy is kept for every forward (its slot is never emptied).
        let weight = self.program.buffers[id].kind == BufferKind::Weight;
        let shared = weight || self.readers(id) > 1;
        match (y, self.slots[id].as_mut()) {
            (Some(y), Some(slot)) if shared => {
                slot.narrowed = Some(Arc::new(y));
                Ok((p, None))
            }
            (y, _) => Ok((p, y)),
        }
    }

    /// The instructions that read buffer `id`.
    fn readers(&self, id: usize) -> usize {
        let reads = |i: &&crate::program::Instruction| i.inputs.contains(&Some(id));
        self.program.instructions.iter().filter(reads).count()
    }

    /// Whether both operands of a GEMM are bf16 in the model (a bf16 model's activations) and
    /// the rank has the kernel that narrows them.
    fn both_bf16(&self, a: usize, b: usize) -> bool {
        let bf16 = |id: usize| self.program.buffers[id].dtype == crate::DType::BF16;
        bf16(a) && bf16(b) && self.functions.contains_key(crate::program::TO_BF16_KERNEL)
    }

    /// An activation in the GEMM's element type: as it is for f32, narrowed by the generated
    /// kernel for bf16. The returned buffer (if any) keeps the narrowed copy alive.
    fn activation(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        elem: blas::Elem,
    ) -> Result<(u64, Option<CudaSlice<u16>>), String> {
        if elem == blas::Elem::F32 {
            return Ok((dptr(x, &self.stream), None));
        }
        let c = self
            .conversion(bf16_reduce::Direction::Narrow)
            .ok_or("the bf16 conversion kernel is not in the PTX")?;
        // SAFETY: the kernel writes every one of the n elements.
        let y = unsafe { self.stream.alloc::<u16>(n.max(1)) }.map_err(|e| e.to_string())?;
        let p = dptr(&y, &self.stream);
        self.convert(&c, (dptr(x, &self.stream), p), n)?;
        Ok((p, Some(y)))
    }

    /// A GEMM's result into buffer `out`: f32, or, where both operands are bf16, `out` is bf16
    /// in the model and every reader takes bf16 bits (`Program::reads_as_bits`: routes, GEMMs,
    /// the generated kernels' bf16 parameters), rounded to bf16 as PyTorch's bf16 matmul
    /// rounds it (and the CPU backend's bf16 buffers hold it) and kept as the bits. Where a
    /// reader wants f32, the result stays f32, unrounded: widening bits for it would cost a
    /// kernel and more bytes than cuBLAS's f32 result.
    fn gemm_into(
        &mut self,
        out: usize,
        (a, b): (u64, u64),
        elem: blas::Elem,
        g: &gemm::GemmPlan,
    ) -> Result<(), String> {
        let mut plan = g.strided();
        let rounded = elem == blas::Elem::Bf16
            && self.program.buffers[out].dtype == DType::BF16
            && self.bits_results.contains(&out);
        let shape = g.out_shape.clone();
        if rounded {
            plan.c_elem = blas::Elem::Bf16;
            // SAFETY: cuBLAS writes all of C (beta = 0 never reads it).
            let c = unsafe { self.stream.alloc::<u16>(g.out_len()) }.map_err(|e| e.to_string())?;
            let cp = dptr(&c, &self.stream);
            // SAFETY: the plan's sizes and strides were checked against the operands' shapes.
            unsafe { blas::gemm_strided(&self.blas, elem, &plan, a, b, cp) }?;
            self.put_bits(out, Arc::new(c), shape);
            return Ok(());
        }
        // SAFETY: as above.
        let c = unsafe { self.stream.alloc::<f32>(g.out_len()) }.map_err(|e| e.to_string())?;
        let cp = dptr(&c, &self.stream);
        // SAFETY: as above.
        unsafe { blas::gemm_strided(&self.blas, elem, &plan, a, b, cp) }?;
        self.put_dev(out, c, shape);
        Ok(())
    }

    /// bf16 bits widened to f32 on the device (exact) by the generated conversion kernel.
    fn widened(&self, bits: &CudaSlice<u16>) -> Result<CudaSlice<f32>, String> {
        let c = self
            .conversion(bf16_reduce::Direction::Widen)
            .ok_or("the bf16 conversion kernel is not in the PTX")?;
        let n = bits.len();
        // SAFETY: the kernel writes every one of the n elements.
        let y = unsafe { self.stream.alloc::<f32>(n.max(1)) }.map_err(|e| e.to_string())?;
        self.convert(&c, (dptr(bits, &self.stream), dptr(&y, &self.stream)), n)?;
        Ok(y)
    }

    /// Generated kernel `name` over `inputs`, one thread per `threads`, its results `outs`
    /// (each made here and passed after the inputs in order), each parameter a memref
    /// (allocated, aligned, offset, size, stride); 256 threads to a block. The parameters at
    /// the positions `bf16` lists are bf16: such an input is passed as its bits (narrowed where
    /// the rank holds it as f32), such a result kept as bits; the others are f32.
    fn launch_generated(
        &mut self,
        name: &str,
        (inputs, outs): (&[usize], &[usize]),
        threads: usize,
        bf16: &[usize],
    ) -> Result<(), String> {
        let func = self
            .functions
            .get(name)
            .ok_or_else(|| format!("kernel {name} is not in the PTX"))?
            .clone();
        let mut ptrs = Vec::with_capacity(inputs.len() + outs.len());
        let mut sizes = Vec::with_capacity(inputs.len() + outs.len());
        // The narrowed copies made here, alive until the kernel has been launched.
        let mut keep = Vec::new();
        for (k, &b) in inputs.iter().enumerate() {
            sizes.push(self.shape(b).iter().product::<usize>() as i64);
            if bf16.contains(&k) {
                let (p, y) = self.operand_as(b, blas::Elem::Bf16)?;
                keep.extend(y);
                ptrs.push(p);
            } else {
                let stream = self.stream.clone();
                let d = self.device(b).map_err(|e| e.to_string())?;
                ptrs.push(dptr(d, &stream));
            }
        }
        enum Made {
            F32(CudaSlice<f32>),
            Bits(CudaSlice<u16>),
        }
        let mut results = Vec::with_capacity(outs.len());
        for (j, &o) in outs.iter().enumerate() {
            let shape = self.static_shape(o);
            let n: usize = shape.iter().product();
            sizes.push(n as i64);
            // SAFETY: uninitialised; every generated kernel writes each element of its results.
            let made = if bf16.contains(&(inputs.len() + j)) {
                let y = unsafe { self.stream.alloc::<u16>(n.max(1)) }.map_err(|e| e.to_string())?;
                ptrs.push(dptr(&y, &self.stream));
                Made::Bits(y)
            } else {
                let y = unsafe { self.stream.alloc::<f32>(n.max(1)) }.map_err(|e| e.to_string())?;
                ptrs.push(dptr(&y, &self.stream));
                Made::F32(y)
            };
            results.push((o, made, shape));
        }
        let mut launch = self.stream.launch_builder(&func);
        for (p, size) in ptrs.iter().zip(&sizes) {
            device_routed::memref_args(&mut launch, p, size);
        }
        let cfg = LaunchConfig {
            grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel was generated for exactly these buffer sizes and element types.
        unsafe { launch.launch(cfg) }.map_err(|e| e.to_string())?;
        drop(keep);
        for (o, made, shape) in results {
            match made {
                Made::F32(y) => self.put_dev(o, y, shape),
                Made::Bits(y) => self.put_bits(o, Arc::new(y), shape),
            }
        }
        Ok(())
    }

    fn step(&mut self, i: usize, how: &GpuOp) -> Result<(), RuntimeError> {
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
                let on_device = self.slots[src]
                    .as_ref()
                    .filter(|s| s.dev.is_some() || s.narrowed.is_some())
                    .map(|s| (s.dev.clone(), s.narrowed.clone()));
                if let Some((dev, narrowed)) = on_device {
                    // The same device buffers under the new shape: a reshape moves nothing.
                    self.put_on_device(dst, (dev, narrowed), shape);
                } else {
                    let t = self.host(src)?;
                    self.put_host(dst, Tensor { shape, ..t });
                }
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

/// Runs this process's rank of a bundle compiled with `--target cuda`: rank 0 on GPU 0 when the
/// bundle has one rank, else the rank `dist` names on its local GPU, its collectives through
/// NCCL. Returns the rank's outputs (none on ranks before the last pipeline stage).
pub fn run_bundle(
    bundle: &Bundle,
    inputs: &[Tensor],
    dist: Option<&Dist>,
) -> Result<Vec<Tensor>, RuntimeError> {
    with_rank(bundle, dist, |rank, m| {
        if rank.graph_use == graph::GraphUse::Always && rank.may_capture() && m.microbatches <= 1 {
            return rank.run_through_graph(m, inputs);
        }
        rank.forward(m, &Feed::Host(inputs), None)
    })
}

/// The forwards after the first in which a capture is tried.
const CAPTURE_TRIES: usize = 2;

/// A device feed's shapes, for telling its graph apart: each piece's inputs, a device one by
/// its length.
fn feed_shapes(pieces: &[Vec<Fed>]) -> Vec<Vec<Vec<usize>>> {
    pieces
        .iter()
        .map(|p| {
            p.iter()
                .map(|v| match v {
                    Fed::Floats(dev) => vec![dev.len()],
                    Fed::Bf16(bits) => vec![bits.len()],
                    Fed::Ids(_, t) | Fed::Host(t) => t.shape.clone(),
                })
                .collect()
        })
        .collect()
}

/// Where a forward's inputs come from: the host (uploaded by the forward, outputs brought
/// back), or device copies made beforehand, one per microbatch and input (outputs left on the
/// device): what a timed forward takes, like a framework's layer whose tensors live there.
enum Feed<'f> {
    Host(&'f [Tensor]),
    Device(Vec<Vec<Fed>>),
}

/// One input of a device feed.
enum Fed {
    Floats(Arc<CudaSlice<f32>>),
    /// A bf16 input's bits, as the model holds it (widened on the device only where an f32
    /// reader needs it).
    Bf16(Bits),
    /// Token ids, checked against the tables the embeddings index with them and put on the
    /// device as i32 (the embeddings read them there); the host copy for any other reader.
    Ids(CudaSlice<i32>, Tensor),
    /// Other integers, read where their ops read them.
    Host(Tensor),
}

/// Times of repeated forwards of a bundle's rank (CUDA events on its stream, after warm-up).
pub struct Timing {
    /// Each timed forward, inputs in to outputs out, in ms: on a multi-rank run, the slowest
    /// rank's time of that forward (the ranks wait for each other before each).
    pub forward_ms: Vec<f64>,
    /// Multi-rank: each rank's own time of each forward, by rank.
    pub rank_ms: Vec<Vec<f64>>,
    /// Per rank, its time inside NCCL calls in each forward (empty for one rank).
    pub rank_nccl_ms: Vec<Vec<f64>>,
    /// Per rank, how much of that time its stream waited for (not hidden behind computation).
    pub rank_nccl_exposed_ms: Vec<Vec<f64>>,
    /// With `profile`: per instruction, its time in each timed forward (ms).
    pub instruction_ms: Vec<Vec<f64>>,
    /// The device-to-host copies in one forward (each a synchronisation inside it): the most
    /// of any rank, over the timed forwards.
    pub host_reads: usize,
    /// With `profile`: the named parts of steps (an experts step's routing read, grouping,
    /// gather, projections, activation, combine), each part's time summed over a forward, in
    /// each timed forward (ms).
    pub phase_ms: std::collections::BTreeMap<String, Vec<f64>>,
    /// The nodes of the CUDA graph the timed forwards replayed; 0 where they ran eagerly.
    pub graph_nodes: usize,
}

/// Runs `warmup` forwards, then times `iters` more, the float inputs already on the device and
/// the outputs left there (so the time is the forward's, not the host link's); with
/// `profile`, each instruction is timed too (an event pair around each, which adds a little
/// to the forward's time).
pub fn bench_bundle(
    bundle: &Bundle,
    inputs: &[Tensor],
    dist: Option<&Dist>,
    warmup: usize,
    iters: usize,
    profile: bool,
) -> Result<Timing, RuntimeError> {
    with_rank(bundle, dist, |rank, m| {
        let feed = rank.device_feed(m, inputs)?;
        // Where forwards can be captured, one of the warm-up forwards is (the second, or the
        // third where the first uploads what the next keep): the capture is never timed.
        let warmup = match rank.may_capture() && !profile {
            true => warmup.max(1 + CAPTURE_TRIES),
            false => warmup,
        };
        for _ in 0..warmup {
            rank.forward(m, &feed, None)?;
        }
        let n = rank.program.instructions.len();
        let mut timing = Timing {
            forward_ms: Vec::with_capacity(iters),
            rank_ms: Vec::new(),
            rank_nccl_ms: Vec::new(),
            rank_nccl_exposed_ms: Vec::new(),
            instruction_ms: if profile {
                vec![Vec::new(); n]
            } else {
                Vec::new()
            },
            host_reads: 0,
            phase_ms: Default::default(),
            graph_nodes: 0,
        };
        let (mut nccl_ms, mut exposed_ms) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
        let event = |s: &Arc<CudaStream>| {
            s.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| backend_err(e.to_string()))
        };
        for _ in 0..iters {
            let mut per = profile.then(|| vec![0.0; n]);
            // Every rank starts each forward together: a barrier, waited for on the host.
            if let Some(c) = rank.comms {
                c.gather_world(&rank.stream, &[0.0]).map_err(backend_err)?;
            }
            rank.time_comms(rank.comms.is_some());
            rank.host_reads.set(0);
            let start = event(&rank.stream)?;
            rank.forward(m, &feed, per.as_mut())?;
            let end = event(&rank.stream)?;
            end.synchronize().map_err(|e| backend_err(e.to_string()))?;
            timing.host_reads = timing.host_reads.max(rank.host_reads.get());
            let comm = rank.take_comm_ms().map_err(backend_err)?;
            nccl_ms.push(comm.busy);
            exposed_ms.push(comm.exposed);
            rank.time_comms(false);
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| backend_err(e.to_string()))?;
            timing.forward_ms.push(ms as f64);
            for (name, ms) in rank.phase_ms.take() {
                timing
                    .phase_ms
                    .entry(name.to_string())
                    .or_default()
                    .push(ms);
            }
            for (acc, t) in timing
                .instruction_ms
                .iter_mut()
                .zip(per.unwrap_or_default())
            {
                acc.push(t);
            }
        }
        timing.graph_nodes = rank.graph.as_ref().map_or(0, |g| g.nodes);
        if let Some(c) = rank.comms {
            let mine: Vec<f32> = timing.forward_ms.iter().map(|&v| v as f32).collect();
            let all = c.gather_world(&rank.stream, &mine).map_err(backend_err)?;
            timing.rank_ms = all
                .chunks(iters.max(1))
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect();
            let by_rank = |v: &[f64]| -> Result<Vec<Vec<f64>>, RuntimeError> {
                let mine: Vec<f32> = v.iter().map(|&v| v as f32).collect();
                let all = c.gather_world(&rank.stream, &mine).map_err(backend_err)?;
                Ok(all
                    .chunks(iters.max(1))
                    .map(|r| r.iter().map(|&v| v as f64).collect())
                    .collect())
            };
            timing.rank_nccl_ms = by_rank(&nccl_ms)?;
            timing.rank_nccl_exposed_ms = by_rank(&exposed_ms)?;
            // A replayed forward's NCCL calls are inside its graph, out of the events' reach:
            // not measured (gathered all the same, so every rank makes the same calls).
            if timing.graph_nodes > 0 {
                timing.rank_nccl_ms.clear();
                timing.rank_nccl_exposed_ms.clear();
            }
            timing.forward_ms = (0..iters)
                .map(|i| timing.rank_ms.iter().map(|r| r[i]).fold(0.0, f64::max))
                .collect();
            let all = c
                .gather_world(&rank.stream, &[timing.host_reads as f32])
                .map_err(backend_err)?;
            timing.host_reads = all.iter().fold(0.0f32, |a, &b| a.max(b)) as usize;
        }
        Ok(timing)
    })
}

/// Sets up this process's rank of a bundle on its GPU (weights uploaded, kernels loaded, NCCL
/// connected) and hands it to `body`.
fn with_rank<R>(
    bundle: &Bundle,
    dist: Option<&Dist>,
    body: impl FnOnce(&mut Rank<'_>, &crate::bundle::Manifest) -> Result<R, RuntimeError>,
) -> Result<R, RuntimeError> {
    available().map_err(backend_err)?;
    let m = &bundle.manifest;
    let (rank, world, gpu) = dist.map_or((0, 1, 0), |d| (d.rank, d.world, d.local_rank));
    if m.programs.len() != world {
        return Err(backend_err(format!(
            "the bundle has {} ranks and this run {world} process(es): run one process per GPU with --nproc-per-node {} (or under torchrun / srun with WORLD_SIZE={})",
            m.programs.len(),
            m.programs.len(),
            m.programs.len()
        )));
    }
    let idx = m
        .programs
        .iter()
        .position(|p| p.rank == rank)
        .ok_or_else(|| backend_err(format!("the bundle has no program for rank {rank}")))?;
    let (program, weights) = (&m.programs[idx], &bundle.weights[idx]);
    if program.gpu.len() != program.instructions.len() {
        return Err(backend_err(
            "the bundle was compiled for the CPU: compile it with --target cuda",
        ));
    }
    let gpus = CudaContext::device_count().map_err(|e| backend_err(e.to_string()))? as usize;
    if gpu >= gpus {
        return Err(backend_err(format!(
            "rank {rank} wants GPU {gpu} (its local rank) but this machine has {gpus}"
        )));
    }
    let ctx =
        CudaContext::new(gpu).map_err(|e| backend_err(format!("cannot open GPU {gpu}: {e}")))?;
    mem_pool::keep_freed_memory(&ctx).map_err(|e| backend_err(format!("GPU {gpu}: {e}")))?;
    // SAFETY: before any buffer is made; the streams are ordered by explicit events where a
    // second one is used (`overlap`), so cudarc's per-buffer events would only cost time.
    unsafe { ctx.disable_event_tracking() };
    let mut comms = match dist {
        Some(d) => Some(
            comm::Comms::connect(d, &m.programs)
                .map_err(|e| backend_err(format!("rank {rank}: {e}")))?,
        ),
        None => None,
    };
    // A stream of its own, not the legacy default one, which cannot be captured as a graph.
    let stream = ctx
        .new_stream()
        .map_err(|e| backend_err(format!("a stream: {e}")))?;
    let blas = cudarc::cublas::CudaBlas::new(stream.clone())
        .map_err(|e| backend_err(format!("cuBLAS: {e}")))?;
    let _blas_workspace = blas::set_workspace(&blas, &stream).map_err(backend_err)?;
    let functions = load_kernels(bundle, &ctx, program)?;
    let mut rank = Rank {
        stream: stream.clone(),
        blas,
        functions,
        program,
        slots: (0..program.buffers.len()).map(|_| None).collect(),
        comms: comms.as_ref(),
        microbatch: 0,
        gemm_paths: Default::default(),
        comm_spans: Default::default(),
        host_reads: Default::default(),
        marks: Default::default(),
        phase_ms: Default::default(),
        sends_aside: program.communicates_only_by_sends(),
        in_flight: Default::default(),
        graph_use: graph::GraphUse::from_env(),
        graph: None,
        last_eager: None,
        tensor_maps: Default::default(),
        workspaces: Default::default(),
        multiprocessors: Default::default(),
        bits_results: program
            .instructions
            .iter()
            .filter(|ins| ins.op == crate::program::Op::MatMul)
            .flat_map(|ins| ins.outputs.iter().copied())
            .filter(|&o| program.reads_as_bits(o))
            .collect(),
        comm_stream: match &comms {
            Some(_) => Some(
                ctx.new_stream()
                    .map_err(|e| backend_err(format!("a second stream: {e}")))?,
            ),
            None => None,
        },
    };
    // bf16 weights that feed GEMMs go to the device as bf16 (half the memory, tensor cores);
    // an f32 copy is made only if some other kernel reads them too.
    let gemm_weights = gemm_weight_operands(program);
    let bf16_gemms = rank.functions.contains_key(crate::program::TO_BF16_KERNEL);
    for (id, b) in program.buffers.iter().enumerate() {
        if b.kind == BufferKind::Weight {
            let w = weights
                .get(&b.name)
                .ok_or_else(|| backend_err(format!("weight '{}' is missing", b.name)))?;
            rank.put_host(id, w.clone());
            if w.dtype == DType::BF16 && bf16_gemms && gemm_weights.contains(&id) {
                let bits: Vec<u16> = match &*w.data {
                    crate::tensor::Data::Half(b) => b.to_vec(),
                    _ => w
                        .to_f32()
                        .iter()
                        .map(|&v| half::bf16::from_f32(v).to_bits())
                        .collect(),
                };
                let d16 = stream
                    .clone_htod(&bits)
                    .map_err(|e| backend_err(e.to_string()))?;
                if let Some(slot) = rank.slots[id].as_mut() {
                    slot.dev16 = Some(d16);
                }
            } else if w.dtype.is_float() {
                rank.device(id)?;
            }
        }
    }
    // Done only when the device is: a rank with no outputs may still have sends in flight.
    let result = body(&mut rank, m).and_then(|r| {
        stream
            .synchronize()
            .map(|_| r)
            .map_err(|e| backend_err(e.to_string()))
    });
    drop(rank);
    if let (Ok(_), Some(c)) = (&result, comms.as_mut()) {
        c.finish();
    }
    drop(comms);
    result
}

impl Rank<'_> {
    /// One forward: every microbatch through the program, its outputs joined (none where the
    /// inputs came from the device). With `per`, each instruction's time is added to its entry
    /// (an event pair around each step). A forward from the device is replayed from its CUDA
    /// graph, or captured into one where the last like it can be (`graph`, `may_capture`).
    fn forward(
        &mut self,
        m: &crate::bundle::Manifest,
        feed: &Feed,
        per: Option<&mut Vec<f64>>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let shapes = match (feed, &per) {
            (Feed::Device(d), None) if self.may_capture() => Some(feed_shapes(d)),
            _ => None,
        };
        if let Some(shapes) = &shapes {
            if self.graph.as_ref().is_some_and(|g| &g.shapes == shapes) {
                self.replay()?;
                return Ok(Vec::new());
            }
            let like = self.last_eager.as_ref().filter(|e| &e.shapes == shapes);
            if like.is_some_and(|e| e.refusal().is_none()) {
                self.capture(m, feed, shapes.clone())?;
                return Ok(Vec::new());
            }
        }
        // A graph is launched only until another forward runs (its buffers are freed outside
        // it then).
        self.graph = None;
        let (reads, uploads) = (self.host_reads.get(), graph::uploads());
        let outs = self.forward_eager(m, feed, per)?;
        // What decides whether the next forward like this one is captured.
        if let Some(shapes) = shapes {
            self.last_eager = Some(graph::Eager {
                shapes,
                host_reads: self.host_reads.get() - reads,
                uploads: graph::uploads() - uploads,
            });
        }
        Ok(outs)
    }

    /// Whether this rank's forwards may be captured: one rank's unless `PPMOE_CUDA_GRAPH=0`;
    /// several ranks' (their NCCL calls captured too) only under `PPMOE_CUDA_GRAPH=1`, and
    /// never with pipeline messages (each carries its microbatch, which a graph would freeze).
    /// Every rank decides from its own forwards; a collective is launched in the same order
    /// whether a rank replays it or calls it.
    fn may_capture(&self) -> bool {
        match (self.graph_use, self.comms) {
            (graph::GraphUse::Never, _) => false,
            (_, None) => true,
            (use_, Some(_)) => {
                use_ == graph::GraphUse::Always && !self.program.communicates_point_to_point()
            }
        }
    }

    /// The forward captured as a CUDA graph, then launched (its first run).
    fn capture(
        &mut self,
        m: &crate::bundle::Manifest,
        feed: &Feed,
        shapes: Vec<Vec<Vec<usize>>>,
    ) -> Result<(), RuntimeError> {
        // The graph may free only its own buffers: the last forward's go first, outside it.
        self.graph = None;
        self.clear_activations();
        graph::begin(&self.stream).map_err(backend_err)?;
        if let Err(e) = self.forward_eager(m, feed, None) {
            graph::abandon(&self.stream);
            return Err(e);
        }
        let captured = graph::end(&self.stream, shapes).map_err(backend_err)?;
        tracing::info!(
            "rank {}: forward captured as a CUDA graph of {} nodes",
            self.program.rank,
            captured.nodes
        );
        captured.launch().map_err(backend_err)?;
        self.graph = Some(captured);
        Ok(())
    }

    /// The captured forward again: its results land in the buffers the slots hold.
    fn replay(&mut self) -> Result<(), RuntimeError> {
        for (slot, b) in self.slots.iter_mut().zip(&self.program.buffers) {
            if let (Some(s), false) = (slot.as_mut(), b.kind == BufferKind::Weight) {
                if s.dev.is_some() {
                    s.host = None;
                }
            }
        }
        match &self.graph {
            Some(g) => g.launch().map_err(backend_err),
            None => Err(backend_err("no CUDA graph to replay")),
        }
    }

    /// Empties every buffer but the weights (each microbatch starts so).
    fn clear_activations(&mut self) {
        for (slot, b) in self.slots.iter_mut().zip(&self.program.buffers) {
            if b.kind != BufferKind::Weight {
                *slot = None;
            }
        }
    }

    /// `ppmoe run`'s forward under `PPMOE_CUDA_GRAPH=1`: the inputs put on the device, one
    /// eager forward (it chooses the GEMM paths and shows whether the forward can be captured),
    /// then the forward captured and launched, and replayed; the replay's outputs are read.
    fn run_through_graph(
        &mut self,
        m: &crate::bundle::Manifest,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let feed = self.device_feed(m, inputs)?;
        self.forward(m, &feed, None)?;
        // A first forward may upload what the next ones keep (integer constants a kernel
        // reads): the capture may come one forward later.
        for _ in 0..CAPTURE_TRIES {
            self.forward(m, &feed, None)?;
            if self.graph.is_some() {
                break;
            }
        }
        match &self.graph {
            Some(_) => {
                self.forward(m, &feed, None)?;
            }
            None => {
                let why = self.last_eager.as_ref().and_then(graph::Eager::refusal);
                tracing::warn!(
                    "the forward was not captured as a CUDA graph: {}",
                    why.unwrap_or_else(|| "its inputs differ between forwards".into())
                );
            }
        }
        self.stream
            .synchronize()
            .map_err(|e| backend_err(e.to_string()))?;
        let program = self.program;
        program.outputs.iter().map(|&o| self.host(o)).collect()
    }

    /// The forward's steps on the stream, as they come (see `forward`).
    fn forward_eager(
        &mut self,
        m: &crate::bundle::Manifest,
        feed: &Feed,
        mut per: Option<&mut Vec<f64>>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let program = self.program;
        let stream = self.stream.clone();
        let event = || {
            stream
                .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| backend_err(e.to_string()))
        };
        let copy = |e: cudarc::driver::DriverError| backend_err(e.to_string());
        let pieces = match feed {
            Feed::Host(inputs) => crate::microbatch::split_inputs(m, inputs)?
                .into_iter()
                .map(|p| p.into_iter().map(Fed::Host).collect())
                .collect(),
            Feed::Device(d) => d
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|v| match v {
                            // Shared, not copied: no instruction writes into its operands.
                            Fed::Floats(dev) => Ok(Fed::Floats(dev.clone())),
                            Fed::Bf16(bits) => Ok(Fed::Bf16(bits.clone())),
                            Fed::Ids(dev, t) => stream
                                .clone_dtod(dev)
                                .map(|d| Fed::Ids(d, t.clone()))
                                .map_err(copy),
                            Fed::Host(t) => Ok(Fed::Host(t.clone())),
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<Vec<Vec<_>>, _>>()?,
        };
        let mut outs = Vec::new();
        for (mb, piece) in pieces.into_iter().enumerate() {
            self.microbatch = mb as u64;
            self.clear_activations();
            // Ranks that take no model input (later pipeline stages) get none.
            if !program.inputs.is_empty() {
                for (&id, v) in program.inputs.iter().zip(piece) {
                    match v {
                        Fed::Floats(dev) => {
                            let shape = self.static_shape(id);
                            self.put_dev(id, dev, shape);
                        }
                        Fed::Bf16(bits) => {
                            let shape = self.static_shape(id);
                            self.put_bits(id, bits, shape);
                        }
                        Fed::Ids(dev, t) => {
                            self.put_host(id, t);
                            if let Some(slot) = self.slots[id].as_mut() {
                                slot.ids = Some(dev);
                            }
                        }
                        Fed::Host(t) => {
                            crate::cpu::check_input(program, id, &t)?;
                            self.put_host(id, t);
                        }
                    }
                }
            }
            for (i, how) in program.gpu.iter().enumerate() {
                let Some(times) = per.as_deref_mut() else {
                    self.step(i, how)?;
                    continue;
                };
                *self.marks.borrow_mut() = Some(Vec::new());
                let start = event()?;
                self.step(i, how)?;
                let end = event()?;
                end.synchronize().map_err(|e| backend_err(e.to_string()))?;
                times[i] += start
                    .elapsed_ms(&end)
                    .map_err(|e| backend_err(e.to_string()))? as f64;
                let marks = self.marks.borrow_mut().take().unwrap_or_default();
                let mut from = &start;
                for (name, e) in &marks {
                    let ms = from.elapsed_ms(e).map_err(|e| backend_err(e.to_string()))?;
                    *self.phase_ms.borrow_mut().entry(name).or_default() += ms as f64;
                    from = e;
                }
            }
            if matches!(feed, Feed::Device(_)) {
                continue;
            }
            stream
                .synchronize()
                .map_err(|e| backend_err(e.to_string()))?;
            outs.push(
                program
                    .outputs
                    .iter()
                    .map(|&o| self.host(o))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        self.join_sends().map_err(backend_err)?;
        if outs.is_empty() {
            return Ok(Vec::new());
        }
        crate::microbatch::join_outputs(outs, "cuda")
    }

    /// The inputs cut into microbatches, each float piece copied to the device once (checked
    /// as a run checks them); token ids an embedding reads are checked against its table and
    /// copied too (`embedding::fed_ids`), other integer pieces stay on the host.
    fn device_feed(
        &mut self,
        m: &crate::bundle::Manifest,
        inputs: &[Tensor],
    ) -> Result<Feed<'static>, RuntimeError> {
        let program = self.program;
        let mut pieces = Vec::new();
        for piece in crate::microbatch::split_inputs(m, inputs)? {
            let mut row = Vec::new();
            for (&id, t) in program.inputs.iter().zip(piece) {
                crate::cpu::check_input(program, id, &t)?;
                let up = |e: cudarc::driver::DriverError| backend_err(e.to_string());
                // A bf16 input goes as its bits where the rank can widen them on the device.
                let bits = match &*t.data {
                    crate::tensor::Data::Half(b) if t.dtype == DType::BF16 => Some(b),
                    _ => None,
                };
                let widens = self.conversion(bf16_reduce::Direction::Widen).is_some();
                row.push(if let Some(bits) = bits.filter(|_| widens) {
                    Fed::Bf16(Arc::new(self.stream.clone_htod(&bits[..]).map_err(up)?))
                } else if t.dtype.is_float() {
                    let v = self.stream.clone_htod(&*t.f32_values()).map_err(up)?;
                    Fed::Floats(Arc::new(v))
                } else if let Some(ids) = embedding::fed_ids(program, id, &t)? {
                    Fed::Ids(self.stream.clone_htod(&ids).map_err(up)?, t)
                } else {
                    Fed::Host(t)
                });
            }
            pieces.push(row);
        }
        Ok(Feed::Device(pieces))
    }
}

/// The buffers that are the weight side of a GEMM: B of a matmul, the expert stacks of
/// moe.experts. (Router weights are never bf16: the compiler keeps them fp32.)
fn gemm_weight_operands(program: &Program) -> std::collections::HashSet<usize> {
    let mut set = std::collections::HashSet::new();
    for (ins, how) in program.instructions.iter().zip(&program.gpu) {
        let picks: &[usize] = match how {
            GpuOp::Gemm => &[1],
            GpuOp::Experts { .. } => &[3, 4],
            _ => &[],
        };
        // PPMoE's expert stacks are operands of the expert_ffn fused into its step.
        let picks = match (how, &ins.op) {
            (GpuOp::Fused { .. }, crate::program::Op::MoeExpertFfn { .. }) => &[2, 3],
            _ => picks,
        };
        set.extend(
            picks
                .iter()
                .filter_map(|&k| ins.inputs.get(k).copied().flatten())
                .filter(|&b| program.buffers[b].kind == BufferKind::Weight),
        );
    }
    set
}

/// Loads the rank's PTX and looks up every kernel its plan launches.
fn load_kernels(
    bundle: &Bundle,
    ctx: &Arc<CudaContext>,
    program: &Program,
) -> Result<HashMap<String, cudarc::driver::CudaFunction>, RuntimeError> {
    let mut functions = HashMap::new();
    let Some(file) = &program.ptx_file else {
        return Ok(functions);
    };
    let ptx = std::fs::read_to_string(bundle.dir.join(file)).map_err(|cause| RuntimeError::Io {
        path: file.clone(),
        cause,
    })?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| backend_err(format!("{file}: the PTX does not load: {e}")))?;
    let names = program.gpu.iter().flat_map(|op| match op {
        GpuOp::Route {
            name,
            capacity: true,
            ..
        } => ["", "_capacity", "_renorm"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
        GpuOp::Kernel { name, .. }
        | GpuOp::Pointwise { name, .. }
        | GpuOp::Route { name, .. }
        | GpuOp::Embedding { name } => {
            vec![name.clone()]
        }
        GpuOp::Experts { prefix, .. }
        | GpuOp::LocalExperts { prefix, .. }
        | GpuOp::AllToAllExperts { prefix, .. } => ["gather", "act", "combine"]
            .iter()
            .map(|s| format!("{prefix}_{s}"))
            .collect(),
        _ => vec![],
    });
    for name in names {
        let f = module
            .load_function(&name)
            .map_err(|e| backend_err(format!("{file}: kernel {name}: {e}")))?;
        functions.insert(name, f);
    }
    // Present only where an all-to-all step's experts have an output bias, and where a step
    // can be routed (`device_routed`) or grouped (`device_grouped`) on the device.
    for op in &program.gpu {
        let optional: &[&str] = match op {
            GpuOp::AllToAllExperts { .. } => &["bias_out"],
            GpuOp::Experts { .. } | GpuOp::LocalExperts { .. } => {
                crate::program::OPTIONAL_EXPERT_KERNELS
            }
            _ => &[],
        };
        let (GpuOp::AllToAllExperts { prefix, .. }
        | GpuOp::Experts { prefix, .. }
        | GpuOp::LocalExperts { prefix, .. }) = op
        else {
            continue;
        };
        for s in optional {
            let name = format!("{prefix}_{s}");
            if let Ok(f) = module.load_function(&name) {
                use crate::program::{SP_THREADS, WG_THREADS};
                let shared = if crate::program::WG_KERNELS.contains(s) {
                    Some((crate::program::WG_SHARED_BYTES, WG_THREADS))
                } else if crate::program::SP_KERNELS.contains(s) {
                    Some((crate::program::SP_SHARED_BYTES, SP_THREADS))
                } else if crate::program::PP_KERNELS.contains(s) {
                    Some((crate::program::PP_SHARED_BYTES, SP_THREADS))
                } else if crate::program::QP_KERNELS.contains(s) {
                    Some((crate::program::QP_SHARED_BYTES, SP_THREADS))
                } else {
                    None
                };
                if let Some((bytes, threads)) = shared {
                    allow_dynamic_shared(&f, &name, bytes)
                        .and_then(|()| block_fits(&f, &name, threads))
                        .map_err(|e| backend_err(format!("{file}: {e}")))?;
                }
                functions.insert(name, f);
            }
        }
    }
    // Present only where the weights are bf16.
    for name in [
        crate::program::TO_BF16_KERNEL,
        crate::program::FROM_BF16_KERNEL,
        crate::program::TO_BF16_X4_KERNEL,
        crate::program::FROM_BF16_X4_KERNEL,
    ] {
        if let Ok(f) = module.load_function(name) {
            functions.insert(name.to_string(), f);
        }
    }
    Ok(functions)
}

/// Whether a block of `threads` threads of `f` fits on an SM with the registers the driver
/// gave it (else its launch would fail as out of resources, naming nothing).
fn block_fits(f: &cudarc::driver::CudaFunction, name: &str, threads: usize) -> Result<(), String> {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK;
    let most = f
        .get_attribute(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
        .map_err(|e| format!("{name}: {e}"))?;
    if usize::try_from(most).unwrap_or(0) >= threads {
        return Ok(());
    }
    let registers = f.num_regs().map_err(|e| format!("{name}: {e}"))?;
    Err(format!(
        "{name}: {registers} registers a thread leave room for {most} threads a block, and it launches {threads}"
    ))
}

/// Lets `f` (a warpgroup projection) take `bytes` of dynamic shared memory: more than the
/// 48 KiB a kernel has without asking.
fn allow_dynamic_shared(
    f: &cudarc::driver::CudaFunction,
    name: &str,
    bytes: usize,
) -> Result<(), String> {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    let bytes = i32::try_from(bytes).map_err(|e| e.to_string())?;
    f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)
        .map_err(|e| format!("{name}: {bytes} bytes of shared memory refused: {e}"))
}
