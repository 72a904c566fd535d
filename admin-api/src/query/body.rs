//! JSON request bodies: strict JSON, unknown fields refused naming them, and
//! the filters a body carries turned into (and back from) a query string.

use auditline_integrity::storage::Storage;
use serde_json::{Map, Value};

use crate::{
    error::ApiError,
    query::export::{Compression, Format},
};

/// A stored query string as a filters object (repeated names become arrays).
pub(crate) fn query_filters(query: &str) -> Map<String, Value> {
    let mut filters = Map::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = Value::String(value.into_owned());
        match filters.get_mut(name.as_ref()) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                filters.insert(name.into_owned(), value);
            }
        }
    }
    filters
}

/// A filters object (the body field `field`) as a query string, for the
/// search's own parser.
pub(crate) fn filters_query(field: &str, filters: &Map<String, Value>) -> Result<String, ApiError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in filters {
        let field = format!("{field}.{name}");
        let scalar = |v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(ApiError::body(
                &field,
                "must be a string, a number, a boolean or an array of them",
            )),
        };
        match value {
            Value::Array(values) => {
                for v in values {
                    query.append_pair(name, &scalar(v)?);
                }
            }
            v => {
                query.append_pair(name, &scalar(v)?);
            }
        }
    }
    Ok(query.finish())
}

/// Refuses a request body or frame with a duplicate key (which `serde_json`
/// would read as its last value), naming the key's path.
pub(crate) fn strict(body: &[u8]) -> Result<(), ApiError> {
    auditline_shared::strict_json::check(body, false)
        .map_err(|e| ApiError::body(&e.path_text(), e.message))
}

/// A JSON object body, taken apart field by field with errors that name the field.
pub(crate) struct Body(Map<String, Value>);

impl Body {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        strict(body)?;
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::body("$", "must be a JSON object")),
            Err(e) => Err(ApiError::body("$", format!("malformed JSON: {e}"))),
        }
    }

    /// A string field (absent: `None`; null or another type: an error).
    pub(crate) fn text(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::body(name, "must be a string")),
        }
    }

    pub(crate) fn format(&mut self) -> Result<Format, ApiError> {
        match self.text("format")? {
            None => Ok(Format::Csv),
            Some(text) => Format::parse(&text).ok_or_else(|| {
                ApiError::body(
                    "format",
                    format!("{text:?} is not one of csv, json, ndjson"),
                )
            }),
        }
    }

    pub(crate) fn compression(&mut self) -> Result<Compression, ApiError> {
        match self.text("compression")? {
            None => Ok(Compression::None),
            Some(text) => Compression::parse(&text).ok_or_else(|| {
                ApiError::body("compression", format!("{text:?} is not one of none, zstd"))
            }),
        }
    }

    /// `destination`: `local` when absent, else a configured one.
    pub(crate) fn destination(&mut self, storage: &Storage) -> Result<String, ApiError> {
        let destination = self
            .text("destination")?
            .unwrap_or_else(|| auditline_integrity::storage::LOCAL.into());
        storage
            .check(&destination)
            .map_err(|message| ApiError::body("destination", message))?;
        Ok(destination)
    }

    /// The `filters` object as a query string.
    pub(crate) fn filters(&mut self) -> Result<String, ApiError> {
        match self.0.remove("filters") {
            None => Ok(String::new()),
            Some(Value::Object(filters)) => filters_query("filters", &filters),
            Some(_) => Err(ApiError::body("filters", "must be an object")),
        }
    }

    /// Refuses any field not taken.
    pub(crate) fn finish(self, known: &str) -> Result<(), ApiError> {
        match self.0.keys().next() {
            Some(unknown) => Err(ApiError::body(
                unknown,
                format!("unknown field; known: {known}"),
            )),
            None => Ok(()),
        }
    }
}

/// Names a parameter error about a filters object as the body field
/// `field.<parameter>`.
pub(crate) fn in_field(field: &str) -> impl Fn(ApiError) -> ApiError + '_ {
    move |error| match error {
        ApiError::BadParam { param, message } => {
            ApiError::body(&format!("{field}.{param}"), message)
        }
        other => other,
    }
}
