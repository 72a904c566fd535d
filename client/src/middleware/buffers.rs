//! The pool of line buffers the workers write into and the batching publisher
//! gives back, so a steady load allocates nothing.

use super::*;

/// The bytes reserved for an event's line (a request's event is ~400).
pub(super) const LINE_BYTES: usize = 512;
/// Emptied buffers kept for the workers to fill again.
pub(super) const IDLE_BUFFERS: usize = 256;
/// The largest buffer kept (twice what a hand-off of ordinary events needs).
pub(super) const MAX_KEPT_BUFFER: usize = 2 * HANDOFF * LINE_BYTES;

/// Buffers going round: workers fill them, the publisher empties them and
/// gives them back. Reused, they cost no allocation (a fresh one is faulted
/// in page by page) and mostly no free on another thread than the one that
/// allocated them (which glibc's allocator pays for). One grown past
/// [`MAX_KEPT_BUFFER`] (large metadata) is not kept.
#[derive(Debug, Default)]
pub(super) struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    pub(super) fn take(&self, events: usize) -> Lines {
        let body = self
            .0
            .lock()
            .ok()
            .and_then(|mut idle| idle.pop())
            .unwrap_or_else(|| Vec::with_capacity(events * LINE_BYTES));
        Lines {
            body,
            count: 0,
            action: Action::None,
        }
    }

    pub(super) fn give_back(&self, mut body: Vec<u8>) {
        body.clear();
        if body.capacity() <= MAX_KEPT_BUFFER
            && let Ok(mut idle) = self.0.lock()
            && idle.len() < IDLE_BUFFERS
        {
            idle.push(body);
        }
    }
}
