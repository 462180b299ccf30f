//! JSON request values read the way the OpenAPI documents (JSON Schema 2020-12) describe them: an
//! `integer` is any number without a fractional part — `3` and `3.0` alike — and a field that may
//! be left out is never `null`. Shared by the control and assist APIs.

use serde::{Deserialize, Deserializer, de::Error as _};

/// A JSON number with no fractional part that fits `T` (`3.0` is the integer 3).
pub fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64>,
{
    let n = serde_json::Number::deserialize(d)?;
    let value = if let Some(u) = n.as_u64() {
        T::try_from(u).ok()
    } else if let Some(i) = n.as_i64() {
        T::try_from(i).ok()
    } else {
        n.as_f64()
            .filter(|f| f.is_finite() && f.fract() == 0.0)
            .and_then(|f| {
                // Exactly representable integers only: beyond 2^53 a float is not one number.
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if f.abs() > EXACT {
                    None
                } else if f >= 0.0 {
                    T::try_from(f as u64).ok()
                } else {
                    T::try_from(f as i64).ok()
                }
            })
    };
    value.ok_or_else(|| D::Error::custom(format!("expected an integer in range, got {n}")))
}

/// As [`integer`], for a field that may be left out (`#[serde(default)]`) but is never `null`.
pub fn present_integer<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64>,
{
    integer(d).map(Some)
}

/// A field that may be left out (`#[serde(default)]`) but is never `null`: `"x": null` is refused
/// rather than read as absent.
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::integer")]
        n: u16,
        #[serde(default, deserialize_with = "super::present_integer")]
        m: Option<i64>,
    }

    fn parse(s: &str) -> Result<T, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_as_json_schema_counts_them() {
        assert_eq!(parse(r#"{"n": 7}"#).unwrap().n, 7);
        assert_eq!(parse(r#"{"n": 7.0, "m": -2.0}"#).unwrap().m, Some(-2));
        assert_eq!(parse(r#"{"n": 1e3}"#).unwrap().n, 1000);
        for bad in [
            r#"{"n": 7.5}"#,
            r#"{"n": 70000}"#,
            r#"{"n": -1}"#,
            r#"{"n": "7"}"#,
            r#"{"n": 1, "m": null}"#,
            r#"{"n": 1, "m": 1e300}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse(r#"{"n": 1}"#).unwrap().m, None);
    }
}
