//! The custom scalars: `DateTime` (RFC 3339, always UTC with milliseconds) and `JSON`
//! (RFC 8259). Both replace async-graphql's built-ins, whose `DateTime` prints as many
//! fractional digits as the value has and whose scalars carry no `@specifiedBy`.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime, SecondsFormat, Utc};

/// The `DateTime` scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

/// An instant, as an RFC 3339 date-time string. Every `DateTime` the API answers is UTC
/// with exactly three fractional digits (milliseconds, the precision the store keeps):
/// `2026-12-06T10:15:02.123Z`. Input may be any RFC 3339 date-time with an offset
/// (`Z` or `±hh:mm`); digits below the millisecond are dropped when stored.
#[Scalar(name = "DateTime", specified_by_url = "https://www.rfc-editor.org/rfc/rfc3339")]
impl ScalarType for Timestamp {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => Ok(Timestamp(s.parse::<DateTime<Utc>>()?)),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    // Checked during validation, so a malformed value (in the document or in a variable)
    // is refused before execution as `Invalid value for argument "input.runAt"`, which
    // names the field; a parse failure at execution would only name the input type.
    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(s) if s.parse::<DateTime<Utc>>().is_ok())
    }

    fn to_value(&self) -> Value {
        Value::String(format_timestamp(self.0))
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Self {
        Timestamp(at)
    }
}

/// The one output form of every `DateTime`: UTC, milliseconds, `Z`.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The `JSON` scalar.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonValue(pub serde_json::Value);

/// Any JSON value (RFC 8259), inline: an object, array, string, number, boolean or
/// `null`, not a string holding JSON.
#[Scalar(name = "JSON", specified_by_url = "https://www.rfc-editor.org/rfc/rfc8259")]
impl ScalarType for JsonValue {
    fn parse(value: Value) -> InputValueResult<Self> {
        Ok(JsonValue(value.into_json()?))
    }

    fn is_valid(_value: &Value) -> bool {
        true
    }

    fn to_value(&self) -> Value {
        Value::from_json(self.0.clone()).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timestamp_has_milliseconds_and_z() {
        let at = DateTime::parse_from_rfc3339("2026-12-06T10:15:02.123456789+02:00").unwrap().with_timezone(&Utc);
        assert_eq!(Timestamp(at).to_value(), Value::String("2026-12-06T08:15:02.123Z".into()));
        let whole = DateTime::parse_from_rfc3339("2026-12-06T10:15:02Z").unwrap().with_timezone(&Utc);
        assert_eq!(Timestamp(whole).to_value(), Value::String("2026-12-06T10:15:02.000Z".into()));
        assert_eq!(
            Timestamp::parse(Value::String("2026-12-06T10:15:02.5+01:00".into())).unwrap().0.timestamp_millis(),
            1_796_548_502_500
        );
        assert!(Timestamp::parse(Value::String("yesterday".into())).is_err());
        assert!(Timestamp::parse(Value::Number(3.into())).is_err());
    }

    #[test]
    fn json_round_trips() {
        let value = serde_json::json!({"a": [1, 2.5, "x", null, true]});
        let parsed = JsonValue::parse(Value::from_json(value.clone()).unwrap()).unwrap();
        assert_eq!(parsed.0, value);
        assert_eq!(parsed.to_value().into_json().unwrap(), value);
    }
}
