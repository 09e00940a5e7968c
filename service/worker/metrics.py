"""What a scraper sees at ``/metrics``: counters kept by the loop, gauges read from the table.

Why two kinds: what happened in this process (claims, provider calls, bytes archived,
retries) only this process knows, so the daemon counts it at its seams through one
``Metrics`` object. What the table holds (rows per stage, the oldest unfinished row,
rows in doubt) is the truth shared by every replica: it is read by one query when
scraped (``TableSnapshot``), never mirrored in memory where it could drift.

Each ``Metrics`` owns its ``CollectorRegistry`` (not prometheus-client's global one),
so several workers in one process (tests, the demo) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.core.events import Archived, Described, Event
from service.core.job import ACTIVE_STAGES, Stage
from service.core.machine import Action, Transition
from service.database.port import TableSnapshot

PREFIX = "sora_"

PROVIDER_CALLS: Mapping[Action, str] = {
    Action.CREATE: "create",
    Action.RECONCILE: "list",
    Action.POLL: "retrieve",
    Action.ARCHIVE: "download",
}
"""The actions that call the provider, named by the call they make."""

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Live(Collector):
    """Gauges computed at scrape time from callbacks (the table, the event sources)."""

    def __init__(self) -> None:
        self.table: TableSnapshot | None = None
        self.sources: Callable[[], Mapping[str, bool]] = dict

    def collect(self) -> Iterator[Metric]:
        sources = GaugeMetricFamily(
            PREFIX + "event_source_up",
            "1 while the event source delivers wake-ups (the sweep: while the loop runs)",
            labels=["source"],
        )
        for name, up in sorted(self.sources().items()):
            sources.add_metric([name], 1.0 if up else 0.0)
        yield sources
        readable = GaugeMetricFamily(
            PREFIX + "table_read_ok", "1 if this scrape could read public.videos"
        )
        readable.add_metric([], 0.0 if self.table is None else 1.0)
        yield readable
        if self.table is None:
            return
        rows = GaugeMetricFamily(
            PREFIX + "rows", "Rows in public.videos by stage", labels=["stage"]
        )
        for stage in Stage:
            rows.add_metric([stage.value], float(self.table.rows_by_stage.get(stage.value, 0)))
        yield rows
        oldest = GaugeMetricFamily(
            PREFIX + "oldest_unfinished_seconds",
            "Age of the oldest row not yet completed or failed (0 when there is none)",
        )
        oldest.add_metric([], self.table.oldest_unfinished_seconds or 0.0)
        yield oldest
        doubt = GaugeMetricFamily(
            PREFIX + "rows_in_doubt",
            "Rows whose submission's outcome is unknown (stage submitting, key recorded)",
        )
        doubt.add_metric([], float(self.table.in_doubt))
        yield doubt


class Metrics:
    """The worker's counters and its registry. One per worker."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claims = Counter(PREFIX + "claims", "Rows claimed", registry=r)
        self.provider_calls = Counter(
            PREFIX + "provider_calls",
            "Calls to the video provider by call and outcome (the event it gave)",
            ["call", "outcome"],
            registry=r,
        )
        self.provider_latency = Histogram(
            PREFIX + "provider_call_seconds",
            "Duration of calls to the video provider (download: the whole archive)",
            ["call"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.polls = Counter(PREFIX + "polls", "Status polls of generating jobs", registry=r)
        self.archived_bytes = Counter(
            PREFIX + "archived_bytes", "Bytes of video written to storage", registry=r
        )
        self.retries = Counter(
            PREFIX + "retries", "Failed steps that will be retried", ["stage"], registry=r
        )
        self.finished = Counter(
            PREFIX + "rows_finished", "Rows that reached a final stage", ["stage"], registry=r
        )
        self.expired_before_archived = Counter(
            PREFIX + "expired_before_archived",
            "Rows failed while archiving: the provider's copy expired or vanished first",
            registry=r,
        )
        self.archived_without_media = Counter(
            PREFIX + "archived_without_media",
            "Videos archived without their media facts or poster (the row still completes; "
            "why is logged as video.media_skipped)",
            registry=r,
        )
        self.archived_from_store = Counter(
            PREFIX + "archived_from_store",
            "Videos recorded from the copy already in storage (an archive that stored the "
            "video and stopped before its checkpoint, the provider's copy then unavailable)",
            registry=r,
        )
        # Labelled series appear only once touched: start the known ones at zero, so a
        # dashboard's rate() has a baseline before the first retry or failure.
        for stage in ACTIVE_STAGES:
            self.retries.labels(stage.value)
        for stage in (Stage.COMPLETED, Stage.FAILED):
            self.finished.labels(stage.value)
        self._live = _Live()
        r.register(self._live)

    # ------------------------------------------------------------ the daemon's seams

    def claimed(self, count: int) -> None:
        self.claims.inc(count)

    def stepped(
        self,
        action: Action,
        from_stage: Stage,
        event: Event,
        transition: Transition,
        seconds: float,
    ) -> None:
        """One action ran and its transition was written."""
        call = PROVIDER_CALLS.get(action)
        if call is not None:
            self.provider_calls.labels(call, type(event).__name__).inc()
            self.provider_latency.labels(call).observe(seconds)
        if action is Action.POLL:
            self.polls.inc()
        if isinstance(event, Archived):
            if event.recovered:
                self.archived_from_store.inc()
            else:
                self.archived_bytes.inc(event.video_bytes)
        if from_stage is Stage.DESCRIBING and transition.finished:
            media = event.media if isinstance(event, Described) else None
            if media is None or media.duration_seconds is None or media.poster_url is None:
                self.archived_without_media.inc()
        if transition.log_event == "video.retry":
            self.retries.labels(from_stage.value).inc()
        if transition.finished:
            self.finished.labels(transition.stage.value).inc()
            if transition.stage is Stage.FAILED and from_stage is Stage.ARCHIVING:
                self.expired_before_archived.inc()

    # ------------------------------------------------------------ scraping

    def watch_sources(self, states: Callable[[], Mapping[str, bool]]) -> None:
        """Where ``sora_event_source_up`` reads each source's state at scrape time."""
        self._live.sources = states

    def render(self, table: TableSnapshot | None) -> bytes:
        """The exposition text, with the table as just read (None: it could not be)."""
        self._live.table = table
        return generate_latest(self.registry)
