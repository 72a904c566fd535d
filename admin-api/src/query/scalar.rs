//! How a filter value is read, whichever way it came: a query string gives
//! text (`success=true`, `status=404&status=5xx`), a JSON body or a stored
//! JSONB column gives JSON (`"success": true`, `"status": ["404", "5xx"]`).
//! A [`Scalar`] is read from text, and a JSON number or boolean where the
//! schema has one is read as the text it prints as, so both ways take the
//! same checks and give the same errors; a JSON number or boolean where the
//! schema has text is refused. A field that may hold several values ([`many`]) takes
//! one or an array and is written back the same way: one value alone,
//! several as an array.

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, SeqAccess, Visitor},
};
use std::{fmt, marker::PhantomData};

/// The most values a repeatable filter takes.
pub const MAX_VALUES: usize = 100;

/// A filter value read from its text.
pub trait Scalar: Sized {
    /// What the value is, for "expected …" errors.
    const EXPECTED: &'static str;
    /// Whether a JSON number or boolean may stand for it (read as the text
    /// it prints as); otherwise JSON must give text, as the schema says.
    const FROM_NUMBER: bool = false;
    const FROM_BOOL: bool = false;
    fn from_text(text: &str) -> Result<Self, String>;
}

fn wrong_type<T: Scalar, E: de::Error>(given: &str) -> E {
    E::custom(format!("{given} is not {}", T::EXPECTED))
}

/// Reads one [`Scalar`] from text, a number or a boolean.
struct ScalarVisitor<T>(PhantomData<T>);

impl<'de, T: Scalar> Visitor<'de> for ScalarVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        if v.is_empty() {
            return Err(E::custom(
                "must not be empty; leave the parameter out instead",
            ));
        }
        if v.contains('\0') {
            return Err(E::custom("must not contain NUL characters"));
        }
        T::from_text(v).map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        if !T::FROM_BOOL {
            return Err(wrong_type::<T, E>("a boolean"));
        }
        self.visit_str(if v { "true" } else { "false" })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if !T::FROM_NUMBER {
            return Err(wrong_type::<T, E>("a number"));
        }
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        if !T::FROM_NUMBER {
            return Err(wrong_type::<T, E>("a number"));
        }
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if !T::FROM_NUMBER {
            return Err(wrong_type::<T, E>("a number"));
        }
        self.visit_str(&v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Err(E::custom(
            "must not be null; leave the parameter out instead",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(de::Error::custom("may be given only once"))
    }
}

/// One element of a [`many`] field.
struct Item<T>(T);

impl<'de, T: Scalar> Deserialize<'de> for Item<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(PhantomData)).map(Item)
    }
}

/// An optional field given at most once: `#[serde(default, with = "one")]`.
pub mod one {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>, T: Scalar>(d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(ScalarVisitor(PhantomData)).map(Some)
    }

    pub fn serialize<S: Serializer, T: Serialize>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(s)
    }
}

/// A field that takes any of several values: `#[serde(default, with = "many")]`.
pub mod many {
    use super::*;

    struct ManyVisitor<T>(PhantomData<T>);

    impl<'de, T: Scalar> Visitor<'de> for ManyVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "{} or an array of them", T::EXPECTED)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            ScalarVisitor(PhantomData).visit_str(v).map(|t| vec![t])
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<T>, E> {
            ScalarVisitor(PhantomData).visit_bool(v).map(|t| vec![t])
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            ScalarVisitor(PhantomData).visit_i64(v).map(|t| vec![t])
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<T>, E> {
            ScalarVisitor(PhantomData).visit_u64(v).map(|t| vec![t])
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<T>, E> {
            ScalarVisitor(PhantomData).visit_f64(v).map(|t| vec![t])
        }

        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            ScalarVisitor::<T>(PhantomData)
                .visit_unit()
                .map(|t| vec![t])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut values = Vec::new();
            while let Some(Item(value)) = seq.next_element::<Item<T>>()? {
                if values.len() == MAX_VALUES {
                    return Err(de::Error::custom(format!("at most {MAX_VALUES} values")));
                }
                values.push(value);
            }
            Ok(values)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Scalar>(d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(ManyVisitor(PhantomData))
    }

    /// One value alone, several as an array.
    pub fn serialize<S: Serializer, T: Serialize>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
        match values {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl Scalar for String {
    const EXPECTED: &'static str = "a string";
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl Scalar for bool {
    const EXPECTED: &'static str = "`true` or `false`";
    const FROM_BOOL: bool = true;
    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("{text:?} is not `true` or `false`")),
        }
    }
}

/// A number ≥ 0 (a duration, a size).
impl Scalar for f64 {
    const EXPECTED: &'static str = "a number ≥ 0";
    const FROM_NUMBER: bool = true;
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("{text:?} is not a number ≥ 0"))
    }
}

/// Any offset, kept in UTC to the microsecond (the precision of stored times
/// and of cursors).
impl Scalar for chrono::DateTime<chrono::Utc> {
    const EXPECTED: &'static str = "an RFC 3339 timestamp";
    fn from_text(text: &str) -> Result<Self, String> {
        use chrono::SubsecRound;
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&chrono::Utc).trunc_subsecs(6))
            .map_err(|e| {
                format!("{text:?} is not an RFC 3339 timestamp ({e}), e.g. 2026-11-28T09:00:00Z")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, Serialize)]
    struct Probe {
        #[serde(default, with = "many", skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
        #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
        flag: Option<bool>,
        #[serde(default, with = "one", skip_serializing_if = "Option::is_none")]
        ms: Option<f64>,
    }

    fn read(value: serde_json::Value) -> Result<Probe, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn text_and_json_give_the_same_value() {
        let from_text = read(json!({"names": "a", "flag": "true", "ms": "12.5"})).expect("text");
        let from_json = read(json!({"names": ["a"], "flag": true, "ms": 12.5})).expect("json");
        assert_eq!(from_text.names, from_json.names);
        assert_eq!(from_text.flag, Some(true));
        assert_eq!(from_json.ms, Some(12.5));
        assert_eq!(
            serde_json::to_value(&from_text).expect("ser"),
            json!({"names": "a", "flag": true, "ms": 12.5}),
            "one value is written back alone"
        );
        let two = read(json!({"names": ["a", "b"]})).expect("two");
        assert_eq!(
            serde_json::to_value(&two).expect("ser"),
            json!({"names": ["a", "b"]})
        );
    }

    #[test]
    fn repeats_empties_nulls_and_wrong_shapes_are_refused_clearly() {
        let cases = [
            (json!({"flag": ["true", "false"]}), "may be given only once"),
            (json!({"flag": "maybe"}), "is not `true` or `false`"),
            (json!({"names": ""}), "must not be empty"),
            (json!({"names": ["a", ""]}), "must not be empty"),
            (json!({"names": null}), "must not be null"),
            (json!({"names": {"a": 1}}), "a string or an array of them"),
            (json!({"ms": -1}), "is not a number ≥ 0"),
            (json!({"names": false}), "a boolean is not a string"),
            (json!({"names": [1]}), "a number is not a string"),
            (json!({"names": vec!["x"; 101]}), "at most 100 values"),
        ];
        for (value, want) in cases {
            let error = read(value.clone()).expect_err("refused");
            assert!(error.contains(want), "{value}: {error}");
        }
    }
}
