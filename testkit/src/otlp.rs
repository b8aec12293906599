//! A small OTLP/HTTP trace receiver of a test's own: the [`FakeEndpoint`] answering every
//! export with 200, and the protobuf `ExportTraceServiceRequest`s it recorded decoded into spans.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use crate::fake_http::{Behavior, FakeEndpoint};

/// One exported span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the process that exported it.
    pub service: String,
    pub name: String,
    /// Hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attributes as text.
    pub attributes: BTreeMap<String, String>,
}

/// The receiver; point `OTEL_EXPORTER_OTLP_ENDPOINT` at [`OtlpReceiver::endpoint`].
pub struct OtlpReceiver {
    endpoint: FakeEndpoint,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        Self { endpoint: FakeEndpoint::start(vec![Behavior::Status(200, String::new())]).await }
    }

    /// The base URL (exporters append `/v1/traces`).
    pub fn endpoint(&self) -> String {
        self.endpoint.url("")
    }

    /// Every span received so far. Panics on an export that is not OTLP protobuf.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for request in self.endpoint.requests() {
            assert_eq!(request.path, "/v1/traces", "OTLP/HTTP traces are posted to /v1/traces");
            let export = ExportTraceServiceRequest::decode(request.body.as_ref()).expect("an OTLP protobuf export");
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|r| attributes(&r.attributes).remove("service.name"))
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        spans.push(ReceivedSpan {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex::encode(span.trace_id),
                            span_id: hex::encode(span.span_id),
                            parent_span_id: hex::encode(span.parent_span_id),
                            attributes: attributes(&span.attributes),
                        });
                    }
                }
            }
        }
        spans
    }
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}
