//! W3C trace context: the `traceparent` header (`00-<trace id>-<parent id>-<flags>`, lowercase hex).
//!
//! The intake runs each command in a `command` span that carries the caller's trace id and parent span id,
//! so that what a node logs about a command joins the caller's trace. Commands the process managers send
//! carry a `traceparent` whose trace id is the flow's correlation id (a UUID is 128 bits, as a trace id is),
//! so every command of one job shares one trace. A malformed header is ignored, as the W3C recommendation
//! says a receiver must: it never fails a command.

use std::fmt;

use weft_events::domain::ids::Uuid;

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace, never zero.
    pub trace_id: u128,
    /// The span of the sender, never zero.
    pub parent_id: u64,
    /// The trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid version-00 (or later, read as 00) trace parent.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let lower_hex = |s: &[u8]| !s.is_empty() && s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if bytes.len() < 55 || !lower_hex(&bytes[..2]) || &text[..2] == "ff" {
            return None;
        }
        // Version 00 is exactly 55 characters; a later version may append fields after a dash.
        if (&text[..2] == "00" && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let (trace, parent, flags) = (&bytes[3..35], &bytes[36..52], &bytes[53..55]);
        if !lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) {
            return None;
        }
        let trace_id = u128::from_str_radix(&text[3..35], 16).ok()?;
        let parent_id = u64::from_str_radix(&text[36..52], 16).ok()?;
        let flags = u8::from_str_radix(&text[53..55], 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(Self { trace_id, parent_id, flags })
    }

    /// The trace parent of a command sent within the flow `correlation`, from the span `span` (the
    /// command's id, say): trace id = the correlation id, parent id = the span's last 64 bits, sampled.
    pub fn of_flow(correlation: Uuid, span: Uuid) -> Self {
        let parent_id = (span.as_u128() as u64).max(1);
        Self { trace_id: correlation.as_u128().max(1), parent_id, flags: 1 }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent span id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        format!("{:016x}", self.parent_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_w3c_example_parses_and_prints_back() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), text);
        // A later version may carry more fields; what we know is read.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_flow_s_trace_id_is_its_correlation_id() {
        let (correlation, command) = (Uuid::now_v7(), Uuid::now_v7());
        let parent = TraceParent::of_flow(correlation, command);
        assert_eq!(parent.trace_id_hex(), correlation.simple().to_string());
        assert_eq!(TraceParent::parse(&parent.to_string()), Some(parent));
    }
}
