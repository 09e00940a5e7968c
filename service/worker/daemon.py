"""The loop: wake -> claim -> run steps -> checkpoint. Nothing here decides; it runs.

One worker process claims up to ``concurrency`` rows, and runs each one's steps in its
own task for as long as the machine says "go straight on" (submit, then archive right
after the provider finishes); a row that must wait (the next poll, a retry) is
checkpointed with its due time and released, so any replica may pick it up then.

Shutdown goes through an Event: signals only set it. Claiming stops, in-flight steps
get ``shutdown_grace`` seconds to finish (an upload is never cut by default), and
whatever is still running then is cancelled and its lease released for another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from service.backoff import Backoff, Outage
from service.core.actions import Action, next_action
from service.core.costs import over_budget_wait
from service.core.events import Accepted, Event, IntentRecorded, OverBudget, Transient
from service.core.job import Job, Policy, RowId, Stage, SubmitKey
from service.core.machine import apply
from service.database.errors import BudgetSpent, Conflict, LeaseLost, RepositoryError
from service.database.port import AbandonedJob, Repository
from service.wakeups.source import WakeupSource
from service.wakeups.wakeup import Wakeup
from service.worker.journal import log_transition
from service.worker.metrics import Metrics
from service.worker.steps import Steps
from service.worker.sweep import wait_for_work

log = structlog.get_logger("service.worker.daemon")

FIRST_PAUSE = 0.25
"""The first pause after a failed claim (or withdrawal), doubled up to ``max_backoff``:
work resumes within about ``max_backoff`` of the database's return even when no LISTEN
reconnect announces it."""
DISPATCH_RESERVE = 8
"""One slot in this many is kept from polls and retries: a new row always finds one."""
ABANDONED_BATCH = 20
"""Abandoned jobs taken per look (each is one cancel call to its provider)."""
ABANDONED_COOLDOWN = 1.0
"""Seconds between two looks for abandoned jobs, however often the loop is woken."""


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int
    sweep_interval: float
    lease_seconds: float
    shutdown_grace: float
    policy: Policy
    restart_delay: float = 1.0
    """How long a side task (a wake-up source, the heartbeat) that died waits before it
    restarts."""
    max_backoff: float = 1.0
    """The longest pause between claims while the database is failing: also the longest
    it takes to notice the database is back when no LISTEN reconnect says so."""


class Worker:
    """Runs rows through the machine until told to stop."""

    def __init__(
        self,
        repo: Repository,
        steps: Steps,
        options: WorkerOptions,
        *,
        sources: Sequence[WakeupSource] = (),
        wakeup: Wakeup | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.metrics = metrics or Metrics()
        self.steps = steps
        self.options = options
        self.sources = {source.name: source for source in sources}
        """The push sources besides the sweep (LISTEN, Realtime, ...), by name; each sets
        ``wakeup`` when it hears of work."""
        self.wakeup = wakeup or Wakeup()
        self.stopping = asyncio.Event()
        self._inflight: dict[RowId, asyncio.Task[None]] = {}
        self._claiming = 0
        """Slots promised to claims in flight (the loop's and the dispatch lane's)."""
        self._claims_back = asyncio.Event()
        """Set when a claim returns: slots it promised and did not fill are free again."""
        self._leased: set[RowId] = set()
        """Rows whose lease this worker holds and keeps alive (a subset of _inflight)."""
        self._looped_at: float | None = None
        """When the claim loop last came round (monotonic); None before it started."""
        self._abandoned_due = asyncio.Event()
        """Set by the claim loop when woken: a re-queue or a delete may have left a job."""
        self.metrics.watch_sources(self.source_states)

    def source_states(self) -> dict[str, bool]:
        """Whether each event source delivers: the push sources configured, and the sweep
        (the claim loop itself) while it comes round within two intervals."""
        states = {name: source.is_up() for name, source in self.sources.items()}
        return {"sweep": self.sweeping(), **states}

    def sweeping(self) -> bool:
        """The claim loop runs: it came round within two sweep intervals (plus slack for
        a slow claim). It covers for any push source that is down."""
        if self._looped_at is None or self.stopping.is_set():
            return False
        return time.monotonic() - self._looped_at < 2 * self.options.sweep_interval + 5

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the worker to stop (signal handlers call this)."""
        self.stopping.set()
        self.wakeup.set("stop")

    async def run(self) -> None:
        """Serve until ``stop()``; then drain within the grace period and return."""
        log.info(
            "worker.started",
            worker=self.repo.worker_id,
            concurrency=self.options.concurrency,
            sources=sorted(self.sources),
        )
        side_tasks = [
            asyncio.create_task(self._supervise("heartbeat", self._heartbeat)),
            asyncio.create_task(self._supervise("abandoned", self._cancel_abandoned)),
        ]
        for name, source in self.sources.items():
            hear = functools.partial(source.run, self.wakeup)
            side_tasks.append(asyncio.create_task(self._supervise(name, hear)))
        lane = asyncio.create_task(self._dispatch_lane())
        try:
            await self._claim_loop()
        finally:
            # The lane ends by itself (never cancelled mid-claim: rows it claimed would
            # sit leased to nobody) before the drain counts the rows.
            self.stopping.set()
            self.wakeup.news.set()
            await asyncio.gather(lane, return_exceptions=True)
            await self._drain()
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, return_exceptions=True)
            log.info("worker.stopped", worker=self.repo.worker_id)

    async def _claim_loop(self) -> None:
        pauses = Backoff(FIRST_PAUSE, self.options.max_backoff)
        outage = Outage(
            log,
            down="worker.database_unavailable",
            still="worker.database_still_unavailable",
            back="worker.database_back",
            level="error",
        )
        while not self.stopping.is_set():
            self._looped_at = time.monotonic()
            try:
                reserve = self.options.concurrency // DISPATCH_RESERVE
                free = self._free_slots(reserve)
                if free <= 0 and self._claiming:
                    # Slots promised to the lane's claim: free again if it finds fewer rows.
                    self._claims_back.clear()
                    await self._claims_back.wait()
                    continue
                if free <= 0:
                    # Every slot is busy: only a finished row (or stop) can change that.
                    await self.wakeup.wait(self.options.sweep_interval)
                    continue
                claimed = await self._claim(free)
                self._abandoned_due.set()
                if outage.over() is not None:
                    pauses.reset()
                if claimed and len(claimed) == free:
                    # Every free slot got a row, so more may be due: no need to ask when
                    # the next one is (only a finished row frees a slot anyway).
                    continue
                await asyncio.sleep(0)  # rows just started write before the next-due look
                reasons = await wait_for_work(
                    self.wakeup, self.repo, self.options.sweep_interval, claimed=len(claimed)
                )
                log.debug("worker.woken", reasons=sorted(reasons))
            except RepositoryError as err:
                # Any wake-up (the listener reconnected, a row finished, stop) ends the
                # pause early: the next claim is the probe that tells the outage is over.
                outage.failed(str(err), retry_in=pauses.upcoming)
                await self.wakeup.wait(pauses.next())
            except Exception:
                # A bug of ours: said once with its traceback; the loop goes on.
                log.exception("worker.claim_loop_failed")
                await self.wakeup.wait(self.options.max_backoff)

    def _free_slots(self, reserve: int = 0) -> int:
        """Slots neither running a row nor promised to a claim in flight, less ``reserve``."""
        return self.options.concurrency - reserve - len(self._inflight) - self._claiming

    async def _claim(self, limit: int, *, fresh_only: bool = False) -> list[Job]:
        """Claim up to ``limit`` rows (``limit`` slots promised meanwhile) and start them."""
        self._claiming += limit
        try:
            exclude = self._inflight.keys()
            claimed = await self.repo.claim(limit, exclude=exclude, fresh_only=fresh_only)
        finally:
            self._claiming -= limit
            self._claims_back.set()
        self.metrics.claimed(len(claimed))
        for job in claimed:
            self._start(job)
        return claimed

    async def _dispatch_lane(self) -> None:
        """New requests claimed the moment a source hears of them (NOTIFY, Realtime, a
        webhook), into any free slot: with thousands of rows polled the claim loop is
        mostly mid-round (claim, next due, wait), and a new row would wait for its end.
        The loop still finds every row no news announced, and every poll."""
        news = self.wakeup.news
        while True:
            await news.wait()
            news.clear()
            if self.stopping.is_set():
                return
            free = self._free_slots()
            if free <= 0:
                continue  # a finished row wakes the claim loop, which claims then
            try:
                claimed = await self._claim(free, fresh_only=True)
            except RepositoryError:
                continue  # the claim loop says the outage and resumes after it
            except Exception:
                log.exception("worker.dispatch_lane_failed")
                continue
            if len(claimed) == free:
                news.set()  # every free slot got a row: more may be waiting

    def _start(self, job: Job) -> None:
        self._leased.add(job.id)
        task = asyncio.create_task(self._process(job), name=f"row-{job.id}")
        self._inflight[job.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(job.id, None)
            self._leased.discard(job.id)
            self.wakeup.set("slot")

        task.add_done_callback(done)

    def _let_go(self, row_id: RowId) -> None:
        """Say, before the write that gives a lease up, that it is no longer held, so a
        heartbeat racing that write does not report it lost."""
        self._leased.discard(row_id)

    async def _drain(self) -> None:
        if not self._inflight:
            return
        pending = set(self._inflight.values())
        log.info("worker.draining", rows=len(pending), grace=self.options.shutdown_grace)
        _, still_running = await asyncio.wait(pending, timeout=self.options.shutdown_grace)
        if still_running:
            ids = [job_id for job_id, task in self._inflight.items() if task in still_running]
            log.warning("worker.cancelling", rows=[str(i) for i in ids])
            for row_id in ids:
                self._let_go(row_id)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
            with contextlib.suppress(RepositoryError):
                await asyncio.shield(self.repo.release(ids))

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Keep a side task alive: a dead source or heartbeat is said loudly and restarted."""
        while not self.stopping.is_set():
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = self.options.restart_delay
                log.exception("worker.side_task_died", task=name, restart_in=delay)
                await asyncio.sleep(delay)

    async def _heartbeat(self) -> None:
        interval = self.options.lease_seconds / 3
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.0))
            ids = frozenset(self._leased)
            if not ids:
                continue
            try:
                kept = await self.repo.heartbeat(ids)
            except RepositoryError as err:
                log.warning("worker.heartbeat_failed", error=str(err))
                continue
            # Only rows we still meant to hold count: one released meanwhile is not lost.
            lost = (ids - kept) & self._leased
            if lost:
                log.warning("worker.leases_lost", rows=sorted(str(i) for i in lost))

    async def _cancel_abandoned(self) -> None:
        """Cancel the jobs that re-queues and deletes left running (sql/0010 writes them
        down) where their providers can, each said in a warning with its estimated cost.
        Looks when the claim loop is woken (a re-queue notifies) or every sweep, at most
        once per ABANDONED_COOLDOWN."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.sweep_interval):
                    await self._abandoned_due.wait()
            self._abandoned_due.clear()
            try:
                taken = await self.repo.take_abandoned(ABANDONED_BATCH)
            except RepositoryError as err:
                log.warning("worker.abandoned_jobs_unread", error=str(err))
                taken = []
            for job in taken:
                await self._settle(job)
            if len(taken) < ABANDONED_BATCH:
                await asyncio.sleep(ABANDONED_COOLDOWN)

    async def _settle(self, job: AbandonedJob) -> None:
        """One abandoned job: cancel it where its provider can, and say so either way."""
        settled, outcome = await self.steps.cancel_abandoned(job)
        log.warning(
            "video.abandoned_job",
            row_id=str(job.row_id),
            video_id=job.video_id,
            provider=job.provider,
            from_stage=job.stage,
            how=job.how,
            estimated_usd=round(job.estimated_usd, 2),
            outcome=outcome,
            message="a paid job no row will archive: the row was "
            f"{job.how} while the provider held it",
        )
        self.metrics.abandoned(outcome.startswith("cancelled"))
        if settled:
            with contextlib.suppress(RepositoryError):  # not settled: tried again later
                await self.repo.settle_abandoned(job, outcome)

    # ------------------------------------------------------------ one row

    async def _process(self, job: Job) -> None:
        """Run a claimed row's steps until it must wait, finishes, or is no longer ours."""
        intent: IntentRecorded | None = None
        made: Accepted | None = None  # a job made for this row, until a checkpoint records it
        structlog.contextvars.bind_contextvars(row_id=str(job.id))
        try:
            while (action := next_action(job, intent=intent)) is not None:
                started = time.monotonic()
                event = await self._perform(action, job, intent)
                performed = time.monotonic() - started
                intent = event if isinstance(event, IntentRecorded) else None
                if intent is not None and self.stopping.is_set():
                    # Stopping before the create: record no intent (it would read as "in
                    # doubt" to the next worker); the row is simply handed back.
                    self._let_go(job.id)
                    await asyncio.shield(self.repo.release([job.id]))
                    return
                made = event if isinstance(event, Accepted) else None
                transition = apply(job, event, policy=self.options.policy, jitter=random.random())
                go_on = transition.delay.total_seconds() <= 0 and not transition.finished
                go_on = go_on and not self.stopping.is_set()
                if not go_on:
                    self._let_go(job.id)
                job_after = await _land(self.repo.checkpoint(job, transition, keep_lease=go_on))
                took = time.monotonic() - started
                log_transition(job, job_after, transition, event, action, took)
                self.metrics.stepped(action, job.stage, event, transition, performed)
                job, made = job_after, None
                if not go_on:
                    return
        except LeaseLost as err:
            log.warning("video.lease_lost", error=str(err))
            if made is not None and job.stage is Stage.SUBMITTING:
                # The row was re-queued or deleted while the create ran: the job it just
                # made is paid for and nobody will archive it.
                await asyncio.shield(self._abandon(job, made.video_id))
        except Conflict as err:
            # The row is unchanged and nothing was sent: another row recorded this
            # provider job first (a twin with the same photos, or text only, took
            # the same candidate at the same moment). Look again shortly.
            log.info("video.deferred", rule=err.rule, stage=job.stage.value)
            self._let_go(job.id)
            with contextlib.suppress(RepositoryError):
                await asyncio.shield(self.repo.defer(job, self.options.policy.retry_base))
        except BudgetSpent:
            # Another replica took the last of the day's budget between this one's look
            # and its intent, and the budget's wall (sql/0011) refused the intent:
            # nothing was written or sent. The row waits like one seen over budget.
            self._let_go(job.id)
            await asyncio.shield(self._wait_for_budget(job))
        except RepositoryError as err:
            # The row keeps its last checkpoint; its lease lapses and any worker retakes it.
            log.error("video.checkpoint_failed", error=str(err), stage=job.stage.value)
            if intent is not None and intent.submit_key != job.submit_key:
                # The intent's own checkpoint failed: it may have landed, but the create
                # was certainly never sent. Say so, or the row waits out a create
                # timeout as "in doubt" for nothing.
                await asyncio.shield(self._withdraw(job, intent.submit_key))
        except Exception:
            # A bug of ours outside the steps: said once; the lease lapses, the row is retaken.
            log.exception("video.process_crashed", stage=job.stage.value)
        finally:
            structlog.contextvars.unbind_contextvars("row_id")
            # What a step kept for the row's next one (a scratch copy) goes with the claim.
            await asyncio.shield(self.steps.release(job.id))

    async def _wait_for_budget(self, job: Job) -> None:
        event = OverBudget(
            "the daily budget (SORA_DAILY_BUDGET_USD) has no room left for this video",
            over_budget_wait(job.as_of),
        )
        transition = apply(job, event, policy=self.options.policy, jitter=random.random())
        try:
            after = await self.repo.checkpoint(job, transition, keep_lease=False)
        except RepositoryError as err:  # the lease lapses; the next claim looks again
            log.warning("video.checkpoint_failed", error=str(err), stage=job.stage.value)
            return
        log_transition(job, after, transition, event, Action.PREPARE, 0.0)
        self.metrics.stepped(Action.PREPARE, job.stage, event, transition, 0.0)

    async def _abandon(self, job: Job, video_id: str) -> None:
        provider = job.provider or self.steps.providers.default
        try:
            recorded = await self.repo.record_abandoned(job, provider, video_id, "lost the row")
        except RepositoryError as err:
            log.error("video.abandoned_job_unrecorded", video_id=video_id, error=str(err))
            return
        if recorded is not None:
            await self._settle(recorded)

    async def _withdraw(self, job: Job, submit_key: SubmitKey) -> None:
        """Withdraw an intent whose create was never sent, trying while the lease lasts."""
        self._let_go(job.id)
        pauses = Backoff(FIRST_PAUSE, self.options.max_backoff)
        deadline = time.monotonic() + self.options.lease_seconds / 2
        while True:
            try:
                await self.repo.withdraw_intent(job.id, submit_key)
            except RepositoryError:
                if time.monotonic() + pauses.upcoming > deadline:
                    return  # the row stays in doubt; reconciliation settles it
                await asyncio.sleep(pauses.next())
                continue
            log.info("video.intent_withdrawn", submit_key=str(submit_key))
            return

    async def _perform(self, action: Action, job: Job, intent: IntentRecorded | None) -> Event:
        """Run one action; a bug in a step becomes a retryable event, never a dead loop."""
        try:
            match action:
                case Action.PREPARE:
                    return await self.steps.prepare(job)
                case Action.CREATE:
                    assert intent is not None, "next_action gives CREATE only with the intent"
                    return await self.steps.create(intent)
                case Action.RECONCILE:
                    return await self.steps.reconcile(job)
                case Action.POLL:
                    return await self.steps.poll(job)
                case Action.ARCHIVE:
                    return await self.steps.archive(job)
                case Action.DESCRIBE:
                    return await self.steps.describe(job)
        except asyncio.CancelledError:
            raise
        except RepositoryError as err:
            # Not a bug: a step asked the database (reconciliation, about other rows) during
            # an outage. A retry like any other transient failure.
            log.warning("video.step_database_error", action=action.value, error=str(err))
            return Transient(f"database unavailable during {action.value}")
        except Exception as err:
            log.exception("video.step_crashed", action=action.value)
            return Transient(f"internal error in {action.value}: {type(err).__name__}")


async def _land(write: Awaitable[Job]) -> Job:
    """Finish a checkpoint even if the task is cancelled meanwhile, then let the cancel go on.

    The write may record a paid-for effect (the provider's job id): it must land, and
    land before shutdown hands the row back, or the release would make it miss.
    """
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
