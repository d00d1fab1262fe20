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
    /// Ranks whose thread has ended: nothing more will come from them.
    exited: Mutex<std::collections::HashSet<usize>>,
}

/// How often a waiting rank looks whether the peer it waits for has ended. A live peer may
/// compute for minutes at real sizes, so a wait has no fixed bound but `PATIENCE`.
const POLL: Duration = Duration::from_secs(1);
/// The last resort against a wait that can never end (peers alive, each waiting on another).
const PATIENCE: Duration = Duration::from_secs(3600);

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
        let started = std::time::Instant::now();
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
            let (guard, _) = self
                .met
                .wait_timeout(m, POLL)
                .map_err(|_| "a rank panicked")?;
            m = guard;
            let missing: Vec<usize> = m.get(&key).map_or_else(Vec::new, |mt| {
                group
                    .iter()
                    .zip(&mt.inputs)
                    .filter(|(_, t)| t.is_none())
                    .map(|(&r, _)| r)
                    .collect()
            });
            // A rank that failed marks the run failed before it exits: say that, not the exit.
            if self.has_failed() {
                return Err(format!(
                    "rank {me}: a peer rank failed; group {group:?} cannot meet"
                ));
            }
            if let Some(r) = missing.iter().find(|&&r| self.has_exited(r)) {
                return Err(format!(
                    "rank {me}: group {group:?} cannot meet: rank {r} ended without joining"
                ));
            }
            if started.elapsed() > PATIENCE {
                return Err(format!(
                    "rank {me}: group {group:?} did not meet in {} s",
                    PATIENCE.as_secs()
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
        let started = std::time::Instant::now();
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
            let (guard, _) = self
                .mail
                .wait_timeout(m, POLL)
                .map_err(|_| "a rank panicked")?;
            m = guard;
            if m.contains_key(&(from, to, tag)) {
                continue;
            }
            if self.has_failed() {
                return Err(format!(
                    "rank {to}: a peer rank failed; nothing will come from rank {from}"
                ));
            }
            if self.has_exited(from) {
                return Err(format!(
                    "rank {to}: rank {from} ended without sending (tag {tag})"
                ));
            }
            if started.elapsed() > PATIENCE {
                return Err(format!(
                    "rank {to}: nothing arrived from rank {from} in {} s (tag {tag})",
                    PATIENCE.as_secs()
                ));
            }
        }
    }

    /// Marks `rank`'s thread as ended (whatever way) and wakes the waiting ranks.
    pub fn exit(&self, rank: usize) {
        if let Ok(mut e) = self.exited.lock() {
            e.insert(rank);
        }
        let _meetings = self.meetings.lock();
        self.met.notify_all();
        drop(_meetings);
        let _mail = self.mailbox.lock();
        self.mail.notify_all();
    }

    fn has_exited(&self, rank: usize) -> bool {
        self.exited.lock().map_or(true, |e| e.contains(&rank))
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
