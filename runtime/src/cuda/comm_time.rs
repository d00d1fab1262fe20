//! Time inside NCCL calls, for `ppmoe bench`: while a forward is timed, every communication
//! (a collective instruction, the all-to-all step's count gather and row exchanges, the
//! chunked all-reduces of PPMoE's overlapped step) is bracketed by a pair of events, and the
//! pairs are summed once the forward is done (no synchronisation inside it). A communication on
//! the rank's stream is exposed whole: nothing else runs on that stream meanwhile. The
//! overlapped step's all-reduces run on a second stream behind the next chunk's experts; of
//! them only the tail after the last chunk's experts is exposed (the rank's stream waits for
//! it), and that span is what `exposed` records.

use super::Rank;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};
use std::sync::Arc;

/// The event pairs of one timed forward.
#[derive(Default)]
pub(super) struct CommSpans {
    /// Around each communication, on the stream it ran on, and whether the rank's stream had
    /// nothing else to do meanwhile (it ran there).
    busy: Vec<(CudaEvent, CudaEvent, bool)>,
    /// Further spans in which the rank's stream only waited for communication on another.
    waited: Vec<(CudaEvent, CudaEvent)>,
}

/// A forward's time inside NCCL calls, and how much of it the rank's stream waited for (ms).
pub(super) struct CommMs {
    pub busy: f64,
    pub exposed: f64,
}

pub(super) fn event_on(stream: &Arc<CudaStream>) -> Result<CudaEvent, String> {
    stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| e.to_string())
}

fn ms(s: &CudaEvent, e: &CudaEvent) -> Result<f64, String> {
    s.elapsed_ms(e).map(f64::from).map_err(|e| e.to_string())
}

impl Rank<'_> {
    /// Runs `f`, a communication on the rank's stream, bracketed by events when the forward
    /// is being timed.
    pub(super) fn in_comm<R>(&self, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
        let start = self.comm_start()?;
        let r = f()?;
        self.comm_stop(start)?;
        Ok(r)
    }

    /// Whether the forward is being timed.
    pub(super) fn timing_comms(&self) -> bool {
        self.comm_spans.borrow().is_some()
    }

    /// The opening event of a communication on the rank's stream, when the forward is being
    /// timed.
    pub(super) fn comm_start(&self) -> Result<Option<CudaEvent>, String> {
        match self.timing_comms() {
            true => event_on(&self.stream).map(Some),
            false => Ok(None),
        }
    }

    /// Closes the communication `comm_start` opened (exposed whole: it ran on the rank's
    /// stream).
    pub(super) fn comm_stop(&self, start: Option<CudaEvent>) -> Result<(), String> {
        let Some(start) = start else {
            return Ok(());
        };
        let end = event_on(&self.stream)?;
        self.record_span(start, end, true);
        Ok(())
    }

    /// Records a communication's event pair; `exposed`: the rank's stream waited throughout.
    pub(super) fn record_span(&self, start: CudaEvent, end: CudaEvent, exposed: bool) {
        if let Some(spans) = self.comm_spans.borrow_mut().as_mut() {
            spans.busy.push((start, end, exposed));
        }
    }

    /// Records a span in which the rank's stream only waited for communication elsewhere.
    pub(super) fn record_waited(&self, start: CudaEvent, end: CudaEvent) {
        if let Some(spans) = self.comm_spans.borrow_mut().as_mut() {
            spans.waited.push((start, end));
        }
    }

    /// Starts (`true`) or stops bracketing communications.
    pub(super) fn time_comms(&self, on: bool) {
        *self.comm_spans.borrow_mut() = on.then(CommSpans::default);
    }

    /// The bracketed times since the last call (the streams must have passed the events).
    pub(super) fn take_comm_ms(&self) -> Result<CommMs, String> {
        let spans = self
            .comm_spans
            .borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut t = CommMs {
            busy: 0.0,
            exposed: 0.0,
        };
        for (s, e, exposed) in &spans.busy {
            let v = ms(s, e)?;
            t.busy += v;
            if *exposed {
                t.exposed += v;
            }
        }
        for (s, e) in &spans.waited {
            t.exposed += ms(s, e)?.max(0.0);
        }
        Ok(t)
    }
}
