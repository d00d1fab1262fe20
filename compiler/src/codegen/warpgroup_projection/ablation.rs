//! `PPMOE_ABLATE` at compile time, a measurement aid: parts of the warp-specialised
//! projections left out, so that timing them on a GPU shows what each part costs (the outputs
//! are then wrong, and the compiler warns). A comma-separated list of:
//! - `rows`: the listed rows not copied (the producer still arrives for them);
//! - `weights`: no tensor copies (lane 0 arrives without expecting bytes);
//! - `mma`: no wgmmas (the warpgroups still wait for and release every stage);
//! - `store`: no results stored (behind a test the compiler cannot decide, so the
//!   multiplications stay);
//! - `epilogue`: no epilogue at all (no activation, staging or store after a tile's last
//!   wait): with the other four, what is left is the tile walk and the stages' barriers alone.

/// The parts left out.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub(super) struct Ablation {
    pub rows: bool,
    pub weights: bool,
    pub mma: bool,
    pub store: bool,
    pub epilogue: bool,
}

impl Ablation {
    /// What `PPMOE_ABLATE` names (the warning lists what is left out, and the words it does
    /// not know, which leave nothing out).
    pub(super) fn from_env() -> Ablation {
        Self::parse(&std::env::var("PPMOE_ABLATE").unwrap_or_default())
    }

    fn parse(list: &str) -> Ablation {
        const PARTS: [&str; 5] = ["rows", "weights", "mma", "store", "epilogue"];
        let words = || list.split(',').map(str::trim).filter(|w| !w.is_empty());
        let has = |part: &str| words().any(|w| w == part);
        let a = Ablation {
            rows: has("rows"),
            weights: has("weights"),
            mma: has("mma"),
            store: has("store"),
            epilogue: has("epilogue"),
        };
        let unknown: Vec<&str> = words().filter(|w| !PARTS.contains(w)).collect();
        static WARNED: std::sync::Once = std::sync::Once::new();
        if a != Ablation::default() || !unknown.is_empty() {
            WARNED.call_once(|| {
                tracing::warn!("PPMOE_ABLATE: the warpgroup projections leave out {a:?}: their outputs are wrong (a measurement aid); not parts it knows ({}): {unknown:?}", PARTS.join(", "));
            });
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::Ablation;

    #[test]
    fn the_list_names_the_parts_left_out() {
        assert_eq!(Ablation::parse(""), Ablation::default());
        let a = Ablation::parse("rows, store");
        assert!(a.rows && a.store && !a.weights && !a.mma);
        let b = Ablation::parse("weights,mma,bogus");
        assert!(b.weights && b.mma && !b.rows && !b.store && !b.epilogue);
        assert!(Ablation::parse("epilogue").epilogue);
    }
}
