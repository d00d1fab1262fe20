//! A rank's forward: eager, instruction by instruction (each microbatch, with the pipeline's
//! sends and receives), or captured once as a CUDA graph and replayed.

use super::{
    backend_err, bf16_reduce, embedding, feed_shapes, graph, Fed, Feed, Rank, CAPTURE_TRIES,
};
use crate::error::RuntimeError;
use crate::program::BufferKind;
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

impl Rank<'_> {
    /// One forward: every microbatch through the program, its outputs joined (none where the
    /// inputs came from the device). With `per`, each instruction's time is added to its entry
    /// (an event pair around each step). A forward from the device is replayed from its CUDA
    /// graph, or captured into one where the last like it can be (`graph`, `may_capture`).
    pub(super) fn forward(
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
    pub(super) fn may_capture(&self) -> bool {
        match (self.graph_use, self.comms) {
            (graph::GraphUse::Never, _) => false,
            (_, None) => true,
            (use_, Some(_)) => {
                use_ == graph::GraphUse::Always && !self.program.communicates_point_to_point()
            }
        }
    }

    /// The forward captured as a CUDA graph, then launched (its first run).
    pub(super) fn capture(
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
    pub(super) fn replay(&mut self) -> Result<(), RuntimeError> {
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
    pub(super) fn clear_activations(&mut self) {
        for (slot, b) in self.slots.iter_mut().zip(&self.program.buffers) {
            if b.kind != BufferKind::Weight {
                *slot = None;
            }
        }
    }

    /// `ppmoe run`'s forward under `PPMOE_CUDA_GRAPH=1`: the inputs put on the device, one
    /// eager forward (it chooses the GEMM paths and shows whether the forward can be captured),
    /// then the forward captured and launched, and replayed; the replay's outputs are read.
    pub(super) fn run_through_graph(
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
    pub(super) fn forward_eager(
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
    pub(super) fn device_feed(
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
