//! Time inside NCCL calls, for `ppmoe bench`: while a forward is timed, every communication
//! (a collective instruction, the all-to-all step's count gather and row exchanges) is
//! bracketed by a pair of events on the rank's stream, and the pairs are summed once the
//! forward is done (no synchronisation inside it). Everything runs on one stream, so none of
//! this time is hidden behind computation.

use super::Rank;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

impl Rank<'_> {
    fn event(&self) -> Result<CudaEvent, String> {
        self.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| e.to_string())
    }

    /// Runs `f`, a communication, bracketed by events when the forward is being timed.
    pub(super) fn in_comm<R>(&self, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
        let start = self.comm_start()?;
        let r = f()?;
        self.comm_stop(start)?;
        Ok(r)
    }

    /// The opening event of a communication, when the forward is being timed.
    pub(super) fn comm_start(&self) -> Result<Option<CudaEvent>, String> {
        match self.comm_spans.borrow().is_some() {
            true => self.event().map(Some),
            false => Ok(None),
        }
    }

    /// Closes the communication `comm_start` opened.
    pub(super) fn comm_stop(&self, start: Option<CudaEvent>) -> Result<(), String> {
        let Some(start) = start else {
            return Ok(());
        };
        let end = self.event()?;
        if let Some(spans) = self.comm_spans.borrow_mut().as_mut() {
            spans.push((start, end));
        }
        Ok(())
    }

    /// Starts (`true`) or stops bracketing communications.
    pub(super) fn time_comms(&self, on: bool) {
        *self.comm_spans.borrow_mut() = on.then(Vec::new);
    }

    /// The bracketed time since the last call, in ms (the stream must have passed the events).
    pub(super) fn take_comm_ms(&self) -> Result<f64, String> {
        let spans = self
            .comm_spans
            .borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        spans.iter().try_fold(0.0, |acc, (s, e)| {
            s.elapsed_ms(e)
                .map(|ms| acc + ms as f64)
                .map_err(|e| e.to_string())
        })
    }
}
