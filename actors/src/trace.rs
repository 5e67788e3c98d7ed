//! Spans that join one trace per flow: the `command` span of every command a host runs and the `process`
//! span of every event a process manager handles.
//!
//! The crate makes the spans (`tracing`, at debug level); what ties them into traces is a [`Tracer`] the node
//! installs once ([`install`]) when it exports traces. A flow's trace id is its correlation id; a command's
//! span id is derived from the command's id, so that a process handling an event, which names the command
//! that caused it (`causation_id`) and the flow (`correlation_id`), can make its span a child of that
//! command's without anything more being stored. Without a tracer the spans are plain `tracing` spans.

use std::sync::OnceLock;

use weft_events::Envelope;
use weft_events::domain::ids::Uuid;

/// Ties spans into traces; see the module doc.
pub trait Tracer: Send + Sync + 'static {
    /// A `command` span was just made, within the current span: give it the flow's trace (`flow`: the
    /// command's correlation id, or its own id without one) and the span id of `command_id`.
    fn command(&self, span: &tracing::Span, flow: Uuid, command_id: Uuid);

    /// A `process` span was just made for handling `event`: make it a child of the span of the command that
    /// caused the event, in the event's flow.
    fn caused_by(&self, span: &tracing::Span, event: &Envelope);
}

static TRACER: OnceLock<Box<dyn Tracer>> = OnceLock::new();

/// Installs the tracer, once per process; later calls change nothing.
pub fn install(tracer: Box<dyn Tracer>) {
    let _ = TRACER.set(tracer);
}

/// The flow of a command: its correlation id, or its own id.
pub fn flow_of(correlation_id: Option<Uuid>, command_id: Uuid) -> Uuid {
    correlation_id.unwrap_or(command_id)
}

/// A new `command` span, joined to its flow's trace.
pub(crate) fn command_span(
    kind: &'static str,
    command: &'static str,
    stream: &str,
    flow: Uuid,
    id: Uuid,
) -> tracing::Span {
    let span = tracing::debug_span!("command", aggregate = kind, command, stream);
    if let Some(tracer) = TRACER.get()
        && !span.is_disabled()
    {
        tracer.command(&span, flow, id);
    }
    span
}

/// A new `process` span for `event`, a child of the span of the command that caused it.
pub(crate) fn process_span(process: &'static str, event: &Envelope) -> tracing::Span {
    let span = tracing::debug_span!(
        "process",
        process,
        event_type = &*event.event_type,
        stream = event.stream.as_str(),
        position = event.position
    );
    if let Some(tracer) = TRACER.get()
        && !span.is_disabled()
    {
        tracer.caused_by(&span, event);
    }
    span
}
