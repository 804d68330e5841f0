//! Logging: `tracing` with levels from `RUST_LOG` and a pretty or JSON format.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Default filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn";

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true).with_current_span(true)).try_init(),
    };
}

/// A W3C `traceparent` for work caused by a request: the caller's trace continues when it
/// sent a valid `traceparent`, with a new span id for us; otherwise a new trace starts.
/// It travels in the Kafka headers of every message the request's writes produce.
pub fn traceparent(incoming: Option<&str>) -> String {
    use rand::RngCore;
    let mut rng = rand::rng();
    let span_id = loop {
        let id = rng.next_u64();
        if id != 0 {
            break id;
        }
    };
    let trace_id = incoming.and_then(parse_trace_id).unwrap_or_else(|| {
        loop {
            let id = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            if id != 0 {
                break id;
            }
        }
    });
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

/// The trace id of a well-formed version-00 `traceparent`.
fn parse_trace_id(value: &str) -> Option<u128> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if parts.next().is_some() || version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_incoming_trace_is_continued_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ours = traceparent(Some(incoming));
        assert!(ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{ours}");
        assert_ne!(ours, incoming, "a new span id");
        assert_eq!(ours.len(), 55);
    }

    #[test]
    fn malformed_incoming_traces_start_a_new_one() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let ours = traceparent(Some(bad));
            assert!(parse_trace_id(&ours).is_some(), "{bad:?} → {ours}");
            assert!(!ours.contains("4bf92f3577b34da6"), "{bad:?} is not continued");
        }
    }
}
