//! A string that must never reach a log, an error message or `state inspect`.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// Holds a credential. `Debug` and `Display` print `[redacted]`; the value is only reachable
/// through [`Secret::expose`], so every place that uses it is easy to find.
///
/// It deliberately does not implement `Serialize`: a config or state dump cannot leak it by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Environment overrides may turn an all-digit secret into a number; keep it as text.
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(Self(s)),
            serde_json::Value::Number(n) => Ok(Self(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a string secret, found {}",
                crate::text::value_kind(&other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn numeric_secret_from_environment_stays_text() {
        let secret: Secret = serde_json::from_str("12345").unwrap();
        assert_eq!(secret.expose(), "12345");
        assert!(serde_json::from_str::<Secret>("[1]").is_err());
    }
}
