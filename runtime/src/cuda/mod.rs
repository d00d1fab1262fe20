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
pub use timing::{bench_bundle, Timing};
mod collective;
mod comm;
mod comm_time;
mod device_grouped;
mod device_routed;
mod experts;
mod few_tokens;
mod forward;
mod gemm;
mod graph;
mod grouped_choice;
mod kernel_module;
mod mem_pool;
pub mod nccl;
mod overlap;
mod pipeline_send;
mod route_capacity;
mod step;
mod tensor_map;
mod timing;
mod workspace;

use crate::bundle::Bundle;
use crate::distributed::Dist;
use crate::error::RuntimeError;

use crate::program::{BufferKind, Program};
use crate::tensor::{DType, Tensor};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
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
    // The error's text is libcuda's too (cuGetErrorString): formatted inside the catch.
    loading_symbols(|| match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("libcuda is present but sees no GPU".to_string()),
        Err(e) => Err(format!("libcuda is present but cannot list GPUs: {e}")),
    })??;
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("libcublas was not found on the library path (for CUDA 13: /usr/local/cuda-13.0/targets/x86_64-linux/lib; add it to LD_LIBRARY_PATH)".into());
    }
    Ok(())
}

/// `f`'s result, where `f` makes the first calls into libcuda: cudarc looks each driver function up
/// at its first call and panics where the library lacks it (a partial or much older driver
/// library), so that panic is caught here and named, the default hook's report of it held
/// back for the while.
fn loading_symbols<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a lookup failed".into());
        format!("libcuda is present but lacks the driver API ppmoe calls ({what}): a partial or older driver library on the library path?")
    })
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
    /// The warp-specialised projections' blocks, as each kernel states them.
    block_threads: HashMap<String, usize>,
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
    /// The experts steps' results that every reader takes as bf16 bits and that are no result
    /// of the program (`Program::rounded_for_every_reader`): their device-routed combine writes
    /// bits (`COMBINE_BITS_SUFFIX`, or a few tokens' second token kernel `TOKEN_OUT_BITS`), so
    /// y is not written as f32 and narrowed after (unless
    /// `PPMOE_COMBINE_BITS=0`, a measurement aid: the same values, as f32 then narrowed).
    bits_combines: std::collections::HashSet<usize>,
    /// The embedding steps that copy their bf16 table's bits (`embedding::bits_table`), with
    /// the table each: found once the kernels are loaded; those tables go to the device as bits.
    bits_embeddings: HashMap<usize, usize>,
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
    /// `dst` takes `src`'s value under `shape`: the same device buffers where `src` is on the
    /// device (a reshape, or a collective of a group of one, moves nothing), else its host
    /// tensor.
    fn alias(&mut self, src: usize, dst: usize, shape: Vec<usize>) -> Result<(), RuntimeError> {
        let on_device = self.slots[src]
            .as_ref()
            .filter(|s| s.dev.is_some() || s.narrowed.is_some())
            .map(|s| (s.dev.clone(), s.narrowed.clone()));
        if let Some(parts) = on_device {
            self.put_on_device(dst, parts, shape);
        } else {
            let t = self.host(src)?;
            self.put_host(dst, Tensor { shape, ..t });
        }
        Ok(())
    }

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
    let kernel_module::Kernels {
        functions,
        block_threads,
    } = kernel_module::load_kernels(bundle, &ctx, program)?;
    let mut rank = Rank {
        stream: stream.clone(),
        blas,
        functions,
        block_threads,
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
        bits_combines: program
            .instructions
            .iter()
            .filter(|ins| matches!(ins.op, crate::program::Op::MoeExperts { .. }))
            .flat_map(|ins| ins.outputs.iter().copied())
            .filter(|&o| program.rounded_for_every_reader(o) && combine_bits_wanted())
            .collect(),
        bits_embeddings: Default::default(),
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
    let gemm_weights = kernel_module::gemm_weight_operands(program);
    let bf16_gemms = rank.functions.contains_key(crate::program::TO_BF16_KERNEL);
    // bf16 embedding tables whose rows are copied as bits go as bf16 too (never widened).
    rank.bits_embeddings = (0..program.instructions.len())
        .filter_map(|i| Some((i, embedding::bits_table(program, &rank.functions, i)?)))
        .collect();
    for (id, b) in program.buffers.iter().enumerate() {
        if b.kind == BufferKind::Weight {
            let w = weights
                .get(&b.name)
                .ok_or_else(|| backend_err(format!("weight '{}' is missing", b.name)))?;
            rank.put_host(id, w.clone());
            let as_bits = (bf16_gemms && gemm_weights.contains(&id))
                || rank.bits_embeddings.values().any(|&t| t == id);
            if w.dtype == DType::BF16 && as_bits {
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

/// Whether the experts' combine may write bf16 bits (`PPMOE_COMBINE_BITS=0` at run time says
/// not: y written as f32 and narrowed by its readers, the same values; a measurement aid).
fn combine_bits_wanted() -> bool {
    std::env::var("PPMOE_COMBINE_BITS").as_deref() != Ok("0")
}
