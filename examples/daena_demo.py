#!/usr/bin/env python3
"""A program that traces itself like a Daena backend, to try daena-trace-agent with.

Each simulated chat request is a `POST /api/v1/chat` server span holding a council round
(scout -> debate -> commit, with department, topic and round id), LLM exchanges (model,
CAS hit or miss, near-duplicate reuse, cost), message-bus publishes and subscribes (with
occasional rate-limit events), NBMF reads and writes across tiers L1, L2 and L3, and some
errors. A share of the attributes is spelled the messy ways real services spell them
(`Council_Phase`, tier `2`, `"yes"` for true, a cost as a string), which the agent
normalises.

It exports with the OpenTelemetry Python SDK to the standard OTEL_EXPORTER_OTLP_ENDPOINT
(default http://localhost:4317) over OTEL_EXPORTER_OTLP_PROTOCOL (grpc, the default, or
http/protobuf). It runs for --duration seconds or --count requests, whichever ends first.

    pip install opentelemetry-sdk opentelemetry-exporter-otlp
    python examples/daena_demo.py --duration 60
"""

import argparse
import os
import random
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

DEPARTMENTS = ["engineering", "finance", "legal", "marketing", "research"]
TOPICS = ["pricing", "roadmap", "hiring", "incident-review", "vendor-choice"]
MODELS = ["gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b"]
BUS_TOPICS = ["council.events", "agent.tasks", "memory.sync"]
NBMF_CLASSES = ["episodic", "semantic", "procedural"]
# The keys the agent's schema knows (README, "Daena span semantics"): only these are
# misspelled, as others pass the agent unchanged.
KNOWN_KEYS = {
    "council.phase", "council.round_id", "council.department",
    "message_bus.operation", "message_bus.topic", "message_bus.message_id",
    "nbmf.operation", "nbmf.item_id", "nbmf.class", "nbmf.tier",
    "llm.model", "llm.cas_hit", "llm.near_dup", "llm.cost_usd",
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Send Daena-shaped traces through the OpenTelemetry Python SDK.",
        epilog="Reads OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4317) and "
        "OTEL_EXPORTER_OTLP_PROTOCOL (grpc or http/protobuf; default grpc).",
    )
    parser.add_argument("--rate", type=float, default=5.0,
                        help="chat requests per second (default 5)")
    parser.add_argument("--messy", type=float, default=0.3,
                        help="share of attributes spelled messily, 0 to 1 (default 0.3)")
    parser.add_argument("--errors", type=float, default=0.05,
                        help="share of requests that fail, 0 to 1 (default 0.05)")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds")
    parser.add_argument("--count", type=int, default=None,
                        help="stop after this many chat requests")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed, for a repeatable run")
    args = parser.parse_args(argv)
    if args.duration is None and args.count is None:
        parser.error("give --duration SECONDS or --count N, so the run ends")
    if args.rate <= 0:
        parser.error("--rate must be above 0")
    for name in ("messy", "errors"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must be between 0 and 1")
    return args


def exporter():
    """The OTLP span exporter the standard variables ask for."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    sys.exit(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf")


class Spelling:
    """Attribute keys and values, canonical or, at the --messy rate, as services misspell them."""

    def __init__(self, rng, messy):
        self.rng = rng
        self.messy = messy

    def _mess(self):
        return self.rng.random() < self.messy

    def key(self, key):
        if key not in KNOWN_KEYS or not self._mess():
            return key
        family, _, name = key.partition(".")
        return self.rng.choice([
            f"{family.capitalize()}_{name.capitalize()}",
            f"{family}-{name.replace('_', '-')}",
            f"{family.upper()}.{name}",
        ])

    def tier(self, tier):
        if not self._mess():
            return f"l{tier}"
        return self.rng.choice([f"L{tier}", tier, str(tier), f"tier_{tier}", f"Tier {tier}"])

    def flag(self, value):
        if not self._mess():
            return value
        return self.rng.choice([("yes" if value else "no"), int(value), str(value).upper()])

    def cost(self, value):
        return f"{value:.5f}" if self._mess() else value

    def identifier(self, value):
        return value if self._mess() else str(value)

    def phase(self, phase):
        return f" {phase.capitalize()} " if self._mess() else phase

    def attributes(self, pairs):
        return {self.key(key): value for key, value in pairs.items()}


def chat_request(tracer, rng, spell, errors, number):
    """One traced chat request: the HTTP span and everything Daena does inside it."""
    fails = rng.random() < errors
    with tracer.start_as_current_span(
        "POST /api/v1/chat",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/api/v1/chat"},
    ) as request:
        round_id = spell.identifier(10_000 + number)
        department = rng.choice(DEPARTMENTS)
        with tracer.start_as_current_span("council.round", attributes=spell.attributes({
            "council.department": department,
            "council.topic": rng.choice(TOPICS),
            "council.round_id": round_id,
        })):
            for phase in ("scout", "debate", "commit"):
                with tracer.start_as_current_span(f"council.{phase}", attributes=spell.attributes({
                    "council.phase": spell.phase(phase),
                    "council.round_id": round_id,
                    "council.department": department,
                })):
                    if phase == "scout":
                        nbmf(tracer, rng, spell, "read")
                    elif phase == "debate":
                        for _ in range(rng.randint(1, 3)):
                            llm_exchange(tracer, rng, spell, fails)
                    else:
                        bus(tracer, rng, spell)
                        nbmf(tracer, rng, spell, "write")
        if fails:
            request.set_attribute("http.response.status_code", 500)
            request.set_status(Status(StatusCode.ERROR, "council round failed: LLM timed out"))
        else:
            request.set_attribute("http.response.status_code", 200)


def llm_exchange(tracer, rng, spell, fails):
    cas_hit = rng.random() < 0.3
    with tracer.start_as_current_span("llm.exchange", kind=SpanKind.CLIENT, attributes=spell.attributes({
        "llm.model": rng.choice(MODELS),
        "llm.cas_hit": spell.flag(cas_hit),
        "llm.near_dup": spell.flag(not cas_hit and rng.random() < 0.1),
        "llm.cost_usd": spell.cost(0.0 if cas_hit else round(rng.uniform(0.0002, 0.2), 5)),
    })) as span:
        if fails:
            span.set_status(Status(StatusCode.ERROR, "upstream model timed out after 30s"))


def bus(tracer, rng, spell):
    topic = rng.choice(BUS_TOPICS)
    message_id = spell.identifier(rng.randrange(1, 10**9))
    for operation, kind in (("publish", SpanKind.PRODUCER), ("subscribe", SpanKind.CONSUMER)):
        with tracer.start_as_current_span(f"message_bus.{operation}", kind=kind, attributes=spell.attributes({
            "message_bus.operation": operation,
            "message_bus.topic": topic,
            "message_bus.message_id": message_id,
        })) as span:
            if operation == "publish" and rng.random() < 0.1:
                span.add_event("rate_limited", {"message_bus.retry_after_ms": 250})


def nbmf(tracer, rng, spell, operation):
    with tracer.start_as_current_span(f"nbmf.{operation}", attributes=spell.attributes({
        "nbmf.operation": operation,
        "nbmf.item_id": spell.identifier(rng.randrange(1, 10**6)),
        "nbmf.class": rng.choice(NBMF_CLASSES),
        "nbmf.tier": spell.tier(rng.randint(1, 3)),
    })):
        pass


def main(argv):
    args = parse_args(argv)
    rng = random.Random(args.seed)
    service = os.environ.get("OTEL_SERVICE_NAME", "daena-backend")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter(), schedule_delay_millis=500))
    tracer = provider.get_tracer("daena.demo")
    spell = Spelling(rng, args.messy)
    started = time.monotonic()
    sent = 0
    while args.count is None or sent < args.count:
        if args.duration is not None and time.monotonic() - started >= args.duration:
            break
        chat_request(tracer, rng, spell, args.errors, sent)
        sent += 1
        # Paced to the rate from the start, so a slow export does not lower it.
        time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
    provider.shutdown()
    print(f"sent {sent} chat requests in {time.monotonic() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
