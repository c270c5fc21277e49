"""Exports one span with the real OpenTelemetry Python SDK, its headers and TLS files taken
from the environment (OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_CERTIFICATE,
OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY) as a Daena service
sets them; an https:// ENDPOINT is reached over TLS.

Usage: send_with_token.py PROTOCOL ENDPOINT, PROTOCOL being "grpc" or "http".
Prints the export result; exits 0 if the export succeeded, 2 if it failed.
"""

import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult


class Recording:
    """Passes spans on to the exporter and remembers its results."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def exporter(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, timeout=5)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, timeout=5)


def main():
    protocol, endpoint = sys.argv[1], sys.argv[2]
    recording = Recording(exporter(protocol, endpoint))
    provider = TracerProvider(resource=Resource.create({"service.name": "daena-backend"}))
    provider.add_span_processor(SimpleSpanProcessor(recording))
    provider.get_tracer("interop").start_span("council.round").end()
    provider.shutdown()
    succeeded = recording.results == [SpanExportResult.SUCCESS]
    print(f"{protocol} to {endpoint}: {'SUCCESS' if succeeded else 'FAILURE'}")
    sys.exit(0 if succeeded else 2)


if __name__ == "__main__":
    main()
