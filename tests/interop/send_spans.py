"""Sends Daena-shaped spans to the agent with the real OpenTelemetry Python SDK.

Usage: send_spans.py JOBS

JOBS is a JSON list of runs, made one after the other in this one process (starting the
SDK costs more than a run): {"protocol": "grpc" | "http" | "json", "endpoint": URL,
"gzip": bool, "trace": "daena" | "messy" | "mix", "out": FILE}. Each run gets its own
TracerProvider and exporter, exports one span per call (SimpleSpanProcessor), and writes
to FILE a JSON object {"requests": [...]}: for each export call, in order, the base64 of
the protobuf ExportTraceServiceRequest the SDK's own encoder makes of the exported spans.
That is the very body the gRPC and HTTP/protobuf exporters send (they call the same
encoder); the JSON exporter sends the same request in OTLP/JSON, from an encoder that
builds it field for field as the protobuf one does. So the Rust test can compare what the
backend received with what went over the wire.

Traces: "daena" is one trace the way Daena's services make it (a FastAPI request, a
council round with scout/debate/commit phases, message-bus traffic, NBMF memory and an
LLM exchange, plus a span carrying every attribute type from a second scope), with
schema URLs on the resource and on both scopes. "messy" spells the Daena attributes the
ways different services and versions do, with secrets in some values and no
service.name, for the agent to normalise, mirror and redact. "mix" is two-span traces
named mix.<kind>: an error, a slow one, a council commit, an expensive LLM call and six
ordinary ones, for tail sampling to choose from.
Exits 1 if an exporter did not report success.
"""

import base64
import json
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

RESOURCE_SCHEMA = "https://opentelemetry.io/schemas/1.30.0"
SCOPE_SCHEMA = "https://opentelemetry.io/schemas/1.37.0"
SECOND_SCOPE_SCHEMA = "https://daena.example/schemas/council/2"


class Tee(SpanExporter):
    """Remembers the protobuf encoding of what each call exports, and passes it on."""

    def __init__(self, inner):
        self.inner = inner
        self.requests = []
        self.results = []

    def export(self, spans):
        self.requests.append(encode_spans(spans).SerializeToString())
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()


def exporter(protocol, endpoint, gzip):
    if protocol == "grpc":
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=endpoint, insecure=True, compression=Compression.Gzip if gzip else None
        )
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=endpoint, compression=Compression.Gzip if gzip else Compression.NoCompression
        )
    if protocol == "json":
        from opentelemetry.exporter.otlp.common.http import Compression
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=endpoint, compression=Compression.GZIP if gzip else Compression.NONE
        )
    raise SystemExit(f"unknown protocol {protocol!r}")


def daena_trace(provider, protocol):
    tracer = provider.get_tracer("backend.utils.tracing", "2.0.0", schema_url=SCOPE_SCHEMA)
    council = provider.get_tracer(
        "backend.council", "2.0.0", schema_url=SECOND_SCOPE_SCHEMA,
        attributes={"scope.team": "council"},
    )
    with tracer.start_as_current_span(
        "POST /api/v1/council/rounds",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": "/api/v1/council/rounds",
                    "http.response.status_code": 200},
    ):
        with tracer.start_as_current_span(
            "council.round",
            attributes={"council.department": "research", "council.round_id": "round-42",
                        "council.topic": "memory tiering"},
        ) as round_span:
            round_span.add_event("round_started", {"council.agents": 5})
            for phase in ("scout", "debate", "commit"):
                with tracer.start_as_current_span(
                    "council.phase",
                    attributes={"council.phase": phase, "council.round_id": "round-42"},
                ):
                    with tracer.start_as_current_span(
                        "message_bus.publish",
                        kind=SpanKind.PRODUCER,
                        attributes={"message_bus.operation": "publish",
                                    "message_bus.topic": f"council.{phase}",
                                    "message_bus.message_id": f"msg-{phase}-1"},
                    ):
                        pass
            with tracer.start_as_current_span(
                "nbmf.write",
                attributes={"nbmf.operation": "write", "nbmf.item_id": "item-7",
                            "nbmf.class": "decision", "nbmf.tier": "L2"},
            ):
                pass
            with tracer.start_as_current_span(
                "llm.exchange",
                kind=SpanKind.CLIENT,
                attributes={"llm.model": "gpt-4o-mini", "llm.cas_hit": False,
                            "llm.near_dup": True, "llm.cost_usd": 0.0042},
                links=[Link(round_span.get_span_context(), {"link.reason": "same round"})],
            ) as llm:
                llm.add_event("checkpoint_reached", {"items_processed": 100})
                llm.set_status(Status(StatusCode.ERROR, "rate limited by provider"))
        every_type = {
            "attr.string": "scout ü 日本",
            "attr.bool": True,
            "attr.int": 2**62,
            "attr.negative": -7,
            "attr.double": 0.1234567890123,
            "attr.strings": ["l1", "l2", "l3"],
            "attr.bools": [True, False],
            "attr.ints": [1, -2, 2**40],
            "attr.doubles": [1.5, -0.25],
        }
        if protocol == "json":
            # What the JSON exporter sends as {"arrayValue":{}}, which strict decoders refuse.
            every_type["attr.empty"] = []
        with council.start_as_current_span("daena.every_type", attributes=every_type):
            pass


def messy_trace(provider):
    tracer = provider.get_tracer("backend.utils.tracing", "2.0.0")
    with tracer.start_as_current_span(
        "council.round", attributes={"Council_Round_Id": 42, "council-department": " research ",
                                     "Council_Topic": " memory tiering "}
    ):
        for name, phase in (("scout", "Scout"), ("debate", "debate "), ("commit", "COMMIT")):
            with tracer.start_as_current_span(f"phase.{name}", attributes={"council.Phase": phase}):
                pass
        with tracer.start_as_current_span(
            "message_bus.publish",
            attributes={"message_bus.operation": "Publish", "Message_Bus.Topic": "council.events",
                        "message_bus.message_id": 7, "Message-Bus.Sender": " agent-scout-3 "},
        ) as publish:
            publish.add_event("RateLimited", {"Retry_After_Ms": "250"})
        for name, tier in (("tier.int", 1), ("tier.upper", "L2"), ("tier.word", "tier3")):
            with tracer.start_as_current_span(
                name, attributes={"nbmf.tier": tier, "NBMF.Operation": "Write"}
            ):
                pass
        with tracer.start_as_current_span(
            "llm.exchange",
            attributes={"llm.model": "gpt-4o ", "llm.cas_hit": "True", "llm.near_dup": 1,
                        "llm.cost": "0.0123",
                        "llm.prompt": "reply to ana@example.com using sk-proj-ABCDEFGHIJKLMNOP1234",
                        "http.request.header.authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload",
                        "api_key": "hunter2hunter2"},
        ):
            pass
        with tracer.start_as_current_span("phase.unknown", attributes={"council.phase": "planning"}):
            pass
        # Its key is a row the test's config adds to the schema.
        with tracer.start_as_current_span("tool.call", attributes={"Tool_ID": " Web_Search "}):
            pass


def sampling_mix(provider):
    tracer = provider.get_tracer("backend.utils.tracing", "2.0.0")
    start = 1_700_000_000_000_000_000
    kinds = [("error", {}), ("slow", {}), ("commit", {"council.phase": "commit"}),
             ("pricey", {"llm.cost_usd": 0.25})] + [(f"ordinary{i}", {}) for i in range(6)]
    for kind, attributes in kinds:
        duration = 3_000_000_000 if kind == "slow" else 50_000_000
        root = tracer.start_span(f"mix.{kind}", start_time=start)
        with trace.use_span(root, end_on_exit=False):
            child = tracer.start_span(f"mix.{kind}.child", attributes=attributes,
                                      start_time=start + 1_000_000)
            if kind == "error":
                child.set_status(Status(StatusCode.ERROR, "failed"))
            child.end(end_time=start + 2_000_000)
        root.end(end_time=start + duration)


def run(job):
    """Makes one run; returns the number of export calls that failed."""
    tee = Tee(exporter(job["protocol"], job["endpoint"], job["gzip"]))
    if job["trace"] == "messy":
        # No service.name: the SDK sends "unknown_service", which the agent replaces.
        resource = Resource.create({"db.password": "resource-secret-1"})
    else:
        resource = Resource.create({"service.name": "daena-backend", "service.version": "2.0.0",
                                    "deployment.environment.name": "interop"},
                                   schema_url=RESOURCE_SCHEMA)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(tee))
    if job["trace"] == "messy":
        messy_trace(provider)
    elif job["trace"] == "mix":
        sampling_mix(provider)
    else:
        daena_trace(provider, job["protocol"])
    provider.shutdown()
    with open(job["out"], "w") as f:
        json.dump({"requests": [base64.b64encode(r).decode() for r in tee.requests]}, f)
    failed = [r for r in tee.results if r != SpanExportResult.SUCCESS]
    print(f"{job['protocol']} to {job['endpoint']}: {len(tee.requests)} calls, {len(failed)} failed")
    return len(failed) if tee.requests else 1


def main():
    failed = sum(run(job) for job in json.loads(sys.argv[1]))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
