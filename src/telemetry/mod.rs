//! Seeing inside a node: [`metrics`] (Prometheus, `GET /metrics`), [`traces`] (OpenTelemetry over OTLP,
//! W3C trace context across NATS) and the log lines ([`init`]: readable text by default, or JSON lines with
//! the trace and span ids).

pub mod metrics;
pub mod traces;

use std::fmt;

use tracing::Subscriber;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, `fields`, `span`, and `trace_id`
    /// and `span_id` within a span.
    Json,
}

/// Flushes the traces not yet exported when dropped (at the end of `main`).
pub struct Guard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("weft: exporting the last traces failed: {error}");
        }
    }
}

/// Sets up the log lines (to stderr, filtered by `WEFT_LOG`, else `default_filter`) and, when the `OTEL_*`
/// variables ask for it or the lines are JSON, the OpenTelemetry layer (see [`traces`]).
pub fn init(format: LogFormat, default_filter: &str) -> Result<Guard, String> {
    init_with(format, default_filter, None)
}

/// [`init`], exporting traces to the OTLP/HTTP `endpoint` (`http://host:port`) when one is given, whatever the
/// `OTEL_*` variables say (`weft bench nats`, to its own receiver).
pub fn init_with(format: LogFormat, default_filter: &str, endpoint: Option<&str>) -> Result<Guard, String> {
    let filter = || EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let export = endpoint.is_some() || traces::exporting();
    let provider = (export || format == LogFormat::Json).then(|| traces::provider(export, endpoint)).transpose()?;
    let lines: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter()).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let spans = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // Weft's own spans, whatever the log level (they are few per command, and made only when traced),
        // asked at each span (the benchmark turns tracing off and on); every other callsite is
        // never of interest, once and for all (the libraries' own trace events cost nothing).
        let ours =
            tracing_subscriber::filter::dynamic_filter_fn(|_, _| traces::enabled()).with_callsite_filter(|meta| {
                match meta.is_span() && meta.target().starts_with("weft") {
                    true => tracing::subscriber::Interest::sometimes(),
                    false => tracing::subscriber::Interest::never(),
                }
            });
        // Without the source location and the busy/idle times on every span: per command they cost more than
        // they tell (the span's name and fields say where it is).
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("weft"))
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            // Spans are entered at each poll of their future; what needs the trace context asks the span.
            .with_context_activation(false)
            .with_filter(ours)
    });
    tracing_subscriber::registry().with(lines).with(spans).try_init().map_err(|e| e.to_string())?;
    if provider.is_some() {
        traces::started();
    }
    Ok(Guard(provider))
}

/// Turns metrics and traces on or off together: the halves of `weft bench nats`'s telemetry case.
pub fn set_enabled(on: bool) {
    metrics::set_recording(on);
    traces::set_tracing(on);
}

/// The JSON line format; see [`LogFormat::Json`].
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        use opentelemetry::trace::TraceContextExt as _;
        use serde_json::{Map, Value};
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let meta = event.metadata();
        let now = weft_events::Timestamp::now().0;
        let timestamp = chrono::DateTime::from_timestamp_micros(now)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default();
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("message".into(), fields.remove("message").unwrap_or(Value::Null));
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        // The current span, whether or not this layer's filter lets it through (a span the log level leaves
        // out still names its trace).
        let current = tracing::Span::current();
        if let Some(span) = current.metadata() {
            line.insert("span".into(), span.name().into());
            let context = current.context();
            let found = context.span();
            let ids = found.span_context();
            if ids.is_valid() {
                line.insert("trace_id".into(), ids.trace_id().to_string().into());
                line.insert("span_id".into(), ids.span_id().to_string().into());
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields as JSON values.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}
