//! In-process collectives for the CPU backend: ranks are threads, and each collective call
//! meets its group in a shared slot keyed by (group, the call's sequence number in that group).

use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// One collective in progress: what each member put in, and how many have taken the result.
struct Meeting {
    inputs: Vec<Option<Tensor>>,
    taken: usize,
}

#[derive(Default)]
pub struct Hub {
    meetings: Mutex<HashMap<(Vec<usize>, u64), Meeting>>,
    mailbox: Mutex<HashMap<(usize, usize, u64), Tensor>>,
    /// One condition variable per mutex: collectives wait on `met`, receives on `mail`.
    met: Condvar,
    mail: Condvar,
    /// Set when a rank fails: the others stop waiting for it at once.
    failed: std::sync::atomic::AtomicBool,
}

/// How long a rank waits for its peers before it gives up (a peer that failed never arrives).
const PATIENCE: Duration = Duration::from_secs(120);

impl Hub {
    /// Puts this rank's tensor in, waits for the whole group, returns every member's tensor in
    /// group order.
    pub fn gather_all(
        &self,
        group: &[usize],
        seq: u64,
        me: usize,
        t: Tensor,
    ) -> Result<Vec<Tensor>, String> {
        let key = (group.to_vec(), seq);
        let pos = group
            .iter()
            .position(|&r| r == me)
            .ok_or_else(|| format!("rank {me} is not in group {group:?}"))?;
        let mut m = self.meetings.lock().map_err(|_| "a rank panicked")?;
        m.entry(key.clone())
            .or_insert_with(|| Meeting {
                inputs: vec![None; group.len()],
                taken: 0,
            })
            .inputs[pos] = Some(t);
        self.met.notify_all();
        loop {
            let ready = m
                .get(&key)
                .is_some_and(|mt| mt.inputs.iter().all(Option::is_some));
            if ready {
                break;
            }
            if self.has_failed() {
                return Err(format!(
                    "rank {me}: a peer rank failed; group {group:?} cannot meet"
                ));
            }
            let (guard, timeout) = self
                .met
                .wait_timeout(m, PATIENCE)
                .map_err(|_| "a rank panicked")?;
            m = guard;
            if timeout.timed_out() {
                return Err(format!(
                    "rank {me}: group {group:?} did not meet (a peer failed or never came)"
                ));
            }
        }
        let mt = m.get_mut(&key).ok_or("meeting vanished")?;
        let all: Vec<Tensor> = mt
            .inputs
            .iter()
            .map(|t| t.clone().expect("checked above"))
            .collect();
        mt.taken += 1;
        if mt.taken == group.len() {
            m.remove(&key);
        }
        Ok(all)
    }

    pub fn send(&self, from: usize, to: usize, tag: u64, t: Tensor) -> Result<(), String> {
        self.mailbox
            .lock()
            .map_err(|_| "a rank panicked")?
            .insert((from, to, tag), t);
        self.mail.notify_all();
        Ok(())
    }

    pub fn recv(&self, from: usize, to: usize, tag: u64) -> Result<Tensor, String> {
        let mut m = self.mailbox.lock().map_err(|_| "a rank panicked")?;
        loop {
            if let Some(t) = m.remove(&(from, to, tag)) {
                return Ok(t);
            }
            if self.has_failed() {
                return Err(format!(
                    "rank {to}: a peer rank failed; nothing will come from rank {from}"
                ));
            }
            let (guard, timeout) = self
                .mail
                .wait_timeout(m, PATIENCE)
                .map_err(|_| "a rank panicked")?;
            m = guard;
            if timeout.timed_out() {
                return Err(format!(
                    "rank {to}: nothing arrived from rank {from} (tag {tag})"
                ));
            }
        }
    }

    /// Marks the run failed and wakes every waiting rank, so that none waits for the failed one.
    pub fn fail(&self) {
        self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        {
            let _held = self.meetings.lock();
            self.met.notify_all();
        }
        let _held = self.mailbox.lock();
        self.mail.notify_all();
    }

    fn has_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}
