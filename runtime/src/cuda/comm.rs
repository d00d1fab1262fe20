//! A rank's NCCL communicators: the world one (point-to-point sends between pipeline stages) and
//! one per process group its collectives name (tensor-parallel, expert, data-parallel groups),
//! split from the world in an order every rank agrees on.

use super::nccl::{nccl, CommHandle, Nccl};
use crate::distributed::Dist;
use crate::peer_watch::{self, PeerLinks};
use crate::program::{Op, Program};
use std::collections::{BTreeSet, HashMap};

pub struct Comms {
    pub nccl: &'static Nccl,
    pub world: CommHandle,
    pub rank: usize,
    pub world_size: usize,
    groups: HashMap<Vec<usize>, CommHandle>,
    /// The rendezvous links, watched: a peer that ends without finishing stops this process.
    links: Option<PeerLinks>,
    finished: bool,
}

/// The groups the collectives of all programs use, larger than one rank, in a fixed order.
fn groups_of(programs: &[Program]) -> BTreeSet<Vec<usize>> {
    programs
        .iter()
        .flat_map(|p| &p.instructions)
        .filter_map(|ins| match &ins.op {
            Op::AllReduce { group } | Op::AllGather { group, .. } | Op::AllToAll { group, .. } => {
                Some(group.clone())
            }
            _ => None,
        })
        .filter(|g| g.len() > 1)
        .collect()
}

impl Comms {
    /// Meets the other ranks (rank 0's NCCL id over TCP), makes the world communicator, then
    /// every group's. Every rank reads the whole manifest, so all make the same splits in the same
    /// order, as NCCL requires of a collective call.
    pub fn connect(dist: &Dist, programs: &[Program]) -> Result<Comms, String> {
        let nccl = nccl()?;
        let (id, links) = dist.rendezvous(|| nccl.unique_id())?;
        // Watched from here on: NCCL's own setup waits for every rank too.
        links.watch(peer_watch::stop_process())?;
        let world = nccl.init_rank(dist.world, id, dist.rank)?;
        let mut comms = Comms {
            nccl,
            world,
            rank: dist.rank,
            world_size: dist.world,
            groups: HashMap::new(),
            links: Some(links),
            finished: false,
        };
        for g in groups_of(programs) {
            // The rank's place in the group is its rank in the new communicator.
            let place = g.iter().position(|&r| r == dist.rank);
            // SAFETY: `world` was made above and is live until `Comms` drops.
            if let Some(c) = unsafe { nccl.split(world, place)? } {
                comms.groups.insert(g, c);
            }
        }
        Ok(comms)
    }

    /// The communicator of `group` (this rank is a member).
    pub fn group(&self, group: &[usize]) -> Result<CommHandle, String> {
        self.groups.get(group).copied().ok_or_else(|| {
            format!(
                "rank {} has no communicator for group {group:?} (it is not a member)",
                self.rank
            )
        })
    }

    /// Every rank's `values` (the same count on each), in rank order, over the world
    /// communicator: what the ranks of a timed run tell each other. Synchronises `stream`.
    pub fn gather_world(
        &self,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
        values: &[f32],
    ) -> Result<Vec<f32>, String> {
        self.gather(stream, self.world, self.world_size, values)
    }

    /// As `gather_world`, over the communicator `comm` of `size` ranks.
    pub fn gather(
        &self,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
        comm: CommHandle,
        size: usize,
        values: &[f32],
    ) -> Result<Vec<f32>, String> {
        let world = size;
        let send = stream.clone_htod(values).map_err(|e| e.to_string())?;
        let recv = stream
            .alloc_zeros::<f32>((values.len() * world).max(1))
            .map_err(|e| e.to_string())?;
        let raw = stream.cu_stream() as *mut std::ffi::c_void;
        // SAFETY: `send` holds values.len() floats and `recv` that many per rank, both live
        // until the copy back below, which waits for the gather.
        unsafe {
            self.nccl.all_gather(
                super::dptr(&send, stream),
                super::dptr(&recv, stream),
                values.len(),
                super::nccl::NCCL_FLOAT32,
                comm,
                raw,
            )?
        };
        let mut all = stream.clone_dtoh(&recv).map_err(|e| e.to_string())?;
        all.truncate(values.len() * world);
        Ok(all)
    }

    /// This rank's part is done (its stream synchronised): the peers are told, and the
    /// communicators are destroyed in order rather than aborted.
    pub fn finish(&mut self) {
        if let Some(l) = &self.links {
            l.finish();
        }
        self.finished = true;
    }
}

impl Drop for Comms {
    fn drop(&mut self) {
        // Unfinished (this rank failed): the links close first, so that the peers stop now,
        // then the communicators are aborted, since destroying them would wait for work that
        // the peers will never do.
        drop(self.links.take());
        let end = |c| {
            // SAFETY: these communicators were made by `Comms::connect`, each ended once, here.
            unsafe {
                if self.finished {
                    self.nccl.destroy(c)
                } else {
                    self.nccl.abort(c)
                }
            }
        };
        for (_, c) in self.groups.drain() {
            end(c);
        }
        end(self.world);
    }
}
