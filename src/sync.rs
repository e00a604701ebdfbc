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

/// Runs `work`, which may hold this thread for a long time (a plan or a
/// pass over every session of a million-session table), after telling a
/// multi-threaded tokio runtime, which moves the tasks queued on this
/// worker to another thread meanwhile: a leader's worker busy for half a
/// second kept its heartbeats waiting, and a follower campaigned. On any
/// other runtime (a test's single thread) it just runs `work`.
pub(crate) fn heavy<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
