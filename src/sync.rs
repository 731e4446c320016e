//! The atomics the memory store's rate-limit cell is written against:
//! std's (and portable-atomic's 128-bit word) in every build, loom's under
//! `--cfg battlement_loom`, where the models beside the cell and the lease table
//! explore every interleaving of their threads (bounded by
//! `LOOM_MAX_PREEMPTIONS`):
//!
//! ```text
//! RUSTFLAGS="--cfg battlement_loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --lib loom
//! ```
//!
//! loom has no 128-bit atomic: under it, the 128-bit word is a loom mutex
//! around a `u128`, so each of its operations is one indivisible step at
//! which the model may switch threads (the orderings on that word are not
//! weakened in the model; those on the 64-bit words are).

#[cfg(not(battlement_loom))]
pub(crate) use portable_atomic::AtomicU128;
#[cfg(not(battlement_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(battlement_loom))]
pub(crate) use std::thread::yield_now;

#[cfg(battlement_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(battlement_loom)]
pub(crate) use loom::thread::yield_now;
#[cfg(battlement_loom)]
pub(crate) use modelled::AtomicU128;

#[cfg(battlement_loom)]
mod modelled {
    use super::Ordering;

    /// A 128-bit atomic for loom: each operation one step of the model.
    #[derive(Debug, Default)]
    pub(crate) struct AtomicU128(loom::sync::Mutex<u128>);

    impl AtomicU128 {
        fn word(&self) -> loom::sync::MutexGuard<'_, u128> {
            // A model thread never panics while it holds the word.
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(crate) fn load(&self, _: Ordering) -> u128 {
            *self.word()
        }

        pub(crate) fn store(&self, value: u128, _: Ordering) {
            *self.word() = value;
        }

        pub(crate) fn compare_exchange(
            &self,
            current: u128,
            new: u128,
            _: Ordering,
            _: Ordering,
        ) -> Result<u128, u128> {
            let mut word = self.word();
            if *word == current {
                *word = new;
                Ok(current)
            } else {
                Err(*word)
            }
        }
    }
}
