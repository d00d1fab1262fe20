//! A rank's NCCL communicators: the world one (point-to-point sends between pipeline stages) and
//! one per process group its collectives name (tensor-parallel, expert, data-parallel groups),
//! split from the world in an order every rank agrees on.

use super::nccl::{nccl, CommHandle, Nccl};
use crate::distributed::Dist;
use crate::program::{Op, Program};
use std::collections::{BTreeSet, HashMap};

pub struct Comms {
    pub nccl: &'static Nccl,
    pub world: CommHandle,
    pub rank: usize,
    groups: HashMap<Vec<usize>, CommHandle>,
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
        let id = dist.rendezvous(|| nccl.unique_id())?;
        let world = nccl.init_rank(dist.world, id, dist.rank)?;
        let mut comms = Comms {
            nccl,
            world,
            rank: dist.rank,
            groups: HashMap::new(),
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
}

impl Drop for Comms {
    fn drop(&mut self) {
        // SAFETY: these communicators were made by `Comms::new`, each is destroyed once, here.
        for (_, c) in self.groups.drain() {
            unsafe { self.nccl.destroy(c) };
        }
        unsafe { self.nccl.destroy(self.world) };
    }
}
