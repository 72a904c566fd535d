//! Each worker thread's pending buffer: filled one event line at a time,
//! handed to the batching publisher every 64 events or 5 ms, and handed over when
//! the worker stops.

use super::*;

/// Events handed over at once (fewer when a message holds fewer).
pub(super) const HANDOFF: usize = 64;
/// The longest an event waits in its worker before it is handed over.
pub(super) const HANDOFF_DELAY: std::time::Duration = std::time::Duration::from_millis(5);
/// How long a worker's reading of the wall clock is used to date requests by
/// the monotonic clock alone (one clock read a request saved). In that time
/// the two clocks part by at most 50 µs (NTP slews by 500 ppm at most); a
/// step of the wall clock is seen at the next reading.
pub(super) const WALL_CLOCK_REUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What a worker thread wrote and has not handed over yet, and its reading
/// of the wall clock.
pub(super) struct Pending {
    pub(super) lines: std::cell::RefCell<Lines>,
    /// Events a hand-off holds.
    pub(super) handoff: usize,
    /// Whether a task will hand the lines over after [`HANDOFF_DELAY`].
    pub(super) timer: std::cell::Cell<bool>,
    /// An instant and the wall-clock time (µs since 1970) read with it.
    pub(super) wall_clock: std::cell::Cell<(Instant, i64)>,
    pub(super) middleware: AuditMiddleware,
}

impl Pending {
    pub(super) fn new(middleware: AuditMiddleware) -> Self {
        middleware.shared.workers.fetch_add(1, Ordering::AcqRel);
        let handoff = HANDOFF.min(middleware.shared.config.events_per_message.max(1));
        Self {
            lines: std::cell::RefCell::new(middleware.shared.buffers.take(handoff)),
            handoff,
            timer: std::cell::Cell::new(false),
            wall_clock: std::cell::Cell::new((Instant::now(), Utc::now().timestamp_micros())),
            middleware,
        }
    }

    /// The wall-clock time of `at`, from the worker's last reading of the
    /// wall clock when that is recent, else from a new one.
    pub(super) fn wall_time(&self, at: Instant) -> DateTime<Utc> {
        let (read_at, micros) = self.wall_clock.get();
        // `at` may also be a little before the reading (a request that began
        // before another one took it).
        let offset = match at.checked_duration_since(read_at) {
            Some(after) => after.as_micros() as i64,
            None => -(read_at.duration_since(at).as_micros() as i64),
        };
        let micros = if offset.unsigned_abs() < WALL_CLOCK_REUSE.as_micros() as u64 {
            micros + offset
        } else {
            let (now, wall) = (Instant::now(), Utc::now().timestamp_micros());
            self.wall_clock.set((now, wall));
            wall - now.saturating_duration_since(at).as_micros() as i64
        };
        DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now)
    }

    /// Writes the event of one request. Without `may_wait` (a request
    /// dropped, perhaps with its runtime), what is held is handed over now
    /// rather than by a timer task.
    pub(super) fn record(self: &Rc<Self>, observed: &Observed<'_>, may_wait: bool) {
        let shared = &self.middleware.shared;
        let config = &shared.config;
        // UUIDv7: the event's millisecond, then 74 random bits.
        let millis = u64::try_from(observed.occurred_at.timestamp_millis()).unwrap_or(0);
        let event_id =
            uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid();
        let full = {
            let mut lines = self.lines.borrow_mut();
            observed.write_json(config, event_id, &mut lines.body);
            lines.body.push(b'\n');
            lines.count += 1;
            let action = observed.rule.and_then(|i| shared.action_ids[i]);
            lines.action = lines.action.and(Action::One(action));
            lines.count >= self.handoff
        };
        if full || !may_wait {
            self.hand_over();
        } else if !self.timer.replace(true) {
            let pending = self.clone();
            actix_web::rt::spawn(async move {
                tokio::time::sleep(HANDOFF_DELAY).await;
                pending.timer.set(false);
                pending.hand_over();
            });
        }
    }

    pub(super) fn hand_over(&self) {
        let lines = {
            let mut lines = self.lines.borrow_mut();
            if lines.count == 0 {
                return;
            }
            std::mem::replace(
                &mut *lines,
                self.middleware.shared.buffers.take(self.handoff),
            )
        };
        self.middleware.hand_over(lines);
    }
}

/// The worker (and its tasks) let go: what it still holds is handed over.
impl Drop for Pending {
    fn drop(&mut self) {
        let lines = std::mem::take(self.lines.get_mut());
        if lines.count > 0 {
            self.middleware.hand_over(lines);
        }
        self.middleware
            .shared
            .workers
            .fetch_sub(1, Ordering::AcqRel);
    }
}
