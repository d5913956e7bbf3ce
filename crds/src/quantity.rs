//! Kubernetes resource quantities (`500m`, `512Mi`, `20Gi`, `1.5`), parsed for the two
//! places that need numbers rather than strings: validation, and the appliance, which
//! hands Docker plain byte and nano-CPU counts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A quantity as a user wrote it, validated on parse. Serialised back verbatim so
/// that what we apply is what the user wrote.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct Quantity(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a Kubernetes quantity (examples: 500m, 2, 512Mi, 20Gi): {reason}")]
pub struct QuantityError {
    pub value: String,
    pub reason: &'static str,
}

impl Quantity {
    pub fn parse(value: &str) -> Result<Self, QuantityError> {
        parse_quantity(value)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quantity as a number of base units (bytes for memory and storage, cores for
    /// CPU): `500m` is 0.5, `1Ki` is 1024.
    pub fn value(&self) -> f64 {
        parse_quantity(&self.0).expect("validated on construction")
    }

    /// Whole bytes, rounded up, for memory and storage sizes.
    pub fn bytes(&self) -> u64 {
        self.value().max(0.0).ceil() as u64
    }

    /// CPU in millicores, rounded up.
    pub fn millicores(&self) -> u64 {
        (self.value().max(0.0) * 1000.0).ceil() as u64
    }

    pub fn to_k8s(&self) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
        k8s_openapi::apimachinery::pkg::api::resource::Quantity(self.0.clone())
    }
}

impl TryFrom<String> for Quantity {
    type Error = QuantityError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        parse_quantity(&value)?;
        Ok(Self(value))
    }
}

impl From<Quantity> for String {
    fn from(q: Quantity) -> Self {
        q.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The same pattern the API server uses for resource.Quantity, so kubectl
        // users get the error before the operator ever sees the object.
        schemars::json_schema!({
            "type": "string",
            "pattern": QUANTITY_PATTERN,
        })
    }
}

/// Kubernetes' own quantity grammar (apimachinery `resource.Quantity`), without the
/// leading minus: no resource here can be negative.
pub const QUANTITY_PATTERN: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

fn parse_quantity(value: &str) -> Result<f64, QuantityError> {
    let err = |reason| QuantityError {
        value: value.to_owned(),
        reason,
    };
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed != value {
        return Err(err("it is empty or has surrounding spaces"));
    }
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    if number.is_empty() || number == "+" || number == "-" || number.matches('.').count() > 1 {
        return Err(err("it does not start with a number"));
    }
    if number[1..].contains(['+', '-']) {
        return Err(err("a sign may only lead the number"));
    }
    let base: f64 = number.parse().map_err(|_| err("the number is malformed"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..]
                .parse()
                .map_err(|_| err("the exponent is malformed"))?;
            10f64.powi(power)
        }
        _ => return Err(err("the unit suffix is unknown")),
    };
    if base < 0.0 {
        return Err(err("a resource quantity cannot be negative"));
    }
    Ok(base * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_users_write() {
        let cases = [
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5", 1.5),
            ("512Mi", 512.0 * 1024.0 * 1024.0),
            ("20Gi", 20.0 * 1024.0 * 1024.0 * 1024.0),
            ("1G", 1e9),
            ("1e3", 1000.0),
        ];
        for (text, expected) in cases {
            let q = Quantity::parse(text).unwrap();
            assert!((q.value() - expected).abs() < 1e-6, "{text}: {}", q.value());
        }
        assert_eq!(Quantity::parse("250m").unwrap().millicores(), 250);
        assert_eq!(Quantity::parse("1Ki").unwrap().bytes(), 1024);
    }

    #[test]
    fn rejects_what_the_api_server_rejects() {
        for bad in [
            "", " 1Gi", "Gi", "1GB", "1.2.3", "-1Gi", "1-2", "lots", "1Gi ",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn the_schema_pattern_agrees_with_the_parser() {
        let pattern = regex_lite(QUANTITY_PATTERN);
        for good in ["500m", "2", "512Mi", "20Gi", "1e3", ".5"] {
            assert!(pattern(good), "{good}");
            assert!(Quantity::parse(good).is_ok(), "{good}");
        }
        for bad in ["1GB", "Gi", "1.2.3", "-1Gi"] {
            assert!(!pattern(bad), "{bad}");
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let re = regex::Regex::new(pattern).unwrap();
        move |s| re.is_match(s)
    }
}
