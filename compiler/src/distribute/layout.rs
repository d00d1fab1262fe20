//! Lays the stage programs out on the grid: one program per rank, collective groups and
//! pipeline peers turned from tp indices and stage numbers into ranks, weights files named.

use super::shard_moe::RankProgram;
use super::Grid;
use ppmoe_runtime::program::Op;

/// `stages[t][s]`: tp index t's program for stage s. Returns one program per rank, in rank order.
pub fn layout(grid: Grid, stages: &[Vec<RankProgram>]) -> Vec<RankProgram> {
    let mut out = Vec::with_capacity(grid.size());
    for rank in 0..grid.size() {
        let [d, s, t] = grid.coords(rank);
        let mut rp = stages[t][s].clone();
        rp.program.rank = rank;
        rp.program.coords = [d, s, t];
        rp.program.weights_file = format!("rank{rank}.safetensors");
        for ins in &mut rp.program.instructions {
            match &mut ins.op {
                Op::AllReduce { group }
                | Op::AllGather { group, .. }
                | Op::AllToAll { group, .. } => {
                    *group = group.iter().map(|&ti| grid.rank(d, s, ti)).collect();
                }
                Op::Send { peer, .. } | Op::Recv { peer, .. } => *peer = grid.rank(d, *peer, t),
                _ => {}
            }
        }
        out.push(rp);
    }
    out
}
