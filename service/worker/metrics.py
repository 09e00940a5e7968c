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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.core.actions import Action
from service.core.events import Archived, Described, Event, OverBudget, Throttled
from service.core.job import ACTIVE_STAGES, Stage
from service.core.machine import Transition
from service.core.rates import UNLIMITED
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
        yield from self._money(self.table)
        yield from self._rates(self.table)

    @staticmethod
    def _rates(table: TableSnapshot) -> Iterator[Metric]:
        """The request rates every replica shares (sql/0015), one series per limit."""
        labels = ["limit"]
        per_minute = GaugeMetricFamily(
            PREFIX + "rate_limit_per_minute",
            "A host's request limit every replica shares (turns are spaced for 90 % of "
            "it); absent for calls without a known limit",
            labels=labels,
        )
        held = GaugeMetricFamily(
            PREFIX + "rate_limit_held_off_seconds",
            "How long every replica still holds off because the host answered 429",
            labels=labels,
        )
        turns = CounterMetricFamily(
            PREFIX + "rate_limit_turns",
            "Turns handed out at a shared limit (each a create or a poll), all replicas",
            labels=labels,
        )
        deferred = CounterMetricFamily(
            PREFIX + "rate_limit_deferred",
            "Times a row was told to wait because its limit had no turn near enough",
            labels=labels,
        )
        throttled = CounterMetricFamily(
            PREFIX + "rate_limit_throttled",
            "429s from the host under a limit (each held every replica off)",
            labels=labels,
        )
        for rate in table.rates:
            if rate.per_minute < UNLIMITED:
                per_minute.add_metric([rate.key], float(rate.per_minute))
            held.add_metric([rate.key], rate.blocked_seconds)
            turns.add_metric([rate.key], float(rate.granted))
            deferred.add_metric([rate.key], float(rate.deferred))
            throttled.add_metric([rate.key], float(rate.throttled))
        yield from (per_minute, held, turns, deferred, throttled)

    @staticmethod
    def _money(table: TableSnapshot) -> Iterator[Metric]:
        """The day's estimated spend and the refusals at insert (sql/0011), shared by
        every replica like the rest of the table's gauges."""
        if table.spent_today_usd is not None and table.daily_budget_usd is not None:
            spent = GaugeMetricFamily(
                PREFIX + "estimated_spend_today_usd",
                "Estimated US dollars spent on videos since midnight UTC (submissions and "
                "abandoned jobs, at the registry's prices)",
            )
            spent.add_metric([], table.spent_today_usd)
            yield spent
            budget = GaugeMetricFamily(
                PREFIX + "daily_budget_usd", "The daily budget (SORA_DAILY_BUDGET_USD)"
            )
            budget.add_metric([], table.daily_budget_usd)
            yield budget
        abandoned = GaugeMetricFamily(
            PREFIX + "abandoned_jobs_unsettled",
            "Provider jobs a re-queue or a delete left running that no worker has settled",
        )
        abandoned.add_metric([], float(table.abandoned_unsettled))
        yield abandoned
        refusals = CounterMetricFamily(
            PREFIX + "insert_refusals",
            "Inserts the database refused: a row carrying a job or a stage, a model, size "
            "or length not allowed, a person's daily quota, the daily budget",
            labels=["reason"],
        )
        for reason, count in sorted(table.refusals.items()):
            refusals.add_metric([reason], float(count))
        yield refusals


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
        self.over_budget = Counter(
            PREFIX + "over_budget",
            "Submissions put off because the day's estimated spend left no room "
            "(the row waits; nothing was sent)",
            registry=r,
        )
        self.throttled = Counter(
            PREFIX + "throttled",
            "Creates and polls put off because the request rate every replica shares had "
            "no turn near enough (nothing was sent)",
            registry=r,
        )
        self.abandoned_jobs = Counter(
            PREFIX + "abandoned_jobs",
            "Provider jobs a re-queue or a delete left running, by what the worker could do",
            ["outcome"],
            registry=r,
        )
        for outcome in ("cancelled", "not_cancelled"):
            self.abandoned_jobs.labels(outcome)
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
        if isinstance(event, OverBudget):
            self.over_budget.inc()
        if isinstance(event, Throttled):
            self.throttled.inc()
        if transition.log_event == "video.retry":
            self.retries.labels(from_stage.value).inc()
        if transition.finished:
            self.finished.labels(transition.stage.value).inc()
            if transition.stage is Stage.FAILED and from_stage is Stage.ARCHIVING:
                self.expired_before_archived.inc()

    def abandoned(self, cancelled: bool) -> None:
        """A job left running by a re-queue or a delete was looked at."""
        self.abandoned_jobs.labels("cancelled" if cancelled else "not_cancelled").inc()

    # ------------------------------------------------------------ scraping

    def watch_sources(self, states: Callable[[], Mapping[str, bool]]) -> None:
        """Where ``sora_event_source_up`` reads each source's state at scrape time."""
        self._live.sources = states

    def render(self, table: TableSnapshot | None) -> bytes:
        """The exposition text, with the table as just read (None: it could not be)."""
        self._live.table = table
        return generate_latest(self.registry)
