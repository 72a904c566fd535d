//! The spill thread: events bound for the spool (a full queue, messages the
//! broker did not confirm) written by one thread, one fsync for all that
//! arrived meanwhile.

use super::*;

/// Events waiting for the spool, and whether a thread is writing them.
#[derive(Default)]
pub(super) struct Overflow {
    pub(super) waiting: Vec<Lines>,
    pub(super) flushing: bool,
}

/// Events on their way to the spool: those the queue could not take (full,
/// or closed at shutdown) and those the broker did not confirm. One thread at
/// a time writes them, one fsync for all that arrived meanwhile: a task and
/// an fsync per request would make a busy app slower the more it falls
/// behind.
pub(super) struct Spiller {
    pub(super) spool: Arc<Spool>,
    pub(super) buffers: Arc<Buffers>,
    pub(super) spilled: AtomicU64,
    pub(super) overflow: std::sync::Mutex<Overflow>,
}

impl Spiller {
    pub(super) fn spill(self: &Arc<Self>, lines: impl IntoIterator<Item = Lines>) {
        let start_writer = {
            let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            for lines in lines {
                self.spilled
                    .fetch_add(lines.count as u64, Ordering::Relaxed);
                overflow.waiting.push(lines);
            }
            !overflow.waiting.is_empty() && !std::mem::replace(&mut overflow.flushing, true)
        };
        if start_writer {
            // A thread of its own, not a runtime's blocking pool: a runtime
            // shutting down (a worker's last hand-off) may never run a task
            // given to it, and `flushing` would stay set. Spills are rare (a
            // full queue, an absent broker, shutdown); should no thread
            // start, the write happens right here.
            let on_thread = self.clone();
            let started = std::thread::Builder::new()
                .name("audit-spill".into())
                .spawn(move || on_thread.write());
            if started.is_err() {
                self.write();
            }
        }
    }

    /// Whether nothing waits for the spool or is being written to it.
    pub(super) fn idle(&self) -> bool {
        let overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        !overflow.flushing && overflow.waiting.is_empty()
    }

    /// Writes the spilled events to the spool until none wait, then clears
    /// `flushing`.
    pub(super) fn write(&self) {
        /// Clears `flushing` should the writer panic, so that the next spill
        /// starts another and shutdown does not wait for this one.
        struct Guard<'a>(&'a Spiller);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut overflow = self.0.overflow.lock().unwrap_or_else(|p| p.into_inner());
                    overflow.flushing = false;
                }
            }
        }
        let _guard = Guard(self);
        loop {
            let waiting = {
                let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
                if overflow.waiting.is_empty() {
                    overflow.flushing = false;
                    return;
                }
                std::mem::take(&mut overflow.waiting)
            };
            let parts: Vec<&[u8]> = waiting.iter().map(|l| l.body.as_slice()).collect();
            if let Err(e) = self.spool.append_ndjson(&parts) {
                let events: usize = waiting.iter().map(|l| l.count).sum();
                tracing::error!(error = %e, events, "audit events could be neither published nor spooled");
            }
            for lines in waiting {
                self.buffers.give_back(lines.body);
            }
        }
    }
}
