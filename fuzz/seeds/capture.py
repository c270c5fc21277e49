"""Captures seed inputs from the real OpenTelemetry Python SDK.

Usage (from the repository root; each exporter lives in its own virtualenv):

    .venv-interop/bin/python fuzz/seeds/capture.py protobuf
    .venv-interop-json/bin/python fuzz/seeds/capture.py json

Runs the SDK's OTLP/HTTP exporter (protobuf, or OTLP/JSON) against a loopback HTTP
server on 127.0.0.1 (a free port) that answers every export with success and keeps the
request body as sent. Each trace of tests/interop/send_spans.py ("daena": a council round
with LLM attributes; "messy": the same attributes spelled as different services do) is
exported once plain and once gzip-compressed, all its spans in one request
(BatchSpanProcessor, flushed by the provider's shutdown). It writes:

- seeds/wire_scan/sdk-<trace>.pb and seeds/json_scan/sdk-<trace>.json: the plain bodies;
- seeds/gzip_body/sdk-<trace>-<format>-gzip.bin: the gzip body as sent, behind the mode
  byte of harness::gzip_body saying "this format, the body as it is, 1 MiB limit";
- seeds/gzip_body/sdk-<trace>-<format>-plain.bin: the plain body behind the mode byte
  saying "the harness gzips it" (1 MiB limit), so mutations of the request itself reach
  the receiver's decoding (a mutated gzip body almost always fails its CRC instead).
"""

import http.server
import pathlib
import sys
import threading

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "interop"))

import send_spans  # noqa: E402  (the interop test's traces, from the path above)
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402

SEEDS = pathlib.Path(__file__).resolve().parent
# Mode bits of harness::gzip_body (fuzz/src/lib.rs): GZIP_JSON and GZIP_COMPRESS; bits 2-3
# left 0 pick the first of GZIP_LIMITS, 1 MiB.
GZIP_JSON = 1
GZIP_COMPRESS = 2


class Recorder(http.server.BaseHTTPRequestHandler):
    """Keeps each POST body with its Content-Encoding; answers success in the body's format."""

    bodies = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.bodies.append((self.headers.get("Content-Encoding", ""), body))
        json = self.headers.get("Content-Type", "").startswith("application/json")
        answer = b"{}" if json else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if json else "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def capture(protocol, endpoint, trace, gzip):
    """Exports one trace; returns the body the server received."""
    Recorder.bodies.clear()
    resource = Resource.create({"service.name": "daena-backend", "service.version": "2.0.0"},
                               schema_url=send_spans.RESOURCE_SCHEMA)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(send_spans.exporter(protocol, endpoint, gzip)))
    if trace == "messy":
        send_spans.messy_trace(provider)
    else:
        send_spans.daena_trace(provider, protocol)
    provider.shutdown()
    if len(Recorder.bodies) != 1:
        raise SystemExit(f"{trace}: expected one request, the server got {len(Recorder.bodies)}")
    encoding, body = Recorder.bodies[0]
    if (encoding == "gzip") != gzip:
        raise SystemExit(f"{trace}: asked gzip={gzip}, sent Content-Encoding {encoding!r}")
    return body


def main():
    fmt = sys.argv[1]
    if fmt not in ("protobuf", "json"):
        raise SystemExit("usage: capture.py protobuf|json")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    protocol = "http" if fmt == "protobuf" else "json"
    json_bit = GZIP_JSON if fmt == "json" else 0
    for trace in ("daena", "messy"):
        plain = capture(protocol, endpoint, trace, gzip=False)
        gzipped = capture(protocol, endpoint, trace, gzip=True)
        target, suffix = ("wire_scan", "pb") if fmt == "protobuf" else ("json_scan", "json")
        outputs = {
            SEEDS / target / f"sdk-{trace}.{suffix}": plain,
            SEEDS / "gzip_body" / f"sdk-{trace}-{fmt}-gzip.bin": bytes([json_bit]) + gzipped,
            SEEDS / "gzip_body" / f"sdk-{trace}-{fmt}-plain.bin":
                bytes([json_bit | GZIP_COMPRESS]) + plain,
        }
        for path, data in outputs.items():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            print(f"{path.relative_to(SEEDS)}: {len(data)} bytes")
    server.shutdown()


if __name__ == "__main__":
    main()
