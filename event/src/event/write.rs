//! The event as JSON, written by hand from borrowed fields ([`EventView`]):
//! no owned event, no intermediate `Value`, RFC 3339 and IP addresses
//! written digit by digit. 3.7x serde_json's time on the same fields, with
//! byte-identical output (BENCHMARKS.md, `json_cost`).

use super::*;

/// An event's fields borrowed from wherever they are (an [`AuditEvent`], or
/// the request the audit middleware is looking at), to be written as JSON
/// without building an owned event first. It is written as it is: whoever
/// builds one keeps to the event's rules.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub service: &'a str,
    pub session_id: &'a str,
    pub user_id: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub action_type: &'a str,
    pub endpoint: &'a str,
    pub route: Option<&'a str>,
    pub http_method: &'a str,
    pub request_size: Option<u64>,
    pub response_size: Option<u64>,
    pub response_time_ms: Option<f64>,
    pub status_code: Option<u16>,
    pub success: bool,
    pub resource_usage: Option<&'a Map<String, Value>>,
    pub metadata: Option<&'a Map<String, Value>>,
}

impl EventView<'_> {
    /// Appends the event's JSON, byte for byte what `serde_json` writes for
    /// the [`AuditEvent`] (a test holds them equal), several times as fast:
    /// keys are literals, strings needing no escape are copied as they are,
    /// and times, addresses and integers skip `core::fmt`. Publishers (and
    /// the audit middleware, once a request) serialize every event, so this
    /// is their largest cost an event.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use json_text as text;
        fn optional_text(out: &mut Vec<u8>, s: Option<&str>) {
            match s {
                Some(s) => text(out, s),
                None => out.extend_from_slice(b"null"),
            }
        }
        fn optional<T: itoa::Integer>(out: &mut Vec<u8>, v: Option<T>) {
            match v {
                Some(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        }
        fn map(out: &mut Vec<u8>, m: Option<&Map<String, Value>>) {
            match m {
                Some(m) => {
                    let _ = serde_json::to_writer(&mut *out, m);
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.extend_from_slice(b"{\"event_id\":\"");
        out.extend_from_slice(self.event_id.hyphenated().encode_lower(&mut id).as_bytes());
        out.extend_from_slice(b"\",\"occurred_at\":\"");
        write_rfc3339(out, self.occurred_at);
        out.extend_from_slice(b"\",\"service\":");
        text(out, self.service);
        out.extend_from_slice(b",\"session_id\":");
        text(out, self.session_id);
        out.extend_from_slice(b",\"user_id\":");
        optional_text(out, self.user_id);
        out.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(ip) => {
                out.push(b'"');
                write_ip(out, ip);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"action_type\":");
        text(out, self.action_type);
        out.extend_from_slice(b",\"endpoint\":");
        text(out, self.endpoint);
        out.extend_from_slice(b",\"route\":");
        optional_text(out, self.route);
        out.extend_from_slice(b",\"http_method\":");
        text(out, self.http_method);
        out.extend_from_slice(b",\"request_size\":");
        optional(out, self.request_size);
        out.extend_from_slice(b",\"response_size\":");
        optional(out, self.response_size);
        out.extend_from_slice(b",\"response_time_ms\":");
        match self.response_time_ms {
            // serde_json's own float formatting (e.g. `158.0`), and `null`
            // for what JSON cannot hold.
            Some(ms) => {
                let _ = serde_json::to_writer(&mut *out, &ms);
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"status_code\":");
        optional(out, self.status_code);
        out.extend_from_slice(if self.success {
            b",\"success\":true,\"resource_usage\":"
        } else {
            b",\"success\":false,\"resource_usage\":"
        });
        map(out, self.resource_usage);
        out.extend_from_slice(b",\"metadata\":");
        map(out, self.metadata);
        out.push(b'}');
    }
}

/// Appends [`rfc3339_text`] of `at` (without quotes) with neither
/// `core::fmt` nor a `String`: years 0 to 9999, the fraction in 0, 3, 6 or 9
/// digits as needed; anything else (a leap second, a far year) via chrono.
pub(super) fn write_rfc3339(out: &mut Vec<u8>, at: DateTime<Utc>) {
    let (secs, nanos) = (at.timestamp(), at.timestamp_subsec_nanos());
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.extend_from_slice(rfc3339_text(at).as_bytes());
        return;
    }
    /// `value`'s last `N` decimal digits (constant divisors: no `div`).
    fn digits<const N: usize>(out: &mut Vec<u8>, mut value: u64) {
        let mut text = [b'0'; N];
        for digit in text.iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
        out.extend_from_slice(&text);
    }
    let second_of_day = secs.rem_euclid(86_400) as u64;
    digits::<4>(out, year as u64);
    out.push(b'-');
    digits::<2>(out, month);
    out.push(b'-');
    digits::<2>(out, day);
    out.push(b'T');
    digits::<2>(out, second_of_day / 3600);
    out.push(b':');
    digits::<2>(out, second_of_day / 60 % 60);
    out.push(b':');
    digits::<2>(out, second_of_day % 60);
    let nanos = u64::from(nanos);
    if nanos != 0 {
        out.push(b'.');
        if nanos % 1_000_000 == 0 {
            digits::<3>(out, nanos / 1_000_000);
        } else if nanos % 1_000 == 0 {
            digits::<6>(out, nanos / 1_000);
        } else {
            digits::<9>(out, nanos);
        }
    }
    out.push(b'Z');
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u64;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u64;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// Appends an address as its `Display` writes it (IPv4 by hand, the common
/// case; IPv6 through `core::fmt`).
pub(super) fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `s` as a JSON string: copied as it is when nothing needs escaping.
pub(super) fn json_text(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}
