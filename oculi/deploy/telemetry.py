"""What the server has done, as Prometheus-style text for ``GET /metrics``: counters and histograms kept in
memory, written in Prometheus' text exposition format (version 0.0.4) by hand: no client library needed."""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import defaultdict
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help, labels
        self._lock = threading.Lock()  # the batcher's thread records too

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def _labelled(self, values: tuple, extra: str = "") -> str:
        pairs = [f'{k}="{_escape(v)}"' for k, v in zip(self.labels, values)] + ([extra] if extra else [])
        return "{" + ",".join(pairs) + "}" if pairs else ""


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(name, help, labels)
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, *label_values, by: float = 1) -> None:
        with self._lock:
            self.values[tuple(str(v) for v in label_values)] += by

    def lines(self) -> list[str]:
        with self._lock:
            rows = sorted(self.values.items())
        return self.header() + [f"{self.name}{self._labelled(key)} {_number(value)}" for key, value in rows]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self.series: dict[tuple, list] = {}  # labels -> [count per bucket, sum]

    def observe(self, value: float, *label_values) -> None:
        key = tuple(str(v) for v in label_values)
        with self._lock:
            series = self.series.setdefault(key, [[0] * len(self.buckets), 0.0])
            series[0][bisect_left(self.buckets, value)] += 1  # the first bucket whose bound is >= value
            series[1] += value

    def lines(self) -> list[str]:
        out = self.header()
        with self._lock:
            for key, (counts, total) in sorted(self.series.items()):
                cumulative = 0
                for bound, n in zip(self.buckets, counts):
                    cumulative += n
                    le = f'le="{_number(bound)}"'
                    out.append(f"{self.name}_bucket{self._labelled(key, le)} {cumulative}")
                out.append(f"{self.name}_sum{self._labelled(key)} {_number(total)}")
                out.append(f"{self.name}_count{self._labelled(key)} {cumulative}")
        return out


class Reading(_Metric):
    """A value read when the metrics are: a gauge (how full the queue is now), or a counter kept elsewhere."""

    def __init__(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge"):
        super().__init__(name, help)
        self.read, self.kind = read, kind

    def lines(self) -> list[str]:
        return self.header() + [f"{self.name} {_number(self.read())}"]


class ServerMetrics:
    """The server's metrics: requests, latency, errors, batches, images, the queue and the decoders."""

    def __init__(self, max_batch: int, queue_used: Callable[[], float], queue_capacity: int,
                 ready: Callable[[], float], decoder_restarts: Callable[[], float]):
        self.requests = Counter("oculi_http_requests_total", "HTTP requests answered, by route and status.",
                                ("route", "status"))
        self.latency = Histogram("oculi_http_request_duration_seconds", "Time to answer a request, by route.",
                                 LATENCY_BUCKETS, ("route",))
        self.errors = Counter("oculi_errors_total", "Error answers, by error code.", ("code",))
        self.images = Counter("oculi_images_predicted_total", "Images the model has classified.")
        self.batch_size = Histogram("oculi_batch_size", "Images per model call.", _sizes_up_to(max_batch))
        self.batch_seconds = Histogram("oculi_batch_duration_seconds", "Time of one model call.", LATENCY_BUCKETS)
        self._all = (self.requests, self.latency, self.errors, self.images, self.batch_size, self.batch_seconds,
                     Reading("oculi_queue_images", "Images accepted and not yet answered.", queue_used),
                     Reading("oculi_queue_capacity", "The most images accepted at once (--queue).",
                             lambda: queue_capacity),
                     Reading("oculi_ready", "1 once the model is loaded and warmed up.", ready),
                     Reading("oculi_decoder_restarts_total", "Decoder pools replaced after a worker died.",
                             decoder_restarts, kind="counter"))

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(by=size)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(route, status)
        self.latency.observe(seconds, route)

    def text(self) -> str:
        return "\n".join(line for metric in self._all for line in metric.lines()) + "\n"


def _sizes_up_to(largest: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``largest`` (included): batch-size buckets."""
    sizes = [1]
    while sizes[-1] * 2 < largest:
        sizes.append(sizes[-1] * 2)
    return tuple(sorted(set(sizes + [largest])))


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
