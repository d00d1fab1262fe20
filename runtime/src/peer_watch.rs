//! Ranks that end without finishing. Each process of a multi-process run keeps its rendezvous
//! connection (rank 0 one to every rank, every other rank one to rank 0) and watches it from a
//! thread. A rank that finishes its part says so (one byte) before it closes; a connection that
//! closes without it means that rank was killed or failed, and the watching rank stops at once
//! with an error naming it, instead of waiting in NCCL for a peer that will never come (an NCCL
//! collective has no timeout, and a killed peer's kernels never arrive). Rank 0 stopping closes
//! its own links, so the loss of any rank reaches every rank within milliseconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The byte a rank sends on each link when its part of the run is done.
const FINISHED: u8 = 0xF1;

/// What a watcher calls when a peer is lost: the message names both ranks.
pub type OnLoss = Arc<dyn Fn(String) + Send + Sync>;

/// This rank's links to its peers, from the rendezvous.
pub struct PeerLinks {
    rank: usize,
    links: Vec<(usize, TcpStream)>,
    /// Set when this rank has finished: a peer closing after that is no loss.
    finished: Arc<AtomicBool>,
}

impl PeerLinks {
    pub(crate) fn new(rank: usize, links: Vec<(usize, TcpStream)>) -> PeerLinks {
        PeerLinks {
            rank,
            links,
            finished: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The peers this rank is linked to.
    pub fn peers(&self) -> Vec<usize> {
        self.links.iter().map(|(p, _)| *p).collect()
    }

    /// Watches every link from its own thread; `on_loss` is called (once per lost link) when a
    /// peer's end closes before it said it finished.
    pub fn watch(&self, on_loss: OnLoss) -> Result<(), String> {
        for (peer, link) in &self.links {
            let (me, peer) = (self.rank, *peer);
            let mut link = link
                .try_clone()
                .and_then(|l| l.set_read_timeout(None).map(|_| l))
                .map_err(|e| format!("rank {me}: cannot watch the link to rank {peer}: {e}"))?;
            let (finished, on_loss) = (self.finished.clone(), on_loss.clone());
            std::thread::Builder::new()
                .name(format!("watch-rank-{peer}"))
                .spawn(move || {
                    let mut byte = [0u8; 1];
                    let said_finished =
                        matches!(link.read(&mut byte), Ok(1) if byte[0] == FINISHED);
                    if !said_finished && !finished.load(Ordering::SeqCst) {
                        on_loss(loss_message(me, peer));
                    }
                })
                .map_err(|e| format!("rank {me}: cannot start the watch of rank {peer}: {e}"))?;
        }
        Ok(())
    }

    /// Tells every linked peer that this rank's part is done (all its collectives completed).
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        for (_, link) in &self.links {
            let mut link: &TcpStream = link;
            // A peer already gone needs no word.
            let _ = link.write_all(&[FINISHED]);
        }
    }
}

fn loss_message(me: usize, peer: usize) -> String {
    let why = if peer == 0 && me != 0 {
        "it was killed or failed, or stopped because another rank did"
    } else {
        "it was killed or failed"
    };
    format!("rank {me}: rank {peer} ended without finishing its part ({why}); stopping rank {me} rather than wait for it in NCCL")
}

/// The loss handler of a real run: the message on stderr, and the process ends at once with
/// status 1. `_exit` skips exit handlers, which could wait on the very device work that will
/// never complete.
pub fn stop_process() -> OnLoss {
    Arc::new(|message| {
        eprintln!("error: {message}");
        // SAFETY: _exit ends the process; it has no preconditions.
        unsafe { libc::_exit(1) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Rank 0 and rank 1 of a world of two, linked as the rendezvous links them.
    fn linked() -> (PeerLinks, PeerLinks) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let one = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (zero, _) = listener.accept().unwrap();
        (
            PeerLinks::new(0, vec![(1, zero)]),
            PeerLinks::new(1, vec![(0, one)]),
        )
    }

    fn recorder() -> (OnLoss, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        (Arc::new(move |m| tx.lock().unwrap().send(m).unwrap()), rx)
    }

    #[test]
    fn a_peer_closing_without_finishing_is_named_at_once() {
        let (zero, one) = linked();
        let (on_loss, lost) = recorder();
        zero.watch(on_loss).unwrap();
        // Rank 1's process ends (killed or failed): its socket closes, no word said.
        drop(one);
        let m = lost.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            m.starts_with("rank 0: rank 1 ended without finishing"),
            "{m}"
        );
        // Rank 0 lost: rank 1 is told that it may have stopped because of another.
        let (zero, one) = linked();
        let (on_loss, lost) = recorder();
        one.watch(on_loss).unwrap();
        drop(zero);
        let m = lost.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            m.contains("rank 1: rank 0 ended") && m.contains("another rank"),
            "{m}"
        );
    }

    #[test]
    fn a_peer_that_finished_is_no_loss() {
        let (zero, one) = linked();
        let (on_loss, lost) = recorder();
        zero.watch(on_loss.clone()).unwrap();
        one.watch(on_loss).unwrap();
        one.finish();
        drop(one);
        // Rank 0 finishes later; neither side reports a loss.
        zero.finish();
        drop(zero);
        assert!(lost.recv_timeout(Duration::from_millis(500)).is_err());
    }
}
