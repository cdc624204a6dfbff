"""Prometheus metrics: one ``CollectorRegistry`` per node.

Names follow ``pinfold_<area>_<what>_<unit>`` and Prometheus conventions
(base units, ``_total`` counters, no unbounded labels: never a CID label).
Event counters (RPC requests, bytes added) are updated by the daemon as they
happen; state (blocks stored, pins, peers, bitswap counters) is read at scrape
time from each component's ``statistics()`` through ``add_source``, so the
cores never import prometheus_client (STYLE.md 4).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from typing import Any

from pinfold.blockstore.lmdbstore import LmdbBlockStore
from pinfold.blockstore.writer import BatchWriter
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

log = logging.getLogger("pinfold.metrics")

# `_created` samples double the series count and no dashboard uses them.
disable_created_metrics()

Source = Callable[[], Iterable[Any]]

#: RPC latency buckets, seconds: sub-millisecond control calls up to multi-minute adds.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0, 10.0, 30.0, 60.0, 300.0)


class _SourceCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[Source] = []

    def collect(self) -> Iterable[Any]:
        for source in list(self.sources):
            try:
                yield from source()
            except Exception:  # a broken source must not break the whole scrape
                log.exception("metrics source %r failed", source)


class Metrics:
    """The node's metrics; ``registry`` is private to this node."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_requests = Counter(
            "pinfold_rpc_requests", "RPC requests handled, by method and outcome code",
            ["method", "outcome"], registry=r)
        self.rpc_duration = Histogram(
            "pinfold_rpc_request_duration_seconds", "RPC request latency by method",
            ["method"], buckets=RPC_BUCKETS, registry=r)
        self.add_bytes = Counter("pinfold_add_bytes", "File bytes imported by add", registry=r)
        self.cat_bytes = Counter("pinfold_cat_bytes", "File bytes served by cat and get",
                                 registry=r)
        self.gateway_requests = Counter(
            "pinfold_gateway_requests", "Gateway HTTP requests answered, by route (file, "
            "directory, index, raw, car, redirect, options, error, overload) and status",
            ["route", "status"], registry=r)
        self.gateway_bytes = Counter("pinfold_gateway_bytes",
                                     "Response body bytes sent by the gateway", registry=r)
        self.gateway_ttfb = Histogram(
            "pinfold_gateway_time_to_first_byte_seconds", "Gateway: from the request read "
            "to the first response byte sent", buckets=RPC_BUCKETS, registry=r)
        self.gc_runs = Counter("pinfold_gc_runs", "Garbage collection passes", registry=r)
        self.gc_freed_bytes = Counter("pinfold_gc_freed_bytes", "Bytes freed by GC", registry=r)
        self.gc_freed_blocks = Counter("pinfold_gc_freed_blocks", "Blocks freed by GC",
                                       registry=r)
        self._sources = _SourceCollector()
        r.register(self._sources)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_source(self, source: Source) -> None:
        """Register ``source()``, called at each scrape, yielding metric families."""
        self._sources.sources.append(source)

    def gateway_done(self, route: str, status: int, nbytes: int, ttfb_s: float | None) -> None:
        """Record one gateway request: its route label, status, body bytes sent and
        seconds to the first byte (``None``: nothing was sent)."""
        self.gateway_requests.labels(route, str(status)).inc()
        if nbytes:
            self.gateway_bytes.inc(nbytes)
        if ttfb_s is not None:
            self.gateway_ttfb.observe(ttfb_s)

    def rpc_done(self, method: str, outcome: str, seconds: float) -> None:
        """Record one finished RPC request (``outcome`` is "ok" or an error code)."""
        self.rpc_requests.labels(method, outcome).inc()
        self.rpc_duration.labels(method).observe(seconds)

    # ---------------------------------------------------------------- HTTP endpoint

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``HOST:PORT`` in a daemon thread; returns the bound address.

        Port 0 picks a free port. Raises ``OSError`` if the address is taken.
        """
        host, _, port = listen.rpartition(":")
        registry = self.registry

        class Handler(MetricsHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served")
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        Handler.registry = registry
        server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http",
                                        daemon=True)
        self._thread.start()
        addr = server.server_address
        return str(addr[0]), int(addr[1])

    def close(self) -> None:
        """Stop the HTTP endpoint (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None
          ) -> GaugeMetricFamily:
    """A one-sample gauge family (or one sample per label set when ``labels`` maps values)."""
    if labels:
        fam = GaugeMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), value)
        return fam
    return GaugeMetricFamily(name, doc, value=value)


def gauge_by(name: str, doc: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    """A gauge family with one sample per value of ``label``."""
    fam = GaugeMetricFamily(name, doc, labels=[label])
    for key, v in sorted(values.items()):
        fam.add_metric([key], v)
    return fam


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None
            ) -> CounterMetricFamily:
    """A one-sample counter family; ``name`` without ``_total``."""
    fam = CounterMetricFamily(name, doc, labels=list(labels) if labels else None)
    fam.add_metric(list(labels.values()) if labels else [], value)
    return fam


def counter_by(name: str, doc: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
    """A counter family with one sample per value of ``label``."""
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key, v in sorted(values.items()):
        fam.add_metric([key], v)
    return fam


def histogram(name: str, doc: str, buckets: list[tuple[float, int]], total: float
              ) -> HistogramMetricFamily:
    """A histogram family from cumulative ``(upper_bound, count)`` pairs and the sum."""
    fam = HistogramMetricFamily(name, doc)
    pairs = [(("+Inf" if b == float("inf") else repr(float(b))), c) for b, c in buckets]
    fam.add_metric([], pairs, total)
    return fam


def store_metric_families(store: LmdbBlockStore, writer: BatchWriter) -> Iterable[Any]:
    """The blockstore's and its writer's metric families (``stat()``, ``statistics()``)."""
    st = store.stat()
    yield gauge("pinfold_blockstore_blocks", "Blocks stored", st.blocks)
    yield gauge("pinfold_blockstore_data_bytes", "Bytes of block data stored", st.bytes)
    yield gauge("pinfold_blockstore_map_used_bytes", "LMDB map bytes in use",
                st.map_used_bytes)
    yield gauge("pinfold_blockstore_map_size_bytes", "Current LMDB map size",
                st.map_size_bytes)
    yield gauge("pinfold_blockstore_max_size_bytes", "Configured LMDB map ceiling",
                st.max_size_bytes)
    counts = {"recursive": 0, "direct": 0}
    counts.update(store.pin_counts())
    yield gauge_by("pinfold_pins", "Local pins by type", "type", counts)
    ws = writer.statistics()
    yield counter("pinfold_blockstore_write_batches", "Write transactions committed",
                  ws.batches)
    yield gauge("pinfold_blockstore_write_queue_length", "Write requests waiting",
                ws.queue_length)
