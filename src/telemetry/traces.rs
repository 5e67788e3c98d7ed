//! Traces with OpenTelemetry: the node's `tracing` spans exported over OTLP (HTTP, protobuf) when the
//! standard `OTEL_*` variables ask for it, and the W3C trace context carried across NATS.
//!
//! **On or off.** Off by default. On when `OTEL_TRACES_EXPORTER=otlp`, or when it is unset and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn it off. The exporter reads the other `OTEL_EXPORTER_OTLP_*` variables
//! (headers, time-out, compression), the SDK `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and
//! `OTEL_BSP_*`, and the resource `OTEL_SERVICE_NAME` (default `weft`) and `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! **Spans.** `command` (every command a host runs, `weft_actors::trace`), `append` (the store's, within it),
//! `process` (a process manager's step), `task` and `provider_call` (an agent's work), `projection_batch`.
//!
//! **One trace per flow.** A flow's trace id is its correlation id (a command outside any flow starts one
//! with its own id: see `weft_actors::trace`). A command's span id is derived from its id, so a process
//! handling an event makes its span a child of the command that caused it from the event alone
//! (`Flows`, a `weft_actors::trace::Tracer`). Commands sent over NATS carry the sender's span in a W3C
//! `traceparent` header ([`inject`]); the intake runs the command within it ([`extract`], [`within`]). A
//! caller's `traceparent` with no correlation id makes its trace the flow's; a caller's span of another trace
//! than the flow's is linked, not parented.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use weft_events::Envelope;
use weft_events::domain::ids::Uuid;

use crate::bus::Headers;

/// Whether spans go to OpenTelemetry in this process.
static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are traced while [`ON`]: always, but for the halves of a benchmark that measure their cost.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns tracing on or off (`weft bench nats`'s telemetry case).
pub fn set_tracing(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether Weft's spans go to the OpenTelemetry layer now (read by its filter for each span).
pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the `OTEL_*` variables ask for traces to be exported; see the module doc.
pub fn exporting() -> bool {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("otlp") => true,
        Some("none") => false,
        Some(other) => {
            eprintln!("weft: OTEL_TRACES_EXPORTER={other:?} is not supported (otlp or none); traces are off");
            false
        }
        None => var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some(),
    }
}

/// The tracer provider: exporting over OTLP when `export`, otherwise only giving spans their ids (for the
/// JSON log lines).
pub(super) fn provider(export: bool, endpoint: Option<&str>) -> Result<SdkTracerProvider, String> {
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    if export && !matches!(protocol.trim(), "" | "http/protobuf") {
        return Err(format!("OTEL_EXPORTER_OTLP_PROTOCOL={protocol:?}: Weft exports over http/protobuf only"));
    }
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("weft");
    }
    let mut builder =
        SdkTracerProvider::builder().with_id_generator(FlowIds::default()).with_resource(resource.build());
    if export {
        use opentelemetry_otlp::WithExportConfig as _;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = endpoint {
            exporter = exporter.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
        }
        let exporter = exporter.build().map_err(|e| format!("the OTLP exporter: {e}"))?;
        builder = match endpoint {
            // The benchmark's own receiver: a queue deep enough that no span of its load is dropped, sent in large
            // batches.
            Some(_) => {
                use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};
                let config = BatchConfigBuilder::default()
                    .with_max_queue_size(1 << 16)
                    .with_max_export_batch_size(4096)
                    .with_scheduled_delay(std::time::Duration::from_millis(200))
                    .build();
                builder.with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(config).build())
            }
            None => builder.with_batch_exporter(exporter),
        };
    }
    Ok(builder.build())
}

/// Marks spans as traced from now on and installs the flows' tracer in the actors.
pub(super) fn started() {
    ON.store(true, Ordering::Relaxed);
    weft_actors::trace::install(Box::new(Flows));
}

/// Whether spans are traced in this process.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed) && enabled()
}

/// The trace context a message carries (none: an empty context).
pub fn extract(headers: &Headers) -> opentelemetry::Context {
    if headers.is_empty() {
        return opentelemetry::Context::new();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Runs `future` within `context`: spans it starts without a parent of their own are its children. A
/// context without a span (a message without a `traceparent`) changes nothing, and costs nothing per poll.
pub async fn within<F: Future>(context: opentelemetry::Context, future: F) -> F::Output {
    if context.has_active_span() {
        opentelemetry::context::FutureExt::with_context(future, context).await
    } else {
        future.await
    }
}

/// Adds the current span's trace context to a message's headers (nothing when traces are off).
pub fn inject(headers: &mut Headers) {
    if !on() {
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// The trace id of the caller's valid `traceparent`, as a UUID (the flow it names).
pub fn trace_of(headers: &Headers) -> Option<Uuid> {
    let context = extract(headers);
    let span = context.span();
    let found = span.span_context();
    found.is_valid().then(|| Uuid::from_u128(u128::from_be_bytes(found.trace_id().to_bytes())))
}

/// The trace id of a flow.
pub fn trace_id(flow: Uuid) -> TraceId {
    TraceId::from(flow.as_u128().max(1))
}

/// The span id of a command's `command` span.
pub fn span_id(command: Uuid) -> SpanId {
    SpanId::from((command.as_u128() as u64).max(1))
}

/// Ties the actors' spans into one trace per flow; see the module doc.
struct Flows;

impl weft_actors::trace::Tracer for Flows {
    fn command(&self, span: &tracing::Span, flow: Uuid, command_id: Uuid) {
        let trace = trace_id(flow);
        let current = tracing::Span::current();
        let parent = if current.is_none() { opentelemetry::Context::current() } else { current.context() };
        let caller = parent.span().span_context().clone();
        if caller.is_valid() && caller.trace_id() != trace {
            // The first span of its flow's trace here; the caller, in another trace, is linked. (Without a valid
            // caller the span is a root already, and takes the flow's trace id below.)
            let _ = span.set_parent(opentelemetry::Context::new());
            span.add_link(caller);
        }
        // Starting the span now takes the ids given.
        NEXT.set(Some((trace, span_id(command_id))));
        let _ = span.context();
        NEXT.set(None);
    }

    fn caused_by(&self, span: &tracing::Span, event: &Envelope) {
        let Some(cause) = event.causation_id else { return };
        let trace = trace_id(event.correlation_id.unwrap_or(cause));
        let parent = SpanContext::new(trace, span_id(cause), TraceFlags::SAMPLED, true, TraceState::default());
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

thread_local! {
    /// The ids the next span started on this thread takes, when set ([`Flows::command`]).
    static NEXT: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for the span [`Flows::command`] starts.
#[derive(Debug, Default)]
struct FlowIds(RandomIdGenerator);

impl IdGenerator for FlowIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT.get().map_or_else(|| self.0.new_trace_id(), |(trace, _)| trace)
    }

    fn new_span_id(&self) -> SpanId {
        NEXT.get().map_or_else(|| self.0.new_span_id(), |(_, span)| span)
    }
}

struct HeaderInjector<'a>(&'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// Header names are matched without regard to case, as HTTP's are.
struct HeaderExtractor<'a>(&'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| self.0.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)).map(|(_, v)| v))
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_s_traceparent_names_its_flow_and_malformed_ones_are_ignored() {
        let headers = |value: &str| Headers::from([("traceparent".to_owned(), value.to_owned())]);
        let flow = trace_of(&headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).unwrap();
        assert_eq!(flow.simple().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let upper = Headers::from([(
            "Traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]);
        assert_eq!(trace_of(&upper), Some(flow));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_of(&headers(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn a_flow_s_trace_id_is_its_correlation_id_and_a_command_s_span_id_comes_from_its_id() {
        let (flow, command) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(format!("{}", trace_id(flow)), flow.simple().to_string());
        assert_eq!(span_id(command), span_id(command));
        assert_ne!(span_id(command), SpanId::INVALID);
    }
}
