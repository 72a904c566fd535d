//! Query-string parsing shared by the admin routes: unknown or repeated
//! parameters, NUL characters and malformed values are refused with a 400
//! that names the parameter, before anything reaches the database. A JSON
//! object of filters (an export job's, a schedule's, a live subscription's)
//! is taken apart the same way ([`Params::from_object`]).

use chrono::{DateTime, SubsecRound, Utc};
use std::collections::BTreeMap;

use crate::{error::ApiError, query::scalar::Scalar};

/// The parsed query string of one request.
#[derive(Debug)]
pub struct Params {
    values: BTreeMap<String, Vec<String>>,
}

impl Params {
    /// Parses `query`, refusing parameters not in `known`.
    pub fn parse(query: &str, known: &[&str]) -> Result<Self, ApiError> {
        Self::parse_from(query, &[known])
    }

    /// [`Params::parse`] with the known names given as several lists (e.g.
    /// the search filters, then a route's own).
    pub fn parse_from(query: &str, known: &[&[&str]]) -> Result<Self, ApiError> {
        Self::from_pairs(form_urlencoded::parse(query.as_bytes()), known)
    }

    fn from_pairs<N: AsRef<str> + Into<String>, V: AsRef<str> + Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
        known: &[&[&str]],
    ) -> Result<Self, ApiError> {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in pairs {
            if !known.iter().any(|list| list.contains(&name.as_ref())) {
                return Err(Self::unknown(name.as_ref(), known));
            }
            if value.as_ref().contains('\0') {
                return Err(ApiError::param(
                    name.as_ref(),
                    "must not contain NUL characters",
                ));
            }
            values.entry(name.into()).or_default().push(value.into());
        }
        Ok(Self { values })
    }

    /// The error for a parameter not in `known`.
    pub fn unknown(name: &str, known: &[&[&str]]) -> ApiError {
        ApiError::param(
            name,
            format!("unknown parameter; known: {}", known.concat().join(", ")),
        )
    }

    /// Every parameter with its values, in name order.
    pub fn all_values(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.values
            .iter()
            .map(|(name, values)| (name.as_str(), values.as_slice()))
    }

    /// The value of a parameter that may appear once; empty means absent.
    pub fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.values.get(name).map(Vec::as_slice) {
            None => Ok(None),
            Some([value]) if value.is_empty() => Err(ApiError::param(
                name,
                "must not be empty; leave the parameter out instead",
            )),
            Some([value]) => Ok(Some(value.as_str())),
            Some(_) => Err(ApiError::param(name, "may be given only once")),
        }
    }

    /// Every value of a repeatable parameter ("any of").
    pub fn all(&self, name: &str) -> Result<Vec<&str>, ApiError> {
        let values: Vec<&str> = self
            .values
            .get(name)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if values.iter().any(|v| v.is_empty()) {
            return Err(ApiError::param(
                name,
                "must not be empty; leave the parameter out instead",
            ));
        }
        Ok(values)
    }

    pub fn text(&self, name: &str, max_chars: usize) -> Result<Option<String>, ApiError> {
        self.one(name)?
            .map(|v| check_len(name, v, max_chars).map(|()| v.to_owned()))
            .transpose()
    }

    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.one(name)?
            .map(|v| DateTime::<Utc>::from_text(v).map_err(|e| ApiError::param(name, e)))
            .transpose()
    }

    pub fn integer(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        self.one(name)?
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::param(
                            name,
                            format!("{v:?} is not an integer from {min} to {max}"),
                        )
                    })
            })
            .transpose()
    }

    /// `asc` or `desc` (default).
    /// `order`: `desc` (the default) or `asc`.
    pub fn descending(&self, name: &str) -> Result<bool, ApiError> {
        self.descending_or(name, true)
    }

    /// `order` with the given default when absent.
    pub fn descending_or(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.one(name)? {
            None => Ok(default),
            Some("desc") => Ok(true),
            Some("asc") => Ok(false),
            Some(v) => Err(ApiError::param(
                name,
                format!("{v:?} is not `asc` or `desc`"),
            )),
        }
    }
}

/// A path segment that must be a UUID.
pub fn path_uuid(name: &str, text: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text)
        .map_err(|_| ApiError::param(name, format!("{text:?} is not a UUID")))
}

pub fn check_len(name: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.chars().count() > max_chars {
        Err(ApiError::param(
            name,
            format!("longer than {max_chars} characters"),
        ))
    } else {
        Ok(())
    }
}

/// The time range of a request: `from`/`to`, by default the `default` span
/// ending now; `from` must be before `to`.
pub fn time_range(
    params: &Params,
    default: chrono::TimeDelta,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let (from, to) = open_time_range(params)?;
    window(from, to, default)
}

/// `from`/`to` with the defaults filled in: `to` now, `from` the `default`
/// span before `to`; `from` must be before `to`.
pub fn window(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    default: chrono::TimeDelta,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let to = to.unwrap_or_else(|| Utc::now().trunc_subsecs(6));
    let from = from.unwrap_or(to - default);
    if from >= to {
        return Err(ApiError::param("from", "must be before `to`"));
    }
    Ok((from, to))
}

/// `from` and `to`, either unbounded.
pub type OpenRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `from`/`to` as given, either may be absent (unbounded), in microseconds
/// (the precision of stored times and of cursors); `from` must be before `to`.
pub fn open_time_range(params: &Params) -> Result<OpenRange, ApiError> {
    let to = params.time("to")?;
    let from = params.time("from")?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::param("from", "must be before `to`"));
    }
    Ok((from, to))
}

/// A non-empty text parameter, as the OpenAPI document describes it (the
/// handlers refuse empty values: leave a parameter out instead).
#[derive(Debug)]
pub struct Text;

impl utoipa::PartialSchema for Text {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .into()
    }
}

impl utoipa::ToSchema for Text {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter an error names.
    fn named(e: ApiError) -> String {
        match e {
            ApiError::BadParam { param, .. } => param,
            other => panic!("not a parameter error: {other}"),
        }
    }

    #[test]
    fn unknown_repeated_empty_and_nul_parameters_are_refused_by_name() {
        let e = Params::parse("limit=5&color=red", &["limit"]).expect_err("unknown");
        assert_eq!(named(e), "color");
        let p = Params::parse("limit=5&limit=6", &["limit"]).expect("parsed");
        assert_eq!(named(p.one("limit").expect_err("twice")), "limit");
        let p = Params::parse("limit=", &["limit"]).expect("parsed");
        assert_eq!(named(p.one("limit").expect_err("empty")), "limit");
        let e = Params::parse("q=a%00b", &["q"]).expect_err("NUL");
        assert_eq!(named(e), "q");
        let p = Params::parse("user_id=a&user_id=b", &["user_id"]).expect("parsed");
        assert_eq!(p.all("user_id").expect("all"), ["a", "b"]);
    }

    #[test]
    fn typed_values_are_checked_and_name_their_parameter() {
        let p = Params::parse(
            "limit=0&from=yesterday&order=up&n=7",
            &["limit", "from", "order", "n"],
        )
        .expect("parsed");
        assert_eq!(
            named(p.integer("limit", 1, 1000).expect_err("range")),
            "limit"
        );
        assert_eq!(named(p.time("from").expect_err("time")), "from");
        assert_eq!(named(p.descending("order").expect_err("order")), "order");
        assert_eq!(p.integer("n", 1, 10).expect("n"), Some(7));
        let p = Params::parse("from=2026-12-03T11:00:00%2B01:00", &["from"]).expect("parsed");
        let from = p.time("from").expect("time").expect("some");
        assert_eq!(
            from.to_rfc3339(),
            "2026-12-03T10:00:00+00:00",
            "any offset, read as UTC"
        );
    }

    #[test]
    fn a_time_range_defaults_to_a_day_and_refuses_an_inverted_one() {
        let day = chrono::TimeDelta::hours(24);
        let p = Params::parse("", &["from", "to"]).expect("parsed");
        let (from, to) = time_range(&p, day).expect("default range");
        assert_eq!(to - from, day);
        let p = Params::parse(
            "from=2026-12-03T10:00:00Z&to=2026-12-03T09:00:00Z",
            &["from", "to"],
        )
        .expect("parsed");
        assert_eq!(named(time_range(&p, day).expect_err("inverted")), "from");
    }
}
