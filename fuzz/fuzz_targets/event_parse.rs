//! Event parsing never panics; an accepted event's own JSON parses back to
//! the same event and the same row digest (what the writer seals).
#![no_main]

use auditline_event::{AuditEvent, event::parse_ndjson, seal};
use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    if let Ok(event) = AuditEvent::parse_at(data, now) {
        let json = event.to_json();
        let again = AuditEvent::parse_at(&json, now).expect("an accepted event's JSON parses");
        assert_eq!(event, again, "the JSON round trip changes the event");
        assert_eq!(
            seal::row_digest(&event, now, Default::default()),
            seal::row_digest(&again, now, Default::default())
        );
    }
    for line in parse_ndjson(data, now) {
        let _ = line;
    }
});
