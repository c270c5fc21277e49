"""A small FastAPI app the way Daena's backend runs it, traced with the real instrumentation.

Usage: fastapi_app.py [ENDPOINT]

ENDPOINT is the OTLP/gRPC receiver to export to (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
then $OTEL_EXPORTER_OTLP_ENDPOINT, then http://127.0.0.1:4317).

The app has the routes Daena's backend has in small: POST /api/v1/chat, whose handler makes
an `llm.exchange` span; GET /api/v1/council/{round_id}, whose handler makes a `council.round`
span; and the health probes GET /healthz and GET /readyz. FastAPIInstrumentor traces it as
it does in production: a SERVER span per request and, inside it, an INTERNAL span for every
ASGI `receive` and `send` message (`... http receive`, `... http send`, each with the
attribute `asgi.event.type`). FastAPI's TestClient (over httpx, in this process) drives it:
CHATS chat requests, COUNCILS council requests and PROBES health probes. The spans go out
with the OTLP gRPC exporter behind a BatchSpanProcessor, flushed and shut down at the end.

A second processor remembers every span the app made, so the script can say what it sent:
it prints one JSON object as its last line,
  {"spans": all spans made, "asgi_event": INTERNAL spans with asgi.event.type,
   "health_probe": SERVER spans of a health route and the spans under them,
   "probes": those SERVER spans, "dropped_by_default": spans either rule matches,
   "names": {name: count} of all spans, "kept_names": the same for the spans neither
   rule matches (what the agent's default filter lets through), "exported": spans the
   exporter reported as exported}.
Exits 1 if an export call did not succeed or a request did not answer as expected.
"""

import json
import os
import sys
from collections import Counter

from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

CHATS = 5
COUNCILS = 3
PROBES = 10
HEALTH_ROUTES = ("/healthz", "/readyz")


class Recorder(SpanProcessor):
    """Remembers every span that ends, next to the exporting processor."""

    def __init__(self):
        self.spans = []

    def on_end(self, span):
        self.spans.append(span)


class Checked(SpanExporter):
    """Passes exports on and remembers how many spans each successful call carried."""

    def __init__(self, inner):
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += 1
        return result

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)

    def shutdown(self):
        self.inner.shutdown()


class ChatRequest(BaseModel):
    message: str
    model: str = "gpt-4o-mini"


def make_app(tracer):
    app = FastAPI()

    @app.post("/api/v1/chat")
    async def chat(request: ChatRequest):
        with tracer.start_as_current_span(
            "llm.exchange",
            kind=SpanKind.CLIENT,
            attributes={"llm.model": request.model, "llm.cas_hit": False,
                        "llm.cost_usd": 0.0042, "llm.tokens.input": len(request.message)},
        ):
            return {"reply": f"echo: {request.message}"}

    @app.get("/api/v1/council/{round_id}")
    async def council(round_id: str):
        with tracer.start_as_current_span(
            "council.round",
            attributes={"council.round_id": round_id, "council.department": "research",
                        "council.phase": "debate"},
        ):
            return {"round_id": round_id, "phase": "debate"}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    return app


def drive(client):
    """Makes the requests; returns how many did not answer as expected."""
    bad = 0
    for i in range(CHATS):
        response = client.post("/api/v1/chat", json={"message": f"question {i}"})
        bad += response.status_code != 200
    for i in range(COUNCILS):
        response = client.get(f"/api/v1/council/round-{i}")
        bad += response.status_code != 200
    for i in range(PROBES):
        response = client.get(HEALTH_ROUTES[i % len(HEALTH_ROUTES)])
        bad += response.status_code != 200
    return bad


def summary(spans, exported):
    """What the app made, and what of it the agent's default filter rules match."""
    asgi = {s.context.span_id for s in spans
            if s.kind == SpanKind.INTERNAL and "asgi.event.type" in (s.attributes or {})}
    probes = {s.context.span_id for s in spans
              if s.kind == SpanKind.SERVER
              and (s.attributes or {}).get("http.route") in HEALTH_ROUTES}
    # The spans under a probe's SERVER span: its ASGI children (and anything a probe
    # handler would make), found by walking parents up to a probe.
    parent = {s.context.span_id: s.parent.span_id if s.parent else None for s in spans}

    def under_probe(span_id):
        for _ in range(len(spans)):  # a parent chain is never longer than the spans
            if span_id is None:
                return False
            if span_id in probes:
                return True
            span_id = parent.get(span_id)
        return False

    health = {s.context.span_id for s in spans if under_probe(s.context.span_id)}
    dropped = asgi | health
    return {
        "spans": len(spans),
        "asgi_event": len(asgi),
        "health_probe": len(health),
        "probes": len(probes),
        "dropped_by_default": len(dropped),
        "names": dict(Counter(s.name for s in spans)),
        "kept_names": dict(Counter(s.name for s in spans if s.context.span_id not in dropped)),
        "exported": exported,
    }


def main():
    endpoint = (sys.argv[1] if len(sys.argv) > 1
                else os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or "http://127.0.0.1:4317")
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "daena-backend", "service.version": "2.0.0",
         "deployment.environment.name": "interop"}))
    recorder = Recorder()
    exporter = Checked(OTLPSpanExporter(endpoint=endpoint, insecure=True))
    provider.add_span_processor(recorder)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("backend.utils.tracing", "2.0.0")
    app = make_app(tracer)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    with TestClient(app) as client:
        bad = drive(client)
    flushed = provider.force_flush()
    provider.shutdown()
    result = summary(recorder.spans, exporter.exported)
    print(f"{bad} bad answers, flushed: {flushed}, {exporter.failed} failed export calls",
          file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    ok = not bad and flushed and not exporter.failed and exporter.exported == len(recorder.spans)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
