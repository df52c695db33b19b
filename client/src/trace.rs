//! W3C trace context taken from the environment and sent with every
//! request, so that the controller's spans join the caller's trace.

use reqwest::header::HeaderValue;

/// W3C trace context from the environment (`TRACEPARENT`, `TRACESTATE`,
/// the carriers OpenTelemetry names for processes started by a traced
/// caller: a CI job, a deploy script), sent with every request so that the
/// controller's spans for the calls join the caller's trace. The client
/// exports no spans of its own; without `TRACEPARENT` each request starts
/// its own trace on the controller.
pub(crate) fn trace_context_from_env() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    let Ok(parent) = std::env::var("TRACEPARENT") else {
        return headers;
    };
    match HeaderValue::from_str(parent.trim()) {
        Ok(value) if is_traceparent(parent.trim()) => {
            headers.insert("traceparent", value);
            if let Some(state) = std::env::var("TRACESTATE")
                .ok()
                .and_then(|state| HeaderValue::from_str(state.trim()).ok())
            {
                headers.insert("tracestate", state);
            }
        }
        _ => eprintln!(
            "warning: ignoring TRACEPARENT {parent:?}: not a W3C traceparent \
             (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)"
        ),
    }
    headers
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_sent() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
    }
}
