//! Credentials never reach an audit event, a log line or an error message.
//!
//! Two rules, applied by every place that records what a client sent (the
//! `AuditMiddleware`'s `endpoint`, the admin service's `metadata.query`,
//! error bodies):
//!
//! - **By name**: the value of a query parameter (or header) whose name says
//!   it carries a credential — [`SENSITIVE_NAMES`], the names ending in one
//!   of [`SENSITIVE_SUFFIXES`] (`x-api-key`, `github_token`,
//!   `user[password]`), and the names an installation adds
//!   (`audit.redact_params`) — becomes [`REDACTED`]. Names are compared
//!   case-insensitively, with every character that is not a letter or digit
//!   read as `_`.
//! - **By shape**: anything shaped like an Auditline secret, whatever its
//!   name or place: a token (`alt_` and at least 8 more letters, digits, `_`
//!   or `-`, in either case: PostgreSQL's `lower()` would undo a change of
//!   case) or a stream ticket (a run of 48 or more hexadecimal digits; a
//!   ticket is 64) becomes [`REDACTED`]. Query values are percent-decoded
//!   before they are judged, so `alt%5F…` is caught too.
//!
//! The fast path (nothing to redact) allocates nothing.

use std::borrow::Cow;

/// What a redacted value reads.
pub const REDACTED: &str = "[REDACTED]";

/// Parameter and header names whose value is always redacted.
pub const SENSITIVE_NAMES: [&str; 18] = [
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "password",
    "passwd",
    "ticket",
    "signature",
    "sig",
    "code",
    "auth",
    "authorization",
    "session_token",
    "client_secret",
    "refresh_token",
    "id_token",
];

/// A name ending in `_` and one of these (`x_api_key`, `github_token`) is
/// sensitive too. Short, generic words of [`SENSITIVE_NAMES`] (`key`,
/// `code`, `sig`, `auth`) count only as the whole name, so `status_code`
/// or `sort_key` keep their values.
pub const SENSITIVE_SUFFIXES: [&str; 11] = [
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api_key",
    "access_key",
    "private_key",
    "secret_key",
    "signature",
    "ticket",
];

/// Token runs at least this long after `alt_` are secrets (a token's id
/// alone is 12 hex digits, then `_` and the 64-digit secret).
const TOKEN_TAIL: usize = 8;
/// A run of this many hex digits is taken for a ticket (64 digits) or part of one.
const HEX_RUN: usize = 48;

/// [`SENSITIVE_NAMES`] as a `match` (a length dispatch, then one compare).
fn builtin_name(name: &str) -> bool {
    matches!(
        name,
        "token"
            | "access_token"
            | "api_key"
            | "apikey"
            | "key"
            | "secret"
            | "password"
            | "passwd"
            | "ticket"
            | "signature"
            | "sig"
            | "code"
            | "auth"
            | "authorization"
            | "session_token"
            | "client_secret"
            | "refresh_token"
            | "id_token"
    )
}

/// Whether a name is already normalized (the common case).
fn plain(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first() != Some(&b'_')
        && bytes.last() != Some(&b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// [`normalize`] into `buffer`, for names that fit; `None` otherwise.
fn normalize_into<'b>(name: &str, buffer: &'b mut [u8; 64]) -> Option<&'b str> {
    if name.len() > buffer.len() || !name.is_ascii() {
        return None;
    }
    for (to, b) in buffer.iter_mut().zip(name.bytes()) {
        *to = if b.is_ascii_alphanumeric() {
            b.to_ascii_lowercase()
        } else {
            b'_'
        };
    }
    let text = std::str::from_utf8(&buffer[..name.len()]).ok()?;
    Some(text.trim_matches('_'))
}

/// Which names are sensitive: the built-in ones and an installation's own.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Normalized (lower case, `_` for anything else) extra names.
    extra: std::sync::Arc<[String]>,
}

impl Redactor {
    /// The built-in names plus `extra` (`audit.redact_params`).
    pub fn new(extra: &[String]) -> Self {
        Self {
            extra: extra.iter().map(|n| normalize(n).into_owned()).collect(),
        }
    }

    /// Whether a parameter or header called `name` carries a credential.
    pub fn sensitive_name(&self, name: &str) -> bool {
        // Normalized in a buffer on the stack: this runs for every query
        // parameter the middleware sees.
        let mut buffer = [0u8; 64];
        let name = if plain(name) {
            Cow::Borrowed(name)
        } else {
            match normalize_into(name, &mut buffer) {
                Some(name) => Cow::Borrowed(name),
                None => normalize(name),
            }
        };
        let name = name.as_ref();
        builtin_name(name)
            || (memchr::memchr(b'_', name.as_bytes()).is_some()
                && SENSITIVE_SUFFIXES.iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|head| head.ends_with('_'))
                }))
            || (!self.extra.is_empty() && self.extra.iter().any(|extra| extra == name))
    }

    /// The value to record for parameter `name` (decoded).
    pub fn value<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if self.sensitive_name(name) {
            Cow::Borrowed(REDACTED)
        } else {
            text(value)
        }
    }

    /// A request target (`/path?query`, raw as on the request line) with
    /// credentials replaced.
    pub fn path_and_query<'a>(&self, target: &'a str) -> Cow<'a, str> {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let clean_path = raw_text(path);
        let clean_query = match query {
            Some(query) if !query.is_empty() => self.query(query),
            _ => Cow::Borrowed(query.unwrap_or("")),
        };
        if matches!(clean_path, Cow::Borrowed(_)) && matches!(clean_query, Cow::Borrowed(_)) {
            return Cow::Borrowed(target);
        }
        let mut out = String::with_capacity(target.len());
        out.push_str(&clean_path);
        if let Some(query) = query {
            out.push('?');
            out.push_str(if query.is_empty() { "" } else { &clean_query });
        }
        Cow::Owned(out)
    }

    /// A raw (percent-encoded) query string with each credential's value
    /// replaced by [`REDACTED`]; names shaped like a secret are replaced too.
    pub fn query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        let mut out: Option<String> = None;
        let bytes = query.as_bytes();
        let (mut start, mut i) = (0, 0);
        loop {
            let end = memchr::memchr(b'&', &bytes[start..]).map_or(bytes.len(), |at| start + at);
            // Cut at ASCII bytes: always on character boundaries.
            let pair = &query[start..end];
            let (raw_name, raw_value) = match memchr::memchr(b'=', pair.as_bytes()) {
                Some(at) => (&pair[..at], Some(&pair[at + 1..])),
                None => (pair, None),
            };
            let name = decode(raw_name);
            // Nothing of 8 characters or fewer has a secret's shape.
            let name_secret = name.len() > TOKEN_TAIL && holds_secret(&name);
            let value_secret = raw_value.is_some_and(|v| {
                !v.is_empty()
                    && (self.sensitive_name(&name)
                        || (v.len() > TOKEN_TAIL && holds_secret(&decode(v))))
            });
            if name_secret || value_secret {
                let mut redacted = String::new();
                redacted.push_str(if name_secret { REDACTED } else { raw_name });
                if let Some(v) = raw_value {
                    redacted.push('=');
                    redacted.push_str(if value_secret { REDACTED } else { v });
                }
                push_pair(&mut out, query, start, i, &redacted);
            } else if out.is_some() {
                push_pair(&mut out, query, start, i, pair);
            }
            if end == bytes.len() {
                break;
            }
            start = end + 1;
            i += 1;
        }
        out.map_or(Cow::Borrowed(query), Cow::Owned)
    }
}

/// Appends pair `i` (at byte `start` of `query`) to the copy being built,
/// starting the copy with everything before the pair when there is none yet.
fn push_pair(out: &mut Option<String>, query: &str, start: usize, i: usize, pair: &str) {
    match out {
        None => {
            let mut copy = String::with_capacity(query.len() + REDACTED.len());
            copy.push_str(&query[..start]);
            copy.push_str(pair);
            *out = Some(copy);
        }
        Some(copy) => {
            if i > 0 {
                copy.push('&');
            }
            copy.push_str(pair);
        }
    }
}

/// `text` with every secret-shaped run replaced by [`REDACTED`] (for error
/// messages, log lines and decoded values).
pub fn text(text: &str) -> Cow<'_, str> {
    if !maybe_secret(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    replace_runs(text, secret_run)
}

/// Whether `text` holds anything shaped like an Auditline token or ticket.
pub fn holds_secret(text: &str) -> bool {
    if !maybe_secret(text.as_bytes()) {
        return false;
    }
    runs(text).any(|(start, end)| secret_run(&text[start..end]))
}

/// Whether `text` holds anything shaped like an Auditline token (not the
/// ticket shape: for values such as an app's session id, which may well be
/// 64 hex digits of its own).
pub fn holds_token(text: &str) -> bool {
    runs(text).any(|(start, end)| token_run(&text[start..end]))
}

/// [`text`] for raw, percent-encoded text (a path): a run is judged decoded.
fn raw_text(raw: &str) -> Cow<'_, str> {
    if !maybe_secret(raw.as_bytes()) {
        return Cow::Borrowed(raw);
    }
    replace_runs(raw, |run| {
        secret_run(run) || (run.contains('%') && holds_secret(&decode(run)))
    })
}

/// One tight pass that clears ordinary text: no `alt_` (any case), no run
/// of [`HEX_RUN`] hex digits, no percent-encoding. Only text it does not
/// clear is looked at run by run.
fn maybe_secret(bytes: &[u8]) -> bool {
    let mut hex = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_hexdigit() {
            hex += 1;
            if hex >= HEX_RUN {
                return true;
            }
        } else {
            hex = 0;
            if b == b'%' || (b == b'_' && i >= 3 && bytes[i - 3..i].eq_ignore_ascii_case(b"alt")) {
                return true;
            }
        }
    }
    false
}

fn replace_runs<'a>(text: &'a str, secret: impl Fn(&str) -> bool) -> Cow<'a, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for (start, end) in runs(text) {
        if secret(&text[start..end]) {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
    }
}

/// Whether a byte belongs to a run a secret could be part of (`%` too, so
/// a percent-encoded secret stays one run).
fn run_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'%')
}

/// The maximal runs of [`run_byte`]s worth a look: those holding `alt_`
/// (any case) or a long enough stretch of hex digits. Cheap on ordinary text.
fn runs(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() {
            while at < bytes.len() && !run_byte(bytes[at]) {
                at += 1;
            }
            let start = at;
            while at < bytes.len() && run_byte(bytes[at]) {
                at += 1;
            }
            if at - start > TOKEN_TAIL {
                return Some((start, at));
            }
        }
        None
    })
}

/// Whether one run holds `alt_` and enough of a token after it.
fn token_run(run: &str) -> bool {
    let bytes = run.as_bytes();
    bytes.windows(4).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(b"alt_")
            && bytes[i + 4..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                .count()
                >= TOKEN_TAIL
    })
}

/// Whether one run is (or holds) a secret: a token or a ticket.
fn secret_run(run: &str) -> bool {
    if token_run(run) {
        return true;
    }
    let bytes = run.as_bytes();
    let mut hex = 0;
    for b in bytes {
        hex = if b.is_ascii_hexdigit() { hex + 1 } else { 0 };
        if hex >= HEX_RUN {
            return true;
        }
    }
    false
}

/// Percent-decoding (and `+` as space), as query strings are read.
fn decode(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let decoded: String = form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default();
    Cow::Owned(decoded)
}

/// Lower case, every character that is not a letter or digit as `_`, no `_`
/// at either end (`X-Api-Key` → `x_api_key`, `user[password]` → `user_password`).
fn normalize(name: &str) -> Cow<'_, str> {
    if plain(name) {
        return Cow::Borrowed(name);
    }
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    Cow::Owned(mapped.trim_matches('_').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str =
        "alt_0123456789ab_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const TICKET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn credentials_in_a_query_are_redacted_by_name() {
        let r = Redactor::default();
        for name in [
            "access_token",
            "Access_Token",
            "api_key",
            "X-Api-Key",
            "token",
            "password",
            "user[password]",
            "client_secret",
            "github_token",
            "code",
            "sig",
            "ticket",
            "Authorization",
        ] {
            let query = format!("user_id=bob&{name}=hunter2&limit=5");
            assert_eq!(
                r.query(&query),
                format!("user_id=bob&{name}=[REDACTED]&limit=5"),
                "{name}"
            );
        }
        for name in [
            "status_code",
            "sort_key",
            "keyword",
            "author",
            "q",
            "user_id",
        ] {
            let query = format!("{name}=hunter2");
            assert!(matches!(r.query(&query), Cow::Borrowed(_)), "{name}");
        }
        let custom = Redactor::new(&["X-Session-Secret-Thing".into(), "otp".into()]);
        assert_eq!(custom.query("otp=123456&a=1"), "otp=[REDACTED]&a=1");
        assert_eq!(
            custom.query("x_session_secret_thing=1"),
            "x_session_secret_thing=[REDACTED]"
        );
        assert!(!Redactor::default().sensitive_name("otp"));
    }

    #[test]
    fn secrets_are_redacted_by_shape_wherever_they_are() {
        let r = Redactor::default();
        let upper = TOKEN.to_ascii_uppercase();
        let encoded = TOKEN.replace('_', "%5F");
        for value in [TOKEN, upper.as_str(), TICKET, encoded.as_str()] {
            let query = format!("q={value}&limit=5");
            assert_eq!(r.query(&query), "q=[REDACTED]&limit=5", "{value}");
            assert_eq!(
                r.path_and_query(&format!("/users/{value}?{query}")),
                "/users/[REDACTED]?q=[REDACTED]&limit=5"
            );
        }
        assert_eq!(r.query(&format!("{TOKEN}=1")), "[REDACTED]=1");
        assert_eq!(
            text(&format!("\"{TOKEN}\" is not an RFC 3339 timestamp")),
            "\"[REDACTED]\" is not an RFC 3339 timestamp"
        );
        assert_eq!(
            text(&format!("Bearer {TOKEN}, x{TICKET}y")),
            "Bearer [REDACTED], [REDACTED]"
        );
        assert_eq!(r.value("q", TOKEN), REDACTED);
        assert_eq!(r.value("ticket", "short"), REDACTED);
        assert!(holds_secret(&format!("/x/{TOKEN}")));
    }

    #[test]
    fn the_name_list_and_its_match_agree() {
        for name in SENSITIVE_NAMES {
            assert!(builtin_name(name), "{name}");
            assert!(Redactor::default().sensitive_name(&name.to_ascii_uppercase()));
        }
        let long = format!("{}_token", "x".repeat(100));
        assert!(Redactor::default().sensitive_name(&long));
        assert!(Redactor::default().sensitive_name("Pässword-Token"));
    }

    #[test]
    fn ordinary_text_is_kept_without_copying() {
        let r = Redactor::default();
        for target in [
            "/",
            "/files/7",
            "/admin/audit/logs?user_id=alice&action_type=file&q=alt_",
            "/admin/audit/logs?q=alt_abc&from=2026-11-28T09:00:00Z",
            "/s?session=0192f0a47a5e7c3e8a4b000000000001",
            "/commit/0123456789abcdef0123456789abcdef01234567",
            "/e?",
            "/e?a&b=&c=%20",
        ] {
            assert!(
                matches!(r.path_and_query(target), Cow::Borrowed(t) if t == target),
                "{target}"
            );
        }
        assert!(matches!(text("nothing to see"), Cow::Borrowed(_)));
    }

    #[test]
    fn empty_and_odd_queries_keep_their_shape() {
        let r = Redactor::default();
        assert_eq!(r.query("token="), "token=");
        assert_eq!(r.query("token"), "token");
        assert_eq!(r.query("a=1&&token=x"), "a=1&&token=[REDACTED]");
        assert_eq!(r.query("token=x&a=1&"), "token=[REDACTED]&a=1&");
        assert_eq!(r.path_and_query("/p?token=x"), "/p?token=[REDACTED]");
    }
}
