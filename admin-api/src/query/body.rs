//! JSON request bodies: strict JSON (a repeated key is refused, not read as
//! its last value), read into the route's own `Deserialize` type with
//! unknown fields refused, every error naming the field.

use serde::de::DeserializeOwned;

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
            inner.to_string()
        };
        ApiError::body(field, message)
    })?;
    json.end()
        .map_err(|e| ApiError::body("$", format!("malformed JSON: {e}")))?;
    Ok(value)
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
