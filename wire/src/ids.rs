//! Identifier newtypes with parsing constructors.

use serde::Serialize;
use utoipa::ToSchema;

/// Longest identifier accepted. Keeps derived XA gids (PostgreSQL: under 200
/// bytes; MySQL: gtrid and bqual at most 64 bytes each) within their limits.
pub const MAX_ID_LEN: usize = 64;

/// The shape of an identifier as a JSON Schema `pattern`: 1 to
/// [`MAX_ID_LEN`] ASCII letters, digits, `-`, `_`, `.` and `:`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty string.
    #[error("identifier is empty")]
    Empty,
    /// Longer than [`MAX_ID_LEN`] bytes.
    #[error("identifier is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// A character outside `[A-Za-z0-9_.:-]`.
    #[error("identifier contains {0:?}; only ASCII letters, digits, '-', '_', '.' and ':' are allowed")]
    BadChar(char),
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
        return Err(IdError::BadChar(c));
    }
    Ok(())
}

/// The parts every validated text newtype shares: `parse` through
/// `$validate` (errors `$err`), `as_str`, `Display`, `FromStr`, and a
/// `Deserialize` that parses (its error message made by `$message` from the
/// validation error).
macro_rules! validated_text {
    ($name:ident, $err:ty, $validate:path, |$e:ident| $message:expr) => {
        impl $name {
            /// Parses and validates a value received from outside.
            pub fn parse(s: impl Into<String>) -> Result<Self, $err> {
                let s = s.into();
                $validate(&s)?;
                Ok(Self(s))
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                Self::parse(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                Self::parse(s).map_err(|$e| serde::de::Error::custom($message))
            }
        }
    };
}
pub(crate) use validated_text;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, example = "01938f7a-7c2e-7b1a-9d4e-2f0c1a2b3c4d")]
        pub struct $name(String);

        validated_text!($name, IdError, validate, |e| e);

        impl $name {
            /// A fresh time-ordered identifier (UUIDv7 text).
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }
        }
    };
}

id_type!(
    /// Global transaction id, chosen by the coordinator.
    Xid
);
id_type!(
    /// Branch id, chosen by the coordinator.
    BranchId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let x = Xid::generate();
        assert_eq!(Xid::parse(x.as_str()).as_ref(), Ok(&x));
        assert_eq!(x.as_str().len(), 36);
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(Xid::parse(""), Err(IdError::Empty));
        assert_eq!(Xid::parse("a".repeat(65)), Err(IdError::TooLong));
        assert_eq!(Xid::parse("x'; drop"), Err(IdError::BadChar('\'')));
        assert!(BranchId::parse("abc-DEF_1.2:3").is_ok());
        assert!(serde_json::from_str::<Xid>("\"bad id\"").is_err());
    }
}
