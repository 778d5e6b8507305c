"""Optional OpenTelemetry tracing for the root and the leaf.

Off by default, and then free: `start_tracing` returns None, nothing of
OpenTelemetry is imported, and the processes' only cost is an ``is None``
test per request. On (the ``tracing`` settings, or $TRIMMER_TRACING), a
`Tracing` makes spans after the fact from the times the request path
already keeps (``time.perf_counter``), so that no span object lives on the
serving loop between two of its turns and no stage is timed twice.

A request's trace comes in its header as a W3C ``traceparent``
(docs/protocol.md, rule `envelope.traceparent`): the root's spans are its
children, and the root hands each leaf message the ``traceparent`` of the
span that sent it, so the leaf's spans are that span's children. A header
without one starts a new trace; one that does not parse is ignored.

Exporters (``tracing.exporter``): ``otlp`` (OTLP over HTTP/protobuf to
``tracing.endpoint``, else the OpenTelemetry variables
$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / $OTEL_EXPORTER_OTLP_ENDPOINT, else
http://localhost:4318/v1/traces), ``console`` (stderr) and ``file`` (JSON
lines, one span each, at ``tracing.file``). Spans leave in batches from a
thread of their own; `Tracing.close` flushes them. The packages are the
``[tracing]`` extra (pyproject.toml): asked for without them, the process
refuses to start, naming it.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from signatures.runtime.settings import option

TRACING_ENV = "TRIMMER_TRACING"
EXPORTERS = ("none", "otlp", "console", "file")
# W3C Trace Context, version 00: version-traceid-parentid-flags, lower-case hex.
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
SCHEDULE_DELAY_MS = 500   # how often the batch thread sends what ended


@dataclass(frozen=True)
class TracingSettings:
    exporter: str = option("none", "OpenTelemetry spans of each request's stages: none (off, "
                           "no cost), otlp, console or file; $TRIMMER_TRACING overrides it "
                           "(otlp, console, file:PATH or none)", choices=EXPORTERS)
    endpoint: str | None = option(None, "with otlp: the OTLP/HTTP traces URL (null: "
                                  "$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
                                  "$OTEL_EXPORTER_OTLP_ENDPOINT, else "
                                  "http://localhost:4318/v1/traces)")
    file: str | None = option(None, "with file: where spans are written, one JSON object a "
                              "line", path=True)
    service_name: str | None = option(None, "the service.name spans carry (null: "
                                      "trimmer-root or trimmer-leaf)")

    def effective(self) -> tuple[str, str | None]:
        """(exporter, file), $TRIMMER_TRACING first."""
        env = os.environ.get(TRACING_ENV, "").strip()
        if env:
            kind, _, path = env.partition(":")
            return kind, (path or self.file)
        return self.exporter, self.file

    def problems(self) -> list[str]:
        kind, path = self.effective()
        if kind not in EXPORTERS:
            return [f"${TRACING_ENV}={os.environ.get(TRACING_ENV)!r}: expected one of "
                    "otlp, console, file:PATH, none"]
        if kind == "file" and not path:
            return ["tracing.exporter file needs tracing.file (or $TRIMMER_TRACING=file:PATH)"]
        return []


def parse_traceparent(value) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C traceparent, or None when
    ``value`` is not one (wrong form, or all-zero ids)."""
    if not isinstance(value, str):
        return None
    m = TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(m.group(3), 16)


# perf_counter seconds -> epoch nanoseconds, fixed at import (spans need wall time).
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def epoch_ns(perf_s: float) -> int:
    return int(perf_s * 1e9) + _EPOCH_OFFSET_NS


class Tracing:
    """A process's tracer and exporter (only made when tracing is on)."""

    def __init__(self, service: str, settings: TracingSettings, instance: str):
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise RuntimeError(f"tracing is on ({settings.effective()[0]}) but OpenTelemetry "
                               f"is not installed ({exc}): pip install "
                               "'feature-trimmer[tracing]'") from exc
        kind, path = settings.effective()
        self.kind = kind
        resource = Resource.create({"service.name": settings.service_name or service,
                                    "service.instance.id": instance})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(
            _exporter(kind, path, settings.endpoint), schedule_delay_millis=SCHEDULE_DELAY_MS))
        self.tracer = self.provider.get_tracer("trimmer")

    def parent(self, traceparent) -> Any:
        """The context a request's spans hang under: its ``traceparent``'s, or a new trace."""
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            return None
        trace_id, span_id, flags = parsed
        return set_span_in_context(NonRecordingSpan(SpanContext(
            trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))))

    def span(self, name: str, start_s: float, end_s: float | None = None, parent=None,
             kind: str = "internal", **attributes):
        """A span from ``start_s`` (perf_counter seconds), ended at ``end_s``
        when given; its context for children with `child_of`."""
        from opentelemetry.trace import SpanKind
        span = self.tracer.start_span(name, context=parent, start_time=epoch_ns(start_s),
                                      kind=getattr(SpanKind, kind.upper()),
                                      attributes={k: v for k, v in attributes.items()
                                                  if v is not None})
        if end_s is not None:
            span.end(end_time=epoch_ns(end_s))
        return span

    @staticmethod
    def child_of(span) -> Any:
        from opentelemetry.trace import set_span_in_context
        return set_span_in_context(span)

    @staticmethod
    def traceparent(span) -> str:
        """The W3C traceparent naming ``span`` as the parent (for a leaf message)."""
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    @staticmethod
    def end(span, end_s: float, **attributes) -> None:
        for k, v in attributes.items():
            if v is not None:
                span.set_attribute(k, v)
        span.end(end_time=epoch_ns(end_s))

    def close(self) -> None:
        """Send what ended, then stop the exporter's thread."""
        self.provider.shutdown()


def start_tracing(service: str, settings: TracingSettings, instance: str) -> Tracing | None:
    """The process's `Tracing`, or None when tracing is off (nothing imported)."""
    if settings.effective()[0] == "none":
        return None
    return Tracing(service, settings, instance)


def _exporter(kind: str, path: str | None, endpoint: str | None):
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter()
    return _FileExporter(str(path))


class _FileExporter:
    """Spans as JSON lines appended to a file (the batch thread writes)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult
        lines = "".join(json.dumps(json.loads(s.to_json()), separators=(",", ":")) + "\n"
                        for s in spans)
        with self._lock, open(self.path, "a") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


__all__ = ["EXPORTERS", "TRACING_ENV", "Tracing", "TracingSettings", "epoch_ns",
           "parse_traceparent", "start_tracing"]
