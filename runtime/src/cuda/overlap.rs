//! PPMoE's expert step with its all-reduce overlapped (`GpuOp::LocalExperts` with `reduce`):
//! the tokens are cut into chunks; each chunk's experts run on the rank's stream, and as soon
//! as a chunk's partial sum is made its rows are all-reduced on a second stream while the next
//! chunk's experts run. NCCL reduces element by element, so each token's row is the sum over
//! the group's ranks either way: with two ranks bit for bit the unchunked result (a + b); with
//! more, NCCL may add the ranks' values in another order for some elements, as an all-reduce of
//! another size may (float rounding, within the partitioned programs' 1e-5).
//! The rank's stream waits for the last reduction before anything reads the result; each
//! chunk's partial sum is kept until then (freed on the rank's stream after that wait).

use super::comm_time::event_on;
use super::experts::{fail_at, ExpertsCall};
use super::nccl::{NCCL_BFLOAT16, NCCL_FLOAT32};
use super::{dptr, Rank};
use crate::error::RuntimeError;
use std::ops::Range;

/// How many chunks of tokens: 2 from 1024 tokens up (each chunk's GEMMs still large), else 1
/// (a reduction alone, nothing to hide it behind). `PPMOE_OVERLAP_CHUNKS=N` sets it.
fn chunk_count(tokens: usize) -> usize {
    let set = std::env::var("PPMOE_OVERLAP_CHUNKS").ok();
    chunk_count_by(tokens, set.as_deref().and_then(|v| v.parse().ok()))
}

fn chunk_count_by(tokens: usize, set: Option<usize>) -> usize {
    match set {
        Some(n) => n.clamp(1, tokens.max(1)),
        None if tokens >= 1024 => 2,
        None => 1,
    }
}

/// The token range of chunk `c` of `n` over `t` tokens (the ranges cover 0..t in order).
fn chunk(t: usize, c: usize, n: usize) -> Range<usize> {
    t * c / n..t * (c + 1) / n
}

impl Rank<'_> {
    /// The step's experts and its all-reduce over `group`, chunk by chunk, into `call.out`.
    pub(super) fn run_experts_reduced(
        &mut self,
        i: usize,
        call: &ExpertsCall,
        prefix: &str,
        bf16: bool,
        group: &[usize],
    ) -> Result<(), RuntimeError> {
        let program = self.program;
        let fail = |reason: String| fail_at(program, i, reason);
        let mut source = self.expert_source(i, call, (prefix, bf16), false)?;
        let (t, h) = source.tokens_and_hidden();
        let (Some(comms), Some(side)) = (
            self.comms.filter(|_| group.len() > 1),
            self.comm_stream.clone(),
        ) else {
            // A group of one: the all-reduce is the identity.
            let y = self
                .chunk_experts(i, call, prefix, bf16, &mut source, 0..t)
                .map_err(&fail)?;
            self.put_dev(call.out, y, vec![t, h]);
            return Ok(());
        };
        let comm = comms.group(group).map_err(&fail)?;
        // SAFETY: written whole by the chunks' reductions (the chunks cover every token).
        let out =
            unsafe { self.stream.alloc::<f32>((t * h).max(1)) }.map_err(|e| fail(e.to_string()))?;
        let n = source.chunks(chunk_count(t));
        // A bf16 model's partial sums are reduced in bf16 (`bf16_reduce`), into out16.
        let halves = self.bf16_reduction(call.out);
        let out16 = match halves {
            // SAFETY: written whole by the chunks' reductions, as `out`.
            Some(_) => Some(
                unsafe { self.stream.alloc::<u16>((t * h).max(1)) }
                    .map_err(|e| fail(e.to_string()))?,
            ),
            None => None,
        };
        let mut partials = Vec::with_capacity(n);
        let mut narrowed = Vec::with_capacity(n);
        let mut last_ready = None;
        for c in 0..n {
            let tokens = chunk(t, c, n);
            let y = self
                .chunk_experts(i, call, prefix, bf16, &mut source, tokens.clone())
                .map_err(&fail)?;
            let len = tokens.len() * h;
            let y16 = match &halves {
                Some(k) => {
                    // SAFETY: written whole by the narrowing kernel.
                    let b = unsafe { self.stream.alloc::<u16>(len.max(1)) }
                        .map_err(|e| fail(e.to_string()))?;
                    let rows = dptr(&y, &self.stream) + (tokens.start * h * 4) as u64;
                    self.convert(&k.narrow, (rows, dptr(&b, &self.stream)), len)
                        .map_err(&fail)?;
                    Some(b)
                }
                None => None,
            };
            // The second stream starts this chunk's reduction once its sum is made.
            let ready = event_on(&self.stream).map_err(&fail)?;
            side.wait(&ready).map_err(|e| fail(e.to_string()))?;
            let start = match self.timing_comms() {
                true => Some(event_on(&side).map_err(&fail)?),
                false => None,
            };
            let (send, recv, dtype) = match (&y16, &out16) {
                (Some(y16), Some(out16)) => (
                    dptr(y16, &side),
                    dptr(out16, &side) + (tokens.start * h * 2) as u64,
                    NCCL_BFLOAT16,
                ),
                _ => {
                    let off = (tokens.start * h * 4) as u64;
                    (dptr(&y, &side) + off, dptr(&out, &side) + off, NCCL_FLOAT32)
                }
            };
            // SAFETY: y and out hold T x H floats (y16 the chunk's rows, out16 T x H bf16)
            // and the chunk's rows lie inside them; the second stream waited (`ready`) for
            // their writes and allocations.
            unsafe {
                comms.nccl.all_reduce_sum(
                    send,
                    recv,
                    len,
                    dtype,
                    comm,
                    side.cu_stream() as *mut std::ffi::c_void,
                )
            }
            .map_err(&fail)?;
            if let Some(start) = start {
                let end = event_on(&side).map_err(&fail)?;
                self.record_span(start, end, false);
            }
            partials.push(y);
            narrowed.push(y16);
            last_ready = Some(ready);
        }
        let reduced = event_on(&side).map_err(&fail)?;
        self.stream
            .wait(&reduced)
            .map_err(|e| fail(e.to_string()))?;
        // What the rank's stream waited for after its last chunk: the reductions not hidden.
        if let (true, Some(ready)) = (self.timing_comms(), last_ready) {
            let after = event_on(&self.stream).map_err(&fail)?;
            self.record_waited(ready, after);
        }
        if let (Some(k), Some(out16)) = (&halves, &out16) {
            let (src, dst) = (dptr(out16, &self.stream), dptr(&out, &self.stream));
            self.convert(&k.widen, (src, dst), t * h).map_err(&fail)?;
        }
        // Freed on the rank's stream, after its wait for the reductions that read them.
        drop((partials, narrowed, out16));
        self.put_dev(call.out, out, vec![t, h]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_tokens_in_order() {
        for (t, n) in [(4096, 2), (7, 3), (1, 1), (5, 5)] {
            let all: Vec<usize> = (0..n).flat_map(|c| chunk(t, c, n)).collect();
            assert_eq!(all, (0..t).collect::<Vec<_>>(), "{t} tokens in {n}");
        }
        assert_eq!(chunk_count_by(4096, None), 2);
        assert_eq!(chunk_count_by(16, None), 1);
        assert_eq!(chunk_count_by(16, Some(4)), 4);
        assert_eq!(chunk_count_by(2, Some(8)), 2);
        assert_eq!(chunk_count_by(16, Some(0)), 1);
    }
}
