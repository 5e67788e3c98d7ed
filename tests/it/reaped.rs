//! Child processes that die with their test: a test that panics must not leave a `weft serve` running, which
//! would keep the suite's output pipe open and hang it.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Reaped(pub Child);

impl Deref for Reaped {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
