//! What the coordinator accepts in a request, defined once.
//!
//! The coordinator checks requests with these functions, and its OpenAPI
//! document declares the same limits (built from these constants), so that a
//! request the schema allows is accepted and one it forbids is refused:
//! a client generated from the document never meets a hidden rule.
//!
//! Lengths count characters (Unicode scalar values), as JSON Schema's
//! `maxLength` does, not bytes.

use std::sync::OnceLock;

/// Longest transaction `name`.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest `resource`.
pub const MAX_RESOURCE_CHARS: usize = 128;
/// Longest `callback_url`.
pub const MAX_CALLBACK_URL_CHARS: usize = 2048;
/// Most `lock_keys` in one request.
pub const MAX_LOCK_KEYS: usize = 10_000;
/// Longest lock key. 512 characters of 4 bytes stay under PostgreSQL's
/// B-tree entry limit (2704 bytes) for the lock table's primary key.
pub const MAX_LOCK_KEY_CHARS: usize = 512;
/// Longest phase-1 report `detail`.
pub const MAX_DETAIL_CHARS: usize = 4096;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Largest page of `GET /v1/transactions`.
pub const MAX_PAGE: u32 = 500;
/// Page size of `GET /v1/transactions` without `limit`.
pub const DEFAULT_PAGE: u32 = 50;

/// Pattern of a string without U+0000, which PostgreSQL cannot store in
/// `text` or `jsonb`.
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";
/// Pattern of an `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// A decimal octet, without leading zeros (WHATWG URL parsing reads
/// `010` as octal).
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])";
/// A DNS label: letters and digits, hyphens only between them (so no
/// `xn--` label, which would have to be valid punycode).
const LABEL: &str = "[A-Za-z0-9]+(-[A-Za-z0-9]+)*";
/// The last label of a DNS name starts with a letter: URL parsing reads a
/// host that ends in a number as IPv4.
const LAST_LABEL: &str = "[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*";
/// One group of an IPv6 address.
const H16: &str = "[0-9A-Fa-f]{1,4}";
/// A port, 0 to 65535, without leading zeros.
const PORT: &str = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)";
/// Characters of a path or query: RFC 3986's unreserved and sub-delims,
/// `:`, `@`, `/`, `?` and `%`. No space, quote, angle bracket or fragment.
const PCHAR: &str = "[A-Za-z0-9._~!$&'()*+,;=:@%/?-]";

/// The shape of a `callback_url`, unanchored: `http` or `https`, a host
/// (DNS name, dotted IPv4 or bracketed IPv6), an optional port, then an
/// optional path and query. No user info, no fragment.
pub fn callback_url_shape() -> &'static str {
    static SHAPE: OnceLock<String> = OnceLock::new();
    SHAPE.get_or_init(|| {
        let ipv4 = format!("({OCTET}\\.){{3}}{OCTET}");
        let ipv6 = [
            format!("({H16}:){{7}}{H16}"),
            format!("({H16}:){{1,7}}:"),
            format!("({H16}:){{1,6}}:{H16}"),
            format!("({H16}:){{1,5}}(:{H16}){{1,2}}"),
            format!("({H16}:){{1,4}}(:{H16}){{1,3}}"),
            format!("({H16}:){{1,3}}(:{H16}){{1,4}}"),
            format!("({H16}:){{1,2}}(:{H16}){{1,5}}"),
            format!("{H16}:(:{H16}){{1,6}}"),
            format!(":((:{H16}){{1,7}}|:)"),
        ]
        .join("|");
        let host = format!("(({LABEL}\\.)*{LAST_LABEL}\\.?|{ipv4}|\\[({ipv6})\\])");
        format!("https?://{host}(:{PORT})?(/{PCHAR}*|\\?{PCHAR}*)?")
    })
}

/// [`callback_url_shape`] anchored: the `pattern` of `callback_url`.
pub fn callback_url_pattern() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| format!("^({})$", callback_url_shape()))
}

/// Why a request field is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    /// Too short or too long.
    #[error("{field} must be {min} to {max} characters")]
    Length {
        /// The field.
        field: &'static str,
        /// Fewest characters.
        min: usize,
        /// Most characters.
        max: usize,
    },
    /// Contains U+0000.
    #[error("{field} must not contain the character U+0000")]
    Nul {
        /// The field.
        field: &'static str,
    },
    /// A number too large to read back from the database.
    #[error("{field} holds a number larger than {max:e} in magnitude")]
    Number {
        /// The field.
        field: &'static str,
        /// The largest magnitude.
        max: f64,
    },
    /// Too many items.
    #[error("{field} has more than {max} items")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Most items.
        max: usize,
    },
    /// Not of the shape the field requires.
    #[error("{field} {value:?} is not {shape}")]
    Shape {
        /// The field.
        field: &'static str,
        /// The refused value.
        value: String,
        /// What it should be.
        shape: &'static str,
    },
}

/// A string of `min` to `max` characters without U+0000.
pub fn check_text(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), LimitError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(LimitError::Length { field, min, max });
    }
    if s.contains('\0') {
        return Err(LimitError::Nul { field });
    }
    Ok(())
}

/// A `callback_url`: at most [`MAX_CALLBACK_URL_CHARS`], matching
/// [`callback_url_pattern`].
pub fn check_callback_url(s: &str) -> Result<(), LimitError> {
    static RE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    check_text("callback_url", s, 1, MAX_CALLBACK_URL_CHARS)?;
    // The pattern is a constant checked by a unit test: it always compiles.
    let matches =
        RE.get_or_init(|| regex::Regex::new(callback_url_pattern()).ok()).as_ref().is_some_and(|re| re.is_match(s));
    if !matches {
        return Err(LimitError::Shape {
            field: "callback_url",
            value: s.chars().take(100).collect(),
            shape: "an absolute http(s) URL: scheme, host, optional port, path and query, no user info or fragment",
        });
    }
    Ok(())
}

/// A list of lock keys: at most [`MAX_LOCK_KEYS`], each 1 to
/// [`MAX_LOCK_KEY_CHARS`] characters without U+0000.
pub fn check_lock_keys(keys: &[String]) -> Result<(), LimitError> {
    if keys.len() > MAX_LOCK_KEYS {
        return Err(LimitError::TooMany { field: "lock_keys", max: MAX_LOCK_KEYS });
    }
    keys.iter().try_for_each(|k| check_text("each lock key", k, 1, MAX_LOCK_KEY_CHARS))
}

/// Largest magnitude of a number in a payload. `jsonb` keeps a number
/// exactly and prints it in full, and a number this close to `f64::MAX`
/// printed in full does not parse back as a double: refused, so that a
/// stored payload always reads back.
pub const MAX_PAYLOAD_NUMBER: f64 = 1e308;

/// A JSON value none of whose strings or keys contains U+0000 (which
/// `jsonb` refuses) and whose numbers are at most [`MAX_PAYLOAD_NUMBER`] in
/// magnitude.
pub fn check_json(field: &'static str, v: &serde_json::Value) -> Result<(), LimitError> {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Err(LimitError::Nul { field }),
        Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() > MAX_PAYLOAD_NUMBER) => {
            Err(LimitError::Number { field, max: MAX_PAYLOAD_NUMBER })
        }
        Value::Array(a) => a.iter().try_for_each(|v| check_json(field, v)),
        Value::Object(o) => o.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return Err(LimitError::Nul { field });
            }
            check_json(field, v)
        }),
        _ => Ok(()),
    }
}

/// An `Idempotency-Key`: 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] visible ASCII
/// characters ([`IDEMPOTENCY_KEY_PATTERN`]).
pub fn check_idempotency_key(key: &str) -> Result<(), LimitError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(LimitError::Shape {
            field: "Idempotency-Key",
            value: key.chars().take(100).collect(),
            shape: "1 to 255 visible ASCII characters",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_url_pattern_compiles_and_means_what_it_says() {
        assert!(regex::Regex::new(callback_url_pattern()).is_ok());
        for ok in [
            "http://127.0.0.1:8080/tandem/tcc/callback",
            "https://inventory.internal/cb?x=1",
            "http://localhost",
            "http://3com.example:80",
            "http://a.b-c.d.:65535/",
            "http://[::1]:9/x",
            "http://[2001:db8::8a2e:370:7334]/",
        ] {
            assert_eq!(check_callback_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ftp://host/",
            "http://",
            "http://user@host/",
            "http://host/#frag",
            "http://host:65536/",
            "http://1.2.3.256/",
            "http://010.0.0.1/",
            "http://a..b/",
            "http://xn--zz/",
            "http://host/a b",
            "HTTP://host/",
            "http://host.9/",
            "http://1.2.3.4.5/",
        ] {
            assert!(check_callback_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lengths_count_characters_and_nul_is_refused() {
        assert_eq!(check_text("name", &"é".repeat(MAX_NAME_CHARS), 0, MAX_NAME_CHARS), Ok(()));
        assert!(check_text("name", &"é".repeat(MAX_NAME_CHARS + 1), 0, MAX_NAME_CHARS).is_err());
        assert_eq!(check_text("name", "a\0b", 0, 10), Err(LimitError::Nul { field: "name" }));
        assert!(check_text("resource", "", 1, 10).is_err());
        assert!(check_json("payload", &serde_json::json!({"a": ["x\u{0}"]})).is_err());
        assert!(check_json("payload", &serde_json::json!({"a\u{0}": 1})).is_err());
        assert_eq!(check_json("payload", &serde_json::json!([1, "two", {"three": null}, 1e308, -1e308])), Ok(()));
        assert!(check_json("payload", &serde_json::json!({"n": [1.7976931348623157e308]})).is_err());
        assert!(check_idempotency_key("k-1").is_ok());
        assert!(check_idempotency_key("with space").is_err());
        assert!(check_lock_keys(&["".to_owned()]).is_err());
    }
}
