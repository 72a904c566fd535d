//! What the batching publisher ([`crate::batcher`]) does with the workers'
//! hand-offs: routes a message by the action types of its events, gives each
//! hand-off's buffer back to the workers once it is compressed, and spools
//! the events of a message the broker did not confirm.

use super::*;
use crate::batcher::{BatchSettings, MAX_BATCH, Sink};
use crate::publisher::{Prepared, PublishError};

pub(super) struct Handoffs {
    pub(super) config: Arc<AuditConfig>,
    pub(super) spiller: Arc<Spiller>,
}

impl Handoffs {
    /// How the batcher gathers the middleware's hand-offs.
    pub(super) fn settings(config: &AuditConfig) -> BatchSettings {
        BatchSettings {
            linger: config.linger,
            events_per_message: config.events_per_message,
            queue_parts: (config.queue_capacity / HANDOFF).max(1),
            parts_per_take: MAX_BATCH / HANDOFF,
        }
    }
}

impl Sink for Handoffs {
    type Part = Lines;
    type Ticket = ();

    fn events(lines: &Lines) -> usize {
        lines.count
    }

    fn body(lines: &Lines) -> &[u8] {
        &lines.body
    }

    fn routing_key(&self, parts: &[Lines]) -> String {
        routing_key(parts, &self.config)
    }

    fn taken(&self, lines: Lines) {
        self.spiller.buffers.give_back(lines.body);
    }

    /// Should the broker refuse them, or shutdown's grace run out before it
    /// confirms, the messages' events go to the spool.
    ///
    /// New events do not wait behind spooled ones: the spool is replayed
    /// alongside. Sending everything through the spool while it is not
    /// empty would make it the path of every event under load (an fsync, a
    /// read and a re-parse each), and the app could never catch up again.
    /// Order in the queue carries no meaning: every event has its
    /// `occurred_at`.
    fn settled(&self, prepared: &Prepared, _: Vec<()>, outcome: Result<(), PublishError>) {
        if outcome.is_ok() {
            return;
        }
        self.spiller
            .spill(prepared.ndjson().into_iter().filter_map(|body| match body {
                Ok(body) => Some(Lines {
                    count: body.iter().filter(|b| **b == b'\n').count(),
                    body,
                    action: Action::None,
                }),
                Err(e) => {
                    // Compressed here a moment ago: not expected.
                    tracing::error!(error = %e, "audit events could not be decoded for the spool");
                    None
                }
            }));
    }
}
