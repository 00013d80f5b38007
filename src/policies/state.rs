//! Long-lived policy state that outlives a snapshot: counters of `rate_limit` and
//! `concurrency_limit`, found again by a stable identity (the route or group, the
//! policy's place and its spec) when a reload rebuilds the policy. State nobody holds
//! any more (its policy left the configuration) is forgotten.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

type Registry = Mutex<HashMap<String, Weak<dyn Any + Send + Sync>>>;

/// The live state of `identity`, or a new one made by `make`. Runs at build time only.
pub fn shared<T: Any + Send + Sync>(identity: String, make: impl FnOnce() -> T) -> Arc<T> {
    static R: OnceLock<Registry> = OnceLock::new();
    let mut map = R
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(live) = map
        .get(&identity)
        .and_then(Weak::upgrade)
        .and_then(|a| a.downcast::<T>().ok())
    {
        return live;
    }
    let state = Arc::new(make());
    let erased: Arc<dyn Any + Send + Sync> = state.clone();
    map.insert(identity, Arc::downgrade(&erased));
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_found_while_held_and_forgotten_after() {
        let a = shared("t:a".into(), || 1u32);
        let again = shared("t:a".into(), || 2u32);
        assert!(Arc::ptr_eq(&a, &again));
        drop((a, again));
        assert_eq!(*shared("t:a".into(), || 3u32), 3);
        // Another type under the same identity is another state.
        assert_eq!(*shared("t:b".into(), || 4u64), 4);
    }
}
