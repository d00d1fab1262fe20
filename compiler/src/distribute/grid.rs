//! The device grid: dp replicas x pp pipeline stages x tp tensor-parallel ranks. Rank numbers
//! run tp fastest: rank = (d * pp + s) * tp + t.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub dp: usize,
    pub pp: usize,
    pub tp: usize,
}

impl Grid {
    /// One rank: no parallelism (the grid when none is given).
    pub const ONE: Grid = Grid {
        dp: 1,
        pp: 1,
        tp: 1,
    };

    pub fn size(&self) -> usize {
        self.dp * self.pp * self.tp
    }

    pub fn rank(&self, d: usize, s: usize, t: usize) -> usize {
        (d * self.pp + s) * self.tp + t
    }

    pub fn coords(&self, rank: usize) -> [usize; 3] {
        [
            rank / (self.pp * self.tp),
            (rank / self.tp) % self.pp,
            rank % self.tp,
        ]
    }

    /// The ranks of rank's tensor-parallel group, in tp order.
    pub fn tp_group(&self, rank: usize) -> Vec<usize> {
        let [d, s, _] = self.coords(rank);
        (0..self.tp).map(|t| self.rank(d, s, t)).collect()
    }

    /// The `shard.grid` declaration of the `sharded` and `pipelined` stages.
    pub fn mlir(&self) -> String {
        format!(
            "shard.grid @grid(shape = {}x{}x{})",
            self.dp, self.pp, self.tp
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Grid;

    #[test]
    fn grid_ranks_run_tp_fastest_and_groups_stay_in_their_stage() {
        let g = Grid {
            dp: 2,
            pp: 2,
            tp: 4,
        };
        assert_eq!(g.size(), 16);
        assert_eq!(g.coords(g.rank(1, 0, 3)), [1, 0, 3]);
        assert_eq!(g.tp_group(6), vec![4, 5, 6, 7]);
        assert_eq!(g.tp_group(9), vec![8, 9, 10, 11]);
    }
}
