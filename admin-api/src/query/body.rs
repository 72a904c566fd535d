//! JSON request bodies: strict JSON (a repeated key is refused, not read as
//! its last value), read into the route's own `Deserialize` type with
//! unknown fields refused, every error naming the field.

use serde::{Deserialize, Deserializer, de::DeserializeOwned};

use crate::error::ApiError;

/// Refuses a request body or frame with a duplicate key (which `serde_json`
/// would read as its last value), naming the key's path.
pub(crate) fn strict(body: &[u8]) -> Result<(), ApiError> {
    auditline_shared::strict_json::check(body, false)
        .map_err(|e| ApiError::body(&e.path_text(), e.message))
}

/// A JSON object body as `T`; an error names the field (`$` for the whole
/// body). Only an object is taken: serde would also read a struct from an
/// array of its fields in order (`[null, null]`).
pub(crate) fn read<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    strict(body)?;
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::body("$", "must be a JSON object"));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." || inner.is_syntax() || inner.is_eof() {
            "$"
        } else {
            path.as_str()
        };
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            // The field is named; where it sits in the body is noise.
            let text = inner.to_string();
            match text.rfind(" at line ") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        };
        ApiError::body(field, message)
    })?;
    json.end()
        .map_err(|e| ApiError::body("$", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// An optional body field that, when given, must hold a value: `null` is
/// refused like any other wrong type (leave the field out instead). Use as
/// `#[serde(default, deserialize_with = "present")]`.
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(d)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "must not be null; leave the field out instead",
        )),
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
