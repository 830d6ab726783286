//! How request fields are read where serde's defaults differ from what the
//! OpenAPI document (JSON Schema) says:
//!
//! - integers as JSON means them: `5` and `5.0` are the same number (JSON
//!   Schema's `integer` is any number with a zero fractional part), so an
//!   integer field accepts both; a fraction, a negative number, a string or
//!   a value past `u64` is still refused;
//! - objects as objects: serde's derived structs also accept an array of
//!   the fields in order (`[3000, 5000, null]`), which the schema does not.

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// `#[serde(default, deserialize_with = "crate::de::opt_object")]`: an
/// optional struct, given as a JSON object (not an array) or `null`.
pub fn opt_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_option(OptObject(PhantomData))
}

struct OptObject<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OptObject<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(Object(PhantomData)).map(Some)
    }
}

/// A struct given as a JSON object (not an array): for a whole request
/// body, `de::object(&mut serde_json::Deserializer::from_slice(body))`.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(Object(PhantomData))
}

struct Object<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// `#[serde(default, deserialize_with = "crate::de::opt_u64")]`: an
/// optional non-negative integer, `null` or absent for `None`.
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptU64)
}

/// `#[serde(deserialize_with = "crate::de::integer")]`: a required
/// non-negative integer (integral floats such as `2.0` count, as JSON
/// Schema's `integer` does).
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(U64)
}

struct OptU64;

impl<'de> Visitor<'de> for OptU64 {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(U64).map(Some)
    }
}

/// `#[serde(default, deserialize_with = "crate::de::opt_index_list")]`: an
/// optional list of non-negative integers below 2^32 (integral floats such
/// as `2.0` count, as JSON Schema's `integer` does), `null` or absent for `None`.
pub fn opt_index_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    let list: Option<Vec<Index>> = Option::deserialize(d)?;
    Ok(list.map(|l| l.into_iter().map(|i| i.0).collect()))
}

/// One element of [`opt_index_list`].
struct Index(u32);

impl<'de> Deserialize<'de> for Index {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Index, D::Error> {
        let v = d.deserialize_any(U64)?;
        u32::try_from(v).map(Index).map_err(|_| de::Error::invalid_value(de::Unexpected::Unsigned(v), &"an index"))
    }
}

struct U64;

impl Visitor<'_> for U64 {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        // 2^64 is exactly representable; every integral f64 below it fits.
        if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(v as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_u64")]
        n: Option<u64>,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Inner {
        a: Option<u64>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Outer {
        #[serde(default, deserialize_with = "super::opt_object")]
        inner: Option<Inner>,
    }

    #[test]
    fn nested_structs_are_objects() {
        let o = |json: &str| serde_json::from_str::<Outer>(json).map(|o| o.inner);
        assert_eq!(o("{}").ok(), Some(None));
        assert_eq!(o(r#"{"inner": null}"#).ok(), Some(None));
        assert_eq!(o(r#"{"inner": {"a": 1}}"#).ok(), Some(Some(Inner { a: Some(1) })));
        assert!(o(r#"{"inner": [1]}"#).is_err());
        assert!(o(r#"{"inner": 1}"#).is_err());
    }

    fn n(json: &str) -> Result<Option<u64>, serde_json::Error> {
        serde_json::from_str::<T>(json).map(|t| t.n)
    }

    #[test]
    fn integral_numbers_in_any_notation() {
        assert_eq!(n("{}").ok(), Some(None));
        assert_eq!(n(r#"{"n": null}"#).ok(), Some(None));
        assert_eq!(n(r#"{"n": 5}"#).ok(), Some(Some(5)));
        assert_eq!(n(r#"{"n": 643445.0}"#).ok(), Some(Some(643_445)));
        assert_eq!(n(r#"{"n": 1e3}"#).ok(), Some(Some(1000)));
        for bad in [r#"{"n": 1.5}"#, r#"{"n": -1}"#, r#"{"n": "5"}"#, r#"{"n": 1e20}"#, r#"{"n": true}"#] {
            assert!(n(bad).is_err(), "{bad}");
        }
    }
}
