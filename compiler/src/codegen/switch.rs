//! The compile-time switches measurements set: `0` or `1` in an environment variable (or the
//! two names a switch gives its sides) overrides a measured policy (to time both sides of
//! it); another value is warned about, once per variable, and leaves the policy.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// What `name` says (`0`: false, `1`: true), else `policy()`.
pub(super) fn switch(name: &'static str, policy: impl FnOnce() -> bool) -> bool {
    named_switch(name, ("0", "1"), policy)
}

/// What `name` says (`off`: false, `on`: true), else `policy()`.
pub(super) fn named_switch(
    name: &'static str,
    (off, on): (&str, &str),
    policy: impl FnOnce() -> bool,
) -> bool {
    match std::env::var(name).as_deref().map(str::trim) {
        Ok(v) if v == off => false,
        Ok(v) if v == on => true,
        Ok("") | Err(_) => policy(),
        Ok(other) => {
            warn_once(name, other, &format!("{off} or {on}"));
            policy()
        }
    }
}

/// What `name` says where it is one of `allowed` (a count), else `policy`.
pub(super) fn count_switch(name: &'static str, allowed: &[usize], policy: usize) -> usize {
    match std::env::var(name).as_deref().map(str::trim) {
        Ok("") | Err(_) => policy,
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if allowed.contains(&n) => n,
            _ => {
                let names: Vec<String> = allowed.iter().map(usize::to_string).collect();
                warn_once(name, v, &names.join(", "));
                policy
            }
        },
    }
}

/// Warns once per variable that `name`'s value `other` is none of `expected`.
fn warn_once(name: &'static str, other: &str, expected: &str) {
    static WARNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let warned = WARNED.get_or_init(Default::default);
    // A poisoned set only means another thread panicked mid-insert: warn anyway.
    let first = warned.lock().map_or(true, |mut w| w.insert(name));
    if first {
        tracing::warn!("{name}={other:?} is not {expected}: the policy chooses");
    }
}
