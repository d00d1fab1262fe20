//! The run-time allocation limit: an op whose output size comes from data (Expand, Tile,
//! OneHot, ConstantOfShape, Range) checks the size before it allocates, with checked
//! arithmetic, so a hostile or mistaken value is an error naming the op and the size, not an
//! abort on a failed allocation or a silently wrapped count.

use super::KResult;

/// The limit in bytes: `PPMOE_ALLOC_LIMIT_MIB` where set, else the machine's memory. Read
/// once per process: these ops run in every forward, and /proc/meminfo need not be.
pub fn limit_bytes() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(read_limit)
}

fn read_limit() -> u64 {
    if let Some(mib) = std::env::var("PPMOE_ALLOC_LIMIT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return mib.saturating_mul(1 << 20);
    }
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    });
    total_kib.map_or(64 << 30, |k| k.saturating_mul(1024))
}

/// The element count of `shape` for op `op` with elements of `elem` bytes, when its bytes fit
/// the limit.
pub fn sized(op: &str, shape: &[usize], elem: usize) -> KResult<usize> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let bytes = n.and_then(|n| n.checked_mul(elem));
    let limit = limit_bytes();
    match (n, bytes) {
        (Some(n), Some(b)) if b as u64 <= limit => Ok(n),
        _ => Err(format!(
            "{op} would make a tensor of shape {shape:?} ({}), over the run-time allocation limit of {limit} bytes (the machine's memory; PPMOE_ALLOC_LIMIT_MIB sets another)",
            bytes.map_or("more bytes than this machine can count".into(), |b| format!("{b} bytes"))
        )),
    }
}
