//! CUDA graphs: a forward captured once and replayed as one launch, where the forward took a
//! launch per kernel, GEMM and copy (at decode sizes the launches are most of its time).
//!
//! A forward can be captured when the last one with the same input shapes neither read a value
//! back to the host (a synchronisation, and a decision the graph would freeze) nor uploaded
//! one (the copy would read host memory that is gone at replay): `Eager::refusal`. Its GEMM
//! paths are chosen by then (`grouped_choice` times both ways on a shape's first forward, which
//! a capture cannot). `PPMOE_CUDA_GRAPH=0` never captures; by default `ppmoe bench` captures a
//! one-rank forward that can be; `=1` also captures multi-rank forwards without pipeline
//! messages (their NCCL calls inside the graph: `Rank::may_capture`) and `ppmoe run`'s forward
//! (run eagerly once, then captured, launched and replayed, the replay's outputs read: how
//! gpu-test checks the graphs).
//!
//! Memory: what the captured forward allocates on the stream becomes the graph's allocations,
//! at fixed addresses. The graph is instantiated to free, at each launch, what the previous
//! launch left allocated: the results the rank's slots hold, which each replay writes again at
//! the same addresses. They are freed outside the graph (legal once it has run) when the slots
//! are next emptied or the rank ends.

use cudarc::driver::{sys, CudaGraph, CudaSlice, CudaStream, DeviceRepr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Host-to-device copies so far (the backend holds one rank per process).
static UPLOADS: AtomicUsize = AtomicUsize::new(0);

/// `v` copied to a new device buffer, counted: a forward that does this cannot be captured.
pub(super) fn upload<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    v: &[T],
) -> Result<CudaSlice<T>, cudarc::driver::DriverError> {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    stream.clone_htod(v)
}

pub(super) fn uploads() -> usize {
    UPLOADS.load(Ordering::Relaxed)
}

/// When forwards are captured (`PPMOE_CUDA_GRAPH`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum GraphUse {
    Never,
    /// One rank's timed forwards (`ppmoe bench`) that can be.
    WhenCapturable,
    /// Several ranks' too, and `ppmoe run`'s.
    Always,
}

impl GraphUse {
    pub(super) fn from_env() -> Self {
        match std::env::var("PPMOE_CUDA_GRAPH").as_deref().map(str::trim) {
            Ok("0") => GraphUse::Never,
            Ok("1") => GraphUse::Always,
            _ => GraphUse::WhenCapturable,
        }
    }
}

/// What an eager forward did that decides whether the next one like it can be captured.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Eager {
    /// Its inputs' shapes, by microbatch: a forward of other shapes is another graph.
    pub shapes: Vec<Vec<Vec<usize>>>,
    pub host_reads: usize,
    pub uploads: usize,
}

impl Eager {
    /// Why a forward like this one cannot be captured; None where it can.
    pub(super) fn refusal(&self) -> Option<String> {
        match (self.host_reads, self.uploads) {
            (0, 0) => None,
            (r, 0) => Some(format!(
                "it copies {r} value(s) back to the host (host work or grouping)"
            )),
            (0, u) => Some(format!(
                "it copies {u} value(s) from the host (inputs or operands held there)"
            )),
            (r, u) => Some(format!(
                "it copies {r} value(s) back to the host and {u} from it"
            )),
        }
    }
}

/// A captured forward, ready to launch.
pub(super) struct Captured {
    graph: CudaGraph,
    pub shapes: Vec<Vec<Vec<usize>>>,
    /// The graph's nodes (kernels, GEMMs' kernels, copies, allocations and frees).
    pub nodes: usize,
}

/// Starts capturing `stream`'s work (this thread's only: other threads' calls are not
/// affected).
pub(super) fn begin(stream: &Arc<CudaStream>) -> Result<(), String> {
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| format!("CUDA graph capture: {e}"))
}

/// Ends the capture and instantiates the graph, freeing at each launch what the previous one
/// left allocated.
pub(super) fn end(
    stream: &Arc<CudaStream>,
    shapes: Vec<Vec<Vec<usize>>>,
) -> Result<Captured, String> {
    let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
    let graph = stream
        .end_capture(flags)
        .map_err(|e| format!("CUDA graph capture: {e}"))?
        .ok_or("CUDA graph capture: the forward captured no work")?;
    let mut nodes = 0usize;
    // SAFETY: a null node array asks for the count only; the graph is alive.
    unsafe { sys::cuGraphGetNodes(graph.cu_graph(), std::ptr::null_mut(), &mut nodes) }
        .result()
        .map_err(|e| format!("CUDA graph: counting its nodes: {e}"))?;
    dot_print(&graph)?;
    Ok(Captured {
        graph,
        shapes,
        nodes,
    })
}

/// Writes the graph as DOT (every node's kind, a kernel's name and launch shape) to the file
/// `PPMOE_GRAPH_DOT` names, where it is set: which launches a captured forward replays (a
/// measurement aid; the last rank's graph captured is the one left there).
fn dot_print(graph: &CudaGraph) -> Result<(), String> {
    let Some(path) = std::env::var_os("PPMOE_GRAPH_DOT") else {
        return Ok(());
    };
    let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| "PPMOE_GRAPH_DOT: the path has a NUL byte".to_string())?;
    let flags = sys::CUgraphDebugDot_flags::CU_GRAPH_DEBUG_DOT_FLAGS_VERBOSE as u32;
    // SAFETY: the graph is alive and the path a NUL-terminated string that outlives the call.
    unsafe { sys::cuGraphDebugDotPrint(graph.cu_graph(), c_path.as_ptr(), flags) }
        .result()
        .map_err(|e| format!("CUDA graph: writing {}: {e}", path.to_string_lossy()))
}

/// Abandons a capture that failed part-way (its error is the one to report).
pub(super) fn abandon(stream: &Arc<CudaStream>) {
    let flags = sys::CUgraphInstantiate_flags(0);
    let _ = stream.end_capture(flags);
}

impl Captured {
    pub(super) fn launch(&self) -> Result<(), String> {
        self.graph
            .launch()
            .map_err(|e| format!("CUDA graph launch: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eager(host_reads: usize, uploads: usize) -> Eager {
        Eager {
            shapes: vec![vec![vec![4, 64]]],
            host_reads,
            uploads,
        }
    }

    #[test]
    fn only_a_forward_with_no_host_copies_is_captured() {
        assert_eq!(eager(0, 0).refusal(), None);
        assert!(eager(2, 0).refusal().unwrap().contains("2 value(s) back"));
        assert!(eager(0, 1).refusal().unwrap().contains("1 value(s) from"));
        let both = eager(3, 4).refusal().unwrap();
        assert!(both.contains('3') && both.contains('4'), "{both}");
    }
}
