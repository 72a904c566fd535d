//! Events bound for the spool (a full queue, messages the broker did not
//! confirm): handed to the spool's group commit ([`GroupCommit`], the
//! gateway's too), one fsync for all that arrive together, on a thread of
//! its own.

use super::*;
use crate::spool::GroupCommit;

/// Events on their way to the spool: those the queue could not take (full,
/// or closed at shutdown) and those the broker did not confirm. A task and
/// an fsync per request would make a busy app slower the more it falls
/// behind; the committing thread writes whatever arrived meanwhile with one
/// fsync, and works while a runtime shuts down (a worker's last hand-off).
pub(super) struct Spiller {
    pub(super) committer: GroupCommit,
    pub(super) buffers: Arc<Buffers>,
    pub(super) spilled: AtomicU64,
    /// Hand-offs given to the committer and not yet written (or refused).
    pub(super) pending: Arc<std::sync::atomic::AtomicUsize>,
    lost: Arc<Lost>,
}

/// Events neither published nor spooled (a full or failing spool), logged
/// at most once a second with the count since the last line: a full spool
/// refuses every hand-off, and a line each would drown the log.
#[derive(Default)]
struct Lost {
    since_logged: AtomicU64,
    /// Milliseconds since 1970 of the last line.
    logged_at: AtomicU64,
}

impl Lost {
    fn report(&self, events: usize, error: &crate::spool::SpoolError) {
        self.since_logged.fetch_add(events as u64, Ordering::AcqRel);
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let last = self.logged_at.load(Ordering::Acquire);
        if now.saturating_sub(last) >= 1_000
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let events = self.since_logged.swap(0, Ordering::AcqRel);
            tracing::error!(error = %error, events, "audit events could be neither published nor spooled");
        }
    }
}

impl Spiller {
    pub(super) fn new(spool: Arc<Spool>, buffers: Arc<Buffers>) -> std::io::Result<Self> {
        Ok(Self {
            committer: GroupCommit::start(spool, |_| {})?,
            buffers,
            spilled: AtomicU64::new(0),
            pending: Arc::default(),
            lost: Arc::default(),
        })
    }

    pub(super) fn spill(&self, lines: impl IntoIterator<Item = Lines>) {
        for lines in lines {
            let count = lines.count;
            self.spilled.fetch_add(count as u64, Ordering::Relaxed);
            self.pending.fetch_add(1, Ordering::AcqRel);
            let (buffers, pending) = (self.buffers.clone(), self.pending.clone());
            let lost = self.lost.clone();
            let written = move |body: Vec<u8>, outcome: Result<(), crate::spool::SpoolError>| {
                if let Err(e) = outcome {
                    lost.report(count, &e);
                }
                buffers.give_back(body);
                pending.fetch_sub(1, Ordering::AcqRel);
            };
            if let Err((body, e)) = self.committer.append_then(lines.body, written) {
                self.lost.report(count, &e);
                self.buffers.give_back(body);
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Whether nothing waits for the spool or is being written to it.
    pub(super) fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}
