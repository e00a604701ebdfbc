//! Lock poisoning, handled once: a panic while a lock was held leaves data
//! that every holder keeps consistent at each step (counters, maps of
//! handles), so the guard is taken as it is rather than panicking again.

use std::sync::PoisonError;

/// `.lock().recover()`, `.read().recover()`, `.write().recover()`.
pub(crate) trait Recover<G> {
    /// The guard, poisoned or not.
    fn recover(self) -> G;
}

impl<G> Recover<G> for Result<G, PoisonError<G>> {
    fn recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}
