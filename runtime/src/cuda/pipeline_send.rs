//! A pipeline stage's sends on the second stream. NCCL's send finishes only once the receiving
//! stage has posted its receive, and the receiver posts it for microbatch m + 1 after it has
//! computed microbatch m: on the stage's own stream the send would hold back the stage's next
//! microbatch for as long. On the second stream, the stage computes microbatch m + 1 while
//! microbatch m's message waits. The buffers a send reads are kept until the forward's end,
//! where the stage's stream waits for the sends (the forward's time includes them) before
//! they are freed, in that stream's order.
//!
//! Only a stage whose only communication is its sends does this (the first stage of a pure
//! pipeline): a stage that also receives or takes part in collectives keeps every NCCL call on
//! its own stream, in program order, so no two of its calls can wait on each other across
//! streams.

use super::comm_time::event_on;
use super::Rank;
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// A buffer an in-flight send reads.
pub(super) enum InFlight {
    Floats(Arc<CudaSlice<f32>>),
    Words(CudaSlice<i64>),
}

impl Rank<'_> {
    /// The stream this rank's sends go on, which has waited for everything the rank's stream
    /// has done so far (the message's data and header); the rank's stream itself where sends
    /// stay there.
    pub(super) fn send_stream(&self) -> Result<Arc<CudaStream>, String> {
        match (&self.comm_stream, self.sends_aside) {
            (Some(side), true) => {
                let ready = event_on(&self.stream)?;
                side.wait(&ready).map_err(|e| e.to_string())?;
                Ok(side.clone())
            }
            _ => Ok(self.stream.clone()),
        }
    }

    /// Keeps `b` alive until the forward's sends are joined (`join_sends`).
    pub(super) fn hold_for_send(&self, b: InFlight) {
        if self.sends_aside {
            self.in_flight.borrow_mut().push(b);
        }
    }

    /// The rank's stream waits for the sends on the second stream (what it waited for is
    /// counted as exposed communication); then their buffers are freed, after that wait.
    pub(super) fn join_sends(&self) -> Result<(), String> {
        let Some(side) = self.comm_stream.as_ref().filter(|_| self.sends_aside) else {
            return Ok(());
        };
        let before = match self.timing_comms() {
            true => Some(event_on(&self.stream)?),
            false => None,
        };
        let sent = event_on(side)?;
        self.stream.wait(&sent).map_err(|e| e.to_string())?;
        if let Some(before) = before {
            let after = event_on(&self.stream)?;
            self.record_waited(before, after);
        }
        self.in_flight.borrow_mut().clear();
        Ok(())
    }
}
