//! Strict JSON at the boundaries: what `serde_json` would read loosely is
//! refused before it is read.
//!
//! - **Duplicate keys**, at any depth (`{"success": true, "success": false}`
//!   would otherwise be read as its last value): refused, naming the key.
//!   Keys are compared as decoded text, so `"a"` and `"\u0061"` are one key.
//! - **Numbers that would not be kept exactly** (with `exact_numbers`):
//!   Auditline reads JSON numbers as 64-bit integers or doubles, and
//!   PostgreSQL's `jsonb` stores what it is given. An integer beyond the
//!   64-bit range (below −2⁶³ or above 2⁶⁴−1) would silently become a
//!   rounded double, and so would a fraction or exponent whose digits a
//!   double does not hold (`9007199254740993.0`, `0.1000000000000000001`):
//!   both are refused, with the advice to send such a value as a string.
//!   A number with a fraction or exponent is kept when the double it reads
//!   as prints back as the same decimal value (`0.1`, `1e3`, `158.25`).
//!
//! [`check`] is one pass over the bytes, before `serde_json` reads them; it
//! leaves syntax errors (and nesting deeper than serde_json's 128 levels)
//! to `serde_json`, whose messages the callers already give. On an
//! ordinary event it costs a fraction of the parse (BENCHMARKS.md).

use std::{cell::RefCell, collections::HashSet, fmt};

/// Objects with more keys than this are checked through a hash set.
const LINEAR_KEYS: usize = 16;
/// serde_json refuses deeper input itself.
const MAX_DEPTH: usize = 128;

/// Where in the document a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A duplicate key or a number that cannot be kept exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StrictError {
    /// The path to the offending value (for a duplicate key: to the key).
    pub path: Vec<Segment>,
    pub message: String,
}

impl StrictError {
    /// The path as text: `metadata.a[2].b`, or `$` for the whole document.
    pub fn path_text(&self) -> String {
        Path(&self.path).to_string()
    }

    /// The first key of the path (an event's field), or `$`.
    pub fn top_key(&self) -> &str {
        self.path
            .iter()
            .find_map(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .unwrap_or("$")
    }
}

struct Path<'a>(&'a [Segment]);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("$");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A key seen in the current object: a range of the input, or (when it
/// holds escapes) an index into the decoded keys.
#[derive(Debug, Clone, Copy)]
enum Key {
    Raw(usize, usize),
    Decoded(usize),
}

#[derive(Debug)]
enum Frame {
    Object {
        /// Where this object's keys start in `Scratch::keys`.
        first: usize,
        /// Past [`LINEAR_KEYS`], the keys as a set.
        set: Option<HashSet<Vec<u8>>>,
        current: Option<Key>,
    },
    Array {
        index: usize,
    },
}

/// Buffers kept per thread, so a check allocates nothing in the common case.
#[derive(Debug, Default)]
struct Scratch {
    /// The keys of the open objects, with their [`fingerprint`]s.
    keys: Vec<(Key, u32)>,
    decoded: Vec<String>,
    stack: Vec<Frame>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Checks `input` for duplicate keys and, with `exact_numbers`, for numbers
/// that would not be kept exactly. Malformed JSON passes: the parser after
/// it reports that.
pub fn check(input: &[u8], exact_numbers: bool) -> Result<(), StrictError> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            let scratch = &mut *scratch;
            scratch.keys.clear();
            scratch.decoded.clear();
            scratch.stack.clear();
            let result = Checker {
                input,
                exact_numbers,
                s: scratch,
            }
            .run();
            if scratch.stack.capacity() > 1024 {
                *scratch = Scratch::default();
            }
            result
        }
        Err(_) => Checker {
            input,
            exact_numbers,
            s: &mut Scratch::default(),
        }
        .run(),
    })
}

struct Checker<'a, 's> {
    input: &'a [u8],
    exact_numbers: bool,
    s: &'s mut Scratch,
}

enum Next {
    Value,
    After,
    Key,
}

impl Checker<'_, '_> {
    fn run(&mut self) -> Result<(), StrictError> {
        let b = self.input;
        let mut i = ws(b, 0);
        let mut next = Next::Value;
        loop {
            match next {
                Next::Value => {
                    let Some(&c) = b.get(i) else { return Ok(()) };
                    match c {
                        b'{' | b'[' => {
                            if self.s.stack.len() >= MAX_DEPTH {
                                return Ok(());
                            }
                            i = ws(b, i + 1);
                            if c == b'{' {
                                self.s.stack.push(Frame::Object {
                                    first: self.s.keys.len(),
                                    set: None,
                                    current: None,
                                });
                                if b.get(i) == Some(&b'}') {
                                    self.pop();
                                    i += 1;
                                    next = Next::After;
                                } else {
                                    next = Next::Key;
                                }
                            } else {
                                self.s.stack.push(Frame::Array { index: 0 });
                                if b.get(i) == Some(&b']') {
                                    self.pop();
                                    i += 1;
                                    next = Next::After;
                                }
                            }
                        }
                        b'"' => {
                            let Some((end, _)) = string_end(b, i) else {
                                return Ok(());
                            };
                            i = end + 1;
                            next = Next::After;
                        }
                        b'-' | b'0'..=b'9' => {
                            let end = number_end(b, i);
                            if self.exact_numbers {
                                self.number(&b[i..end])?;
                            }
                            i = end;
                            next = Next::After;
                        }
                        b't' | b'f' | b'n' => {
                            i += b[i..].iter().take_while(|c| c.is_ascii_lowercase()).count();
                            next = Next::After;
                        }
                        _ => return Ok(()),
                    }
                }
                Next::After => {
                    i = ws(b, i);
                    let Some(frame) = self.s.stack.last_mut() else {
                        return Ok(());
                    };
                    match (frame, b.get(i)) {
                        (Frame::Array { index }, Some(b',')) => {
                            *index += 1;
                            i = ws(b, i + 1);
                            next = Next::Value;
                        }
                        (Frame::Object { .. }, Some(b',')) => {
                            i = ws(b, i + 1);
                            next = Next::Key;
                        }
                        (Frame::Array { .. }, Some(b']')) | (Frame::Object { .. }, Some(b'}')) => {
                            self.pop();
                            i += 1;
                        }
                        _ => return Ok(()),
                    }
                }
                Next::Key => {
                    if b.get(i) != Some(&b'"') {
                        return Ok(());
                    }
                    let Some((end, escaped)) = string_end(b, i) else {
                        return Ok(());
                    };
                    let key = if escaped {
                        match serde_json::from_slice::<String>(&b[i..=end]) {
                            Ok(text) => {
                                self.s.decoded.push(text);
                                Key::Decoded(self.s.decoded.len() - 1)
                            }
                            Err(_) => return Ok(()),
                        }
                    } else {
                        Key::Raw(i + 1, end)
                    };
                    self.key(key)?;
                    i = ws(b, end + 1);
                    if b.get(i) != Some(&b':') {
                        return Ok(());
                    }
                    i = ws(b, i + 1);
                    next = Next::Value;
                }
            }
        }
    }

    fn bytes(&self, key: Key) -> &[u8] {
        match key {
            Key::Raw(start, end) => &self.input[start..end],
            Key::Decoded(n) => self.s.decoded[n].as_bytes(),
        }
    }

    fn pop(&mut self) {
        if let Some(Frame::Object { first, .. }) = self.s.stack.pop() {
            self.s.keys.truncate(first);
        }
    }

    /// Records a key of the innermost object; a second one is an error.
    /// Small objects (an event's fields) are checked by a linear scan that
    /// compares a fingerprint (length, first and last byte) before the
    /// bytes, and allocate nothing.
    fn key(&mut self, key: Key) -> Result<(), StrictError> {
        let (first, hashed) = match self.s.stack.last() {
            Some(Frame::Object { first, set, .. }) => (*first, set.is_some()),
            _ => return Ok(()),
        };
        let name = self.bytes(key);
        let print = fingerprint(name);
        let seen = if hashed {
            matches!(self.s.stack.last(), Some(Frame::Object { set: Some(set), .. }) if set.contains(name))
        } else {
            self.s.keys[first..]
                .iter()
                .any(|(k, p)| *p == print && self.bytes(*k) == name)
        };
        if let Some(Frame::Object { current, .. }) = self.s.stack.last_mut() {
            *current = Some(key);
        }
        if seen {
            let name = String::from_utf8_lossy(self.bytes(key)).into_owned();
            return Err(self.error(format!(
                "duplicate key {name:?}: each key may appear once in an object"
            )));
        }
        if !hashed && self.s.keys.len() - first < LINEAR_KEYS {
            self.s.keys.push((key, print));
            return Ok(());
        }
        // A large object: its keys move to a set.
        let mut owned: Vec<Vec<u8>> = vec![self.bytes(key).to_vec()];
        if !hashed {
            owned.extend(
                self.s.keys[first..]
                    .iter()
                    .map(|(k, _)| self.bytes(*k).to_vec()),
            );
            self.s.keys.truncate(first);
        }
        if let Some(Frame::Object { set, .. }) = self.s.stack.last_mut() {
            set.get_or_insert_with(HashSet::new).extend(owned);
        }
        Ok(())
    }

    fn number(&self, text: &[u8]) -> Result<(), StrictError> {
        match exact(text) {
            Exact::Yes => Ok(()),
            Exact::TooLarge => Err(self.error(format!(
                "the integer {} is outside the 64-bit range (-2^63 to 2^64-1) and would not be kept exactly; send it as a string",
                clipped(text)
            ))),
            Exact::Rounded(to) => Err(self.error(format!(
                "the number {} has more digits than a double holds (it would be kept as {to}); send it as a string",
                clipped(text)
            ))),
        }
    }

    fn error(&self, message: String) -> StrictError {
        let path = self
            .s
            .stack
            .iter()
            .filter_map(|frame| match frame {
                Frame::Object { current, .. } => current
                    .map(|k| Segment::Key(String::from_utf8_lossy(self.bytes(k)).into_owned())),
                Frame::Array { index } => Some(Segment::Index(*index)),
            })
            .collect();
        StrictError { path, message }
    }
}

/// Length, first and last byte: tells most distinct keys apart without
/// comparing them.
fn fingerprint(name: &[u8]) -> u32 {
    let (first, last) = (name.first().copied(), name.last().copied());
    ((name.len() as u32) << 16)
        | (u32::from(first.unwrap_or(0)) << 8)
        | u32::from(last.unwrap_or(0))
}

fn clipped(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    if text.len() > 48 {
        format!("{}…", &text[..45])
    } else {
        text.into_owned()
    }
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index of the closing quote of the string opening at `start`, and
/// whether it holds escapes; `None` when it does not end.
fn string_end(b: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut i = start + 1;
    let mut escaped = false;
    while i < b.len() {
        // Most of an event is string bytes: skip to the next quote or
        // backslash at memchr's speed.
        i += memchr::memchr2(b'"', b'\\', &b[i..])?;
        if b[i] == b'"' {
            return Some((i, escaped));
        }
        escaped = true;
        i += 2;
    }
    None
}

fn number_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
        i += 1;
    }
    i
}

enum Exact {
    Yes,
    TooLarge,
    /// Kept as this (shortest) decimal instead.
    Rounded(String),
}

/// Whether a JSON number is read without loss (integers as i64/u64,
/// others as a double that prints back as the same decimal value).
fn exact(text: &[u8]) -> Exact {
    let float = text.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
    if !float {
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        // Up to 18 digits always fit; 19 may not (a negative one), 20 may
        // not, and anything longer never does.
        if digits.len() < 19 {
            return Exact::Yes;
        }
        let mut value: u128 = 0;
        for d in digits {
            if !d.is_ascii_digit() || value > u128::from(u64::MAX) {
                break;
            }
            value = value * 10 + u128::from(d - b'0');
        }
        let max = if negative {
            1u128 << 63
        } else {
            u128::from(u64::MAX)
        };
        return if digits.len() > 20 || value > max {
            Exact::TooLarge
        } else {
            Exact::Yes
        };
    }
    // Up to 15 significant digits in the normal range always come back
    // (the common case: checked without allocating).
    if short_float(text) {
        return Exact::Yes;
    }
    let Some(given) = Decimal::parse(text) else {
        return Exact::Yes;
    };
    let Some(value) = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|v| v.is_finite())
    else {
        // Out of a double's range: serde_json refuses it itself.
        return Exact::Yes;
    };
    let Some(shortest) = serde_json::Number::from_f64(value).map(|n| n.to_string()) else {
        return Exact::Yes;
    };
    match Decimal::parse(shortest.as_bytes()) {
        Some(kept) if kept == given => Exact::Yes,
        _ => Exact::Rounded(shortest),
    }
}

/// Whether a number with a fraction or exponent has at most 15 significant
/// digits and a small exponent: such a decimal always reads back from its
/// double as itself.
fn short_float(text: &[u8]) -> bool {
    let text = text.strip_prefix(b"-").unwrap_or(text);
    let (mantissa, exponent) = match text.iter().position(|c| matches!(c, b'e' | b'E')) {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, &b""[..]),
    };
    let exponent = exponent.strip_prefix(b"+").unwrap_or(exponent);
    let exponent = exponent.strip_prefix(b"-").unwrap_or(exponent);
    if exponent.len() > 3 || !exponent.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let digits = mantissa.iter().filter(|c| **c != b'.');
    let leading = digits.clone().take_while(|c| **c == b'0').count();
    let total = digits.clone().count();
    let trailing = mantissa
        .iter()
        .rev()
        .filter(|c| **c != b'.')
        .take_while(|c| **c == b'0')
        .count();
    let significant = total.saturating_sub(leading + trailing);
    // Exponent at most 3 digits and mantissa at most 200 characters keep
    // the value within ±10^(999+200); the extra bound keeps it normal.
    let magnitude: usize = exponent
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    significant <= 15 && magnitude + mantissa.len() <= 250
}

/// A decimal number as `0.d₁d₂… × 10^exponent`, without leading or trailing
/// zero digits (zero has no digits and no sign).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    fn parse(text: &[u8]) -> Option<Self> {
        let (negative, rest) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.iter().position(|c| matches!(c, b'e' | b'E')) {
            Some(at) => {
                let exp = std::str::from_utf8(&rest[at + 1..]).ok()?;
                let exp = exp.strip_prefix('+').unwrap_or(exp);
                (&rest[..at], exp.parse::<i64>().ok()?)
            }
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.iter().position(|c| *c == b'.') {
            Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
            None => (mantissa, &[][..]),
        };
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let all: Vec<u8> = int.iter().chain(frac).copied().collect();
        let leading = all.iter().take_while(|d| **d == b'0').count();
        let digits: Vec<u8> = all[leading..].to_vec();
        let trailing = digits.iter().rev().take_while(|d| **d == b'0').count();
        let digits = digits[..digits.len() - trailing].to_vec();
        if digits.is_empty() {
            return Some(Self {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        let exponent = exp.checked_add(int.len() as i64 - leading as i64)?;
        Some(Self {
            negative,
            digits,
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> StrictError {
        check(json.as_bytes(), true).expect_err(json)
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let e = err(r#"{"success": true, "x": 1, "success": false}"#);
        assert_eq!(e.path_text(), "success");
        assert!(e.message.contains("duplicate key \"success\""), "{e}");
        let e = err(r#"{"metadata": {"a": [1, {"b": 1, "b": 2}]}}"#);
        assert_eq!(e.path_text(), "metadata.a[1].b");
        assert_eq!(e.top_key(), "metadata");
        // Escapes are decoded before keys are compared.
        let e = err(r#"{"a": 1, "\u0061": 2}"#);
        assert_eq!(e.path_text(), "a");
        let e = err(r#"[{"k": 1}, {"k": 1, "k": 2}]"#);
        assert_eq!(e.path, vec![Segment::Index(1), Segment::Key("k".into())]);
        // Many keys go through the set.
        let mut many: Vec<String> = (0..100).map(|i| format!("\"k{i}\": {i}")).collect();
        check(format!("{{{}}}", many.join(",")).as_bytes(), true).expect("distinct");
        many.push("\"k42\": 0".into());
        let e = err(&format!("{{{}}}", many.join(",")));
        assert_eq!(e.path_text(), "k42");
        // The same key in sibling or nested objects is fine.
        check(
            br#"{"a": {"a": {"a": 1}}, "b": {"a": 2}, "c": [{"a": 1}, {"a": 1}]}"#,
            true,
        )
        .expect("no duplicates");
    }

    #[test]
    fn numbers_that_cannot_be_kept_exactly_are_refused() {
        for ok in [
            "9007199254740993",
            "-9223372036854775808",
            "18446744073709551615",
            "0",
            "-0",
            "0.1",
            "158.25",
            "1e3",
            "1.5E-7",
            "123456789012345.6",
            "9007199254740992.0",
            "0.30000000000000004",
            "-0.0",
            "1e400",
        ] {
            check(format!("{{\"n\": {ok}}}").as_bytes(), true).expect(ok);
        }
        for (bad, what) in [
            ("18446744073709551616", "outside the 64-bit range"),
            ("-9223372036854775809", "outside the 64-bit range"),
            ("123456789012345678901234567890", "outside the 64-bit range"),
            ("9007199254740993.0", "9007199254740992"),
            ("0.1000000000000000001", "kept as 0.1"),
            ("1.23456789012345678901e5", "more digits"),
        ] {
            let e = err(&format!("{{\"m\": {{\"n\": [{bad}]}}}}"));
            assert!(e.message.contains(what), "{bad}: {e}");
            assert_eq!(e.path_text(), "m.n[0]");
        }
        check(br#"{"n": 18446744073709551616}"#, false).expect("numbers not checked");
    }

    #[test]
    fn whatever_serde_json_writes_is_accepted() {
        // The publisher and the middleware write events with serde_json's
        // number formatting: the writer must never refuse that.
        use rand::Rng;
        let mut rng = rand::rng();
        let mut values: Vec<f64> = vec![0.1 + 0.2, 5e-324, f64::MAX, f64::MIN_POSITIVE, -0.0, 1e-7];
        for _ in 0..50_000 {
            let v = f64::from_bits(rng.random());
            if v.is_finite() {
                values.push(v);
            }
            values.push(rng.random::<f64>() * 10f64.powi(rng.random_range(-30..30)));
        }
        for v in values {
            let json =
                serde_json::json!({ "v": v, "i": rng.random::<i64>(), "u": rng.random::<u64>() });
            let text = json.to_string();
            check(text.as_bytes(), true).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn malformed_input_is_left_to_the_parser() {
        for json in [
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "[1,",
            "\"open",
            "{\"a\":1,,}",
            "nul",
            "{]",
        ] {
            check(json.as_bytes(), true).expect(json);
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        check(deep.as_bytes(), true).expect("left to serde_json's depth limit");
    }
}
