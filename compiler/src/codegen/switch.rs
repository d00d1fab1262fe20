//! The compile-time switches measurements set: `0` or `1` in an environment variable overrides
//! a measured policy (to time both sides of it); another value is warned about, once per
//! variable, and leaves the policy.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// What `name` says (`0`: false, `1`: true), else `policy()`.
pub(super) fn switch(name: &'static str, policy: impl FnOnce() -> bool) -> bool {
    match std::env::var(name).as_deref().map(str::trim) {
        Ok("0") => false,
        Ok("1") => true,
        Ok("") | Err(_) => policy(),
        Ok(other) => {
            static WARNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
            let warned = WARNED.get_or_init(Default::default);
            // A poisoned set only means another thread panicked mid-insert: warn anyway.
            let first = warned.lock().map_or(true, |mut w| w.insert(name));
            if first {
                tracing::warn!("{name}={other:?} is not 0 or 1: the policy chooses");
            }
            policy()
        }
    }
}
