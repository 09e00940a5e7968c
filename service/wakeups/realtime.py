"""Supabase Realtime: push wake-ups where LISTEN cannot work (a transaction pooler).

A channel subscribed to ``postgres_changes`` INSERT and UPDATE on ``public.videos``
sets the shared Wakeup; like a NOTIFY, a change is only a hint and the claim query
decides. The official ``realtime`` client speaks the protocol; this module owns only
the policy around it:

- **It never gives up.** The client's own reconnect stops for good after
  ``max_retries`` (about 15 s with its defaults), silently, ending in a task exception
  nobody retrieves. So the client is built with ``auto_reconnect=False`` and this source
  is the one reconnect loop: every lost socket or refused connection ends the session,
  and a new client is built after a capped backoff, for as long as the worker runs.
  (A refused or errored *join* on a live socket is retried by the client's own rejoin
  timer, 1, 2, 5, 10 s ...: bounded, so it is left to it.)
- **Every (re)subscribe wakes the claim loop**, because changes sent while we were
  away are never replayed: at SUBSCRIBED, and again at the server's "Subscribed to
  PostgreSQL" system message, since changes only flow after it (contracts/supabase.md).
- **Each problem is said once**, with what to do (a wrong key, the table missing from
  the publication, a server that is down), again when it changes, and reminded every
  30 s while it lasts (``service.backoff.Outage``); coming back is said too. The
  client's own per-attempt ERROR lines are silenced for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import structlog

from service.backoff import Backoff, Outage
from service.wakeups.wakeup import Wakeup

if TYPE_CHECKING:  # the client is imported when a source runs: most workers never need it
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

log = structlog.get_logger("service.wakeups.realtime")

TOPIC = "sora-worker:videos"
READY_MESSAGE = "Subscribed to PostgreSQL"
PUBLICATION_HINT = (
    "public.videos is not in the supabase_realtime publication: run `alter publication "
    "supabase_realtime add table public.videos;` (sql/0003 does it where the publication "
    "exists; `sora-worker migrate` again after enabling Realtime)"
)
KEY_HINT = "check SUPABASE_SERVICE_ROLE_KEY: it must be this project's service_role key"


class RealtimeSource:
    """Keeps one Realtime channel on ``public.videos`` alive; its changes set ``wakeup``.

    ``url`` is the project URL (``https://<ref>.supabase.co``) or a Realtime base
    ending in ``/realtime/v1``. ``attempts`` counts the clients built (each is one
    connection attempt), so a test can see that reconnecting is bounded.
    """

    name = "realtime"

    def __init__(
        self,
        url: str,
        key: str,
        *,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
        check_every: float = 5.0,
        join_timeout: int = 10,
    ) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/realtime/v1") else f"{base}/realtime/v1"
        self._key = key
        self.wakeup = Wakeup()
        """The wake-up this source sets (the worker's, once ``run`` is given it)."""
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.check_every = check_every
        self.join_timeout = join_timeout
        self.attempts = 0
        self.ready = asyncio.Event()
        """Set while changes flow (after "Subscribed to PostgreSQL"); cleared on loss."""
        self._outage = Outage(
            log,
            down="realtime.unavailable",
            back="realtime.back",
            new_cause_said=True,
            cause_field="problem",
        )
        # The client logs every failed attempt at ERROR; this source says each problem
        # once, with what to do, so the client's lines would only repeat it.
        logging.getLogger("realtime").setLevel(logging.CRITICAL)

    def __repr__(self) -> str:
        return f"RealtimeSource(url={self.url!r})"

    def is_up(self) -> bool:
        return self.ready.is_set()

    async def run(self, wakeup: Wakeup) -> None:
        """Subscribe until cancelled, building a new client whenever the last one is lost."""
        from realtime import AsyncRealtimeClient

        self.wakeup = wakeup
        pauses = Backoff(self.first_backoff, self.max_backoff)
        while True:
            self.attempts += 1
            client = AsyncRealtimeClient(
                self.url, self._key, auto_reconnect=False, timeout=self.join_timeout
            )
            subscribed = False
            try:
                subscribed = await self._session(client)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._said(_connect_problem(err))
            finally:
                self.ready.clear()
                with contextlib.suppress(Exception):
                    await client.close()
            if subscribed:
                pauses.reset()  # it worked for a while: come back fast
            await asyncio.sleep(pauses.next())

    async def _session(self, client: AsyncRealtimeClient) -> bool:
        """One client's life; returns whether it ever subscribed, when its socket is gone."""
        from realtime import RealtimeSubscribeStates
        from realtime.types import RealtimePostgresChangesListenEvent

        changed = asyncio.Event()
        subscribed = False

        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            nonlocal subscribed
            changed.set()
            if state == RealtimeSubscribeStates.SUBSCRIBED:
                subscribed = True
                self.wakeup.set("realtime.subscribed")
                log.debug("realtime.subscribed", topic=TOPIC)
            elif state == RealtimeSubscribeStates.CHANNEL_ERROR:
                self.ready.clear()
                if client.is_connected:  # a lost socket is said when the session ends
                    self._said(_channel_problem(error))
            elif state == RealtimeSubscribeStates.TIMED_OUT:
                self._said("the join got no reply in time; the client retries it")
            else:  # CLOSED: the server closed the channel; only a new client rejoins
                self._said("the server closed the channel; reconnecting")

        def on_system(payload: Any) -> None:
            if getattr(payload, "message", "") == READY_MESSAGE:
                self.ready.set()
                self.wakeup.set("realtime.ready")
                self._recovered()

        def on_change(_payload: Any) -> None:
            self.wakeup.set("realtime")

        channel = client.channel(TOPIC)
        for event in (
            RealtimePostgresChangesListenEvent.Insert,
            RealtimePostgresChangesListenEvent.Update,
        ):
            channel.on_postgres_changes(event, on_change, table="videos", schema="public")
        channel.on_system(on_system)
        await client.connect()
        await channel.subscribe(on_state)
        while is_listening(client) and channel.topic in client.channels:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.check_every)
            changed.clear()
        if subscribed and not self._outage.ongoing:
            self._said("the connection was lost; reconnecting")
        return subscribed

    def _said(self, problem: str) -> None:
        """Say a problem once (again when it changes, reminded while it lasts)."""
        self._outage.failed(problem, url=self.url)

    def _recovered(self) -> None:
        if self._outage.over(url=self.url) is None:
            log.info("realtime.ready", url=self.url, topic=TOPIC)


def is_listening(client: AsyncRealtimeClient) -> bool:
    """Connected, and its reader still running.

    The one read of the client's internals, because no public API tells: since
    supabase/realtime-py#332 the reader task re-raises an unexpected error (from a
    callback or the client's own handling) and ends, while ``is_connected`` stays true
    on a client that hears nothing any more. The reader is ``_listen_task``, private in
    realtime 2.34.1 (pinned in constraints.txt); tests/test_realtime.py
    (test_a_dead_reader_is_seen_through_listen_task) fails loudly if an upgrade
    removes or changes it."""
    reader = client._listen_task
    return client.is_connected and reader is not None and not reader.done()


def _connect_problem(err: Exception) -> str:
    """What a failed connection means, and what to do about it."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the server refused the key (HTTP {status}); {KEY_HINT}"
    if status == 404:
        return "no Realtime at this URL (HTTP 404): SUPABASE_URL must be the project URL"
    detail = str(err) or type(err).__name__
    return f"cannot reach Realtime ({detail}); retrying with backoff, the sweep covers the gap"


def _channel_problem(error: Exception | None) -> str:
    detail = str(error) if error is not None else "unknown"
    if "Unable to subscribe to changes" in detail:
        return f"{PUBLICATION_HINT} ({detail})"
    if any(word in detail for word in ("JWT", "Unauthorized", "token")):
        return f"the join was refused ({detail}); {KEY_HINT}"
    return f"the channel errored ({detail}); the client rejoins it"
