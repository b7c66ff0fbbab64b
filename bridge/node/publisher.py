"""Drain the store's outbox to an MQTT broker, in order, at least once.

The bridge node is the one publisher: it owns the outbox (every block writes its events there in
the block's own transaction) and is its only writer, so a single task reads it in order. Each
event goes, QoS 1, to the topic of every bank party to it (`bridge.notify`); the outbox cursor
moves past a block only after the broker acknowledged every message of it. If the broker is
unreachable settlement goes on and events wait in the outbox; the task reconnects with jittered
exponential backoff and publishes the backlog in order. If the node dies between the broker's
acknowledgement and the cursor update, the same messages (same seq, same instruction id) are
published again on restart: duplicates, never loss.

Authorization is the broker's: only the bridge's MQTT user may write, and the generated ACL
lets each bank read only its own topics (a central bank, its banks'). Publishing from the bridge
rather than from each central bank node keeps one ordered writer per event and no second copy
of the cursor; a central bank node being down does not silence its banks' notifications.

Test hook: with `CBDC_BRIDGE_PUBLISHER_HOLD=<file>` set, the publisher writes the acknowledged
outbox range to `<file>` after the first acknowledged batch and then waits forever before
marking it published (the node goes on settling), so a test can SIGKILL the node at exactly
that point.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho

from bridge.domain import BRIDGE_SENDER
from bridge.errors import StoreError
from bridge.metrics import gauge, stage
from bridge.node.episodes import FailureEpisode
from bridge.node.feed import ChainFeed
from bridge.notify import (
    FINAL_TOPIC,
    MqttSettings,
    event_body,
    final_message,
    settlement_topic,
    with_prev_seq,
)
from bridge.store.base import Store

if TYPE_CHECKING:
    from bridge.node.sequencer import Sequencer

log = logging.getLogger("bridge.publisher")
T = TypeVar("T")
CONSUMER = "mqtt"
HOLD_ENV = "CBDC_BRIDGE_PUBLISHER_HOLD"
ROWS_PER_READ = 200  # outbox rows (blocks) read at once
IN_FLIGHT = 512  # QoS 1 messages awaiting PUBACK at once (kept by the publisher, not paho)
PUBLISH_CHUNK = IN_FLIGHT // 2  # messages handed to the MQTT client at once; two in flight
BACKLOG_LOG_INTERVAL = 5.0
POLL_INTERVAL = 1.0  # the longest an event waits if no block wakes the publisher
OUTBOX = stage("outbox", thread_cpu=True)  # outbox rows read and made into messages (reader thread)
PUBLISH = stage("publish", thread_cpu=True)  # a batch of messages handed to the MQTT client
ACKS = stage("acks", thread_cpu=True)  # reading the broker's acknowledgements (event loop)


@dataclass(slots=True)
class PublisherStats:
    """What the publisher has done; `backlog_blocks` is the outbox rows not yet published."""

    connected: bool = False
    published_messages: int = 0
    published_blocks: int = 0
    backlog_blocks: int = 0
    reconnects: int = 0


class Backoff:
    """Exponential backoff with full jitter: a random pause in [base, cap-limited step]."""

    def __init__(self, base: float = 0.2, cap: float = 10.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        step = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(self.base, max(self.base, step))

    def reset(self) -> None:
        self.attempt = 0


class OutboxPublisher:
    """One task: outbox rows in id order → QoS 1 messages → cursor, forever."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        reader: Store,
        mark: Callable[[int], Any],
        feed: ChainFeed | None = None,
        writer: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.feed = feed
        self._mark = mark
        self._writer = writer
        self.stats = PublisherStats()
        self._wake = asyncio.Event()
        # whether the outbox may hold rows not read yet: a block was committed, the poll
        # interval passed, or (re)connected; a wake by finality alone publishes the final
        # height without reading the outbox
        self._outbox_due = True
        self._homes: dict[str, str] = {}
        self._prev: dict[str, int] = {}  # topic -> seq of its last message
        self._cursor = 0
        self._final_sent = -1
        self._task: asyncio.Task[None] | None = None
        self._marking: asyncio.Future[Any] | None = None
        # a cursor not stored means a re-publication after a restart, not a lost event
        self._cursor_writes = FailureEpisode(log, "outbox cursor writes (events published again)")
        self._last_backlog_log = 0.0
        self._hold_marker = os.environ.get(HOLD_ENV)  # the test hook, read once
        # every read of the store runs on this one thread (the connection is not shared)
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-reader")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._marking is not None:
            with contextlib.suppress(Exception):
                await self._marking  # the last cursor update lands before the store closes
        self._reads.shutdown(wait=True)

    def block_committed(self) -> None:
        """Wake the publisher: a block (and its outbox row) was committed."""
        if not self.stats.connected:
            self.stats.backlog_blocks += 1  # one outbox row per block (each batch recounts)
        self._outbox_due = True
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        backoff = Backoff()
        settings = self.settings
        port = settings.port
        resumed = False
        while True:
            try:
                if not resumed:
                    self._cursor = await self._read(self.reader.outbox_cursor, CONSUMER)
                    await self._read(self._rebuild_topic_heads, self._cursor)
                    resumed = True
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    username=settings.username,
                    password=settings.password,
                    # no window in paho: with one, every PUBACK makes it scan all its pending
                    # messages for a queued one (quadratic in the window); the publisher keeps
                    # at most IN_FLIGHT unacknowledged itself
                    max_inflight_messages=0,
                    timeout=10,
                ) as client:
                    client.pending_calls_threshold = IN_FLIGHT + 1  # a full window is normal
                    _time_reads(client)
                    self.stats.connected = True
                    backoff.reset()
                    backlog = await self._backlog()
                    log.info("mqtt connected", extra={"port": port, "backlog_blocks": backlog})
                    await self._serve(client)
            except aiomqtt.MqttError as error:
                self.stats.connected = False
                self.stats.reconnects += 1
                pause = backoff.next()
                backlog = await self._backlog()
                log.warning(
                    "mqtt unavailable; events wait in the outbox",
                    extra={
                        "error": str(error),
                        "retry_in_s": round(pause, 2),
                        "backlog_blocks": backlog,
                    },
                )
                await asyncio.sleep(pause)
            except Exception as error:
                # the store could not be read (a database restart, a disk error...): the task
                # must outlive it, or events would wait in the outbox until the node restarts
                self.stats.connected = False
                pause = backoff.next()
                log.error(
                    "outbox unreadable; events wait in the outbox",
                    exc_info=error,
                    extra={"retry_in_s": round(pause, 2)},
                )
                await asyncio.sleep(pause)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish until the connection breaks (raises MqttError)."""
        # the message iterator ends with MqttError when the connection drops: a broken
        # connection is noticed at once, not after a publish times out
        watchdog = asyncio.create_task(_until_disconnected(client))
        finality = None if self.feed is None else asyncio.create_task(self._watch_finality())
        self._outbox_due = True  # what a broken connection left unacknowledged is read again
        try:
            while True:
                # cleared before draining: a block committed meanwhile wakes the next round
                self._wake.clear()
                read, self._outbox_due = self._outbox_due, False
                work = asyncio.create_task(self._drain(client, read))
                done, _ = await asyncio.wait({work, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if watchdog in done:
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await work
                    watchdog.result()
                    raise aiomqtt.MqttError("connection lost")
                work.result()
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
                except TimeoutError:
                    self._outbox_due = True
        finally:
            for task in (watchdog, finality):
                if task is not None:
                    task.cancel()

    async def _watch_finality(self) -> None:
        assert self.feed is not None
        seen = self.feed.final_height
        while True:
            seen = await self.feed.wait_final_at_least(seen + 1)
            self._wake.set()

    async def _drain(self, client: aiomqtt.Client, read: bool = True) -> None:
        """Publish every unpublished outbox row (`read`: the outbox may hold some), in order,
        then the final height."""
        while read:
            rows, messages, heads, last = await self._read(self._read_batch, self._cursor)
            if not rows:
                self.stats.backlog_blocks = max(0, last - self._cursor)
                break
            await self._publish_all(client, messages)
            await self._hold_if_asked(rows[0], rows[-1], messages)
            self._prev = heads  # only now: a batch published again keeps its prev_seq
            self._mark_published(rows[-1])
            self.stats.published_messages += len(messages)
            self.stats.published_blocks += len(rows)
            self.stats.backlog_blocks = max(0, last - rows[-1])
            await self._log_backlog()
            if len(rows) < ROWS_PER_READ:
                # the outbox's end (a block committed since woke the next round): no read
                # that finds nothing, one fewer hop to the reader thread per block
                break
        await self._publish_final(client)

    def _read_batch(
        self, cursor: int
    ) -> tuple[list[int], list[tuple[str, bytes]], dict[str, int], int]:
        """Outbox row ids after `cursor`, their messages, each topic's last seq once they
        are published, and the newest row's id (the backlog's end) (on the reader thread)."""
        with OUTBOX.timed():
            rows = self.reader.outbox_after(cursor, ROWS_PER_READ)
            heads = dict(self._prev)
            messages = [m for _, payload in rows for m in self._messages(payload, heads)]
            ids = [i for i, _ in rows]
            # a short read reached the outbox's end: no query for it
            last = ids[-1] if 0 < len(ids) < ROWS_PER_READ else self.reader.outbox_last_id()
        return ids, messages, heads, last

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        """Run a read of the store on the publisher's own reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._reads, function, *args)

    async def _publish_all(self, client: aiomqtt.Client, messages: list[tuple[str, bytes]]) -> None:
        """Publish `messages` (QoS 1, retained: a new subscriber learns each topic's latest
        seq at once, and so its gap) and return once the broker acknowledged every one.

        Messages go to paho (which sends them at once) in chunks of half the window, each
        with one waiter counting its acknowledgements; a chunk is handed over once the one
        before the previous is acknowledged, so at most IN_FLIGHT wait for a PUBACK and the
        pipe never runs dry. (`aiomqtt.Client.publish` costs a task, an event and a scan of
        every pending call per message: with a full window that scan made publishing
        quadratic.) No timeout: the watchdog notices a broken connection."""
        internals = _paho_of(client)
        if internals is None:  # another aiomqtt: its public API
            for start in range(0, len(messages), IN_FLIGHT):
                chunk = messages[start : start + IN_FLIGHT]
                await asyncio.gather(
                    *(client.publish(t, p, qos=1, retain=True, timeout=math.inf) for t, p in chunk)
                )
            return
        pending, mqtt = internals
        window: collections.deque[_BatchAcks] = collections.deque()
        for start in range(0, len(messages), PUBLISH_CHUNK):
            if len(window) == 2:
                await window.popleft().done
            chunk = messages[start : start + PUBLISH_CHUNK]
            acks = _BatchAcks(len(chunk))
            with PUBLISH.timed(len(chunk)):
                for topic, payload in chunk:
                    info = mqtt.publish(topic, payload, qos=1, retain=True)
                    if info.rc != paho.MQTT_ERR_SUCCESS:
                        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
                    if info.is_published():  # acknowledged already
                        acks.set()
                    else:
                        pending[info.mid] = acks  # aiomqtt calls `.set()` on its PUBACK
            window.append(acks)
        for acks in window:
            await acks.done

    async def _publish_final(self, client: aiomqtt.Client) -> None:
        if self.feed is None or self.feed.final_height == self._final_sent:
            return
        final = self.feed.final_height
        await client.publish(
            FINAL_TOPIC, final_message(final, self.feed.height), qos=1, retain=True
        )
        self._final_sent = final

    def _mark_published(self, upto: int) -> None:
        """Move the stored cursor to `upto` (acknowledged) without waiting: the writer thread
        may be busy with a block's fsync, and the next batch need not wait for it. Marks run
        in order on that one thread; a crash before one lands means a re-publication."""
        self._cursor = upto
        marking = asyncio.get_running_loop().run_in_executor(self._writer, self._mark, upto)
        marking.add_done_callback(self._marked)
        self._marking = marking

    def _marked(self, marking: asyncio.Future[Any]) -> None:
        """A cursor write ended: a failing run of them is logged once, with its cause (the
        events not marked are published again), and its end once."""
        if marking.cancelled():
            return
        error = marking.exception()
        if error is None:
            self._cursor_writes.succeeded()
        else:
            self._cursor_writes.failed(error, traceback=not isinstance(error, StoreError))

    # ------------------------------------------------------------------ messages

    def _messages(self, payload: bytes, heads: dict[str, int]) -> list[tuple[str, bytes]]:
        """(topic, message) for every party of every event of one outbox row; `heads` (each
        topic's last seq) is advanced past them."""
        out = []
        for event in json.loads(payload):
            body = event_body(event)
            for party in event["parties"]:
                if party == BRIDGE_SENDER:
                    continue  # the bridge's own entries (expiries) concern their PvP's banks
                topic = settlement_topic(self._home(party), party)
                out.append((topic, with_prev_seq(body, heads.get(topic, 0))))
                heads[topic] = event["seq"]
        return out

    def _home(self, party: str) -> str:
        home = self._homes.get(party)
        if home is None:
            participant = self.reader.participant(party)
            home = party if participant is None else participant.home_central_bank
            if participant is not None:
                self._homes[party] = home
        return home

    def _rebuild_topic_heads(self, upto: int) -> None:
        """The last seq of each topic among published rows, so `prev_seq` survives restarts."""
        cursor = 0
        while cursor < upto and (rows := self.reader.outbox_after(cursor, 1000)):
            for row_id, payload in rows:
                if row_id > upto:
                    return
                for event in json.loads(payload):
                    for party in event["parties"]:
                        if party == BRIDGE_SENDER:
                            continue
                        self._prev[settlement_topic(self._home(party), party)] = event["seq"]
                cursor = row_id

    # ------------------------------------------------------------------ backlog and hook

    async def _backlog(self) -> int:
        """Outbox rows not published yet, counted in the store (the last count if it cannot
        be read)."""
        try:
            last = await self._read(self.reader.outbox_last_id)
        except Exception as error:
            log.warning("outbox backlog not counted", extra={"error": str(error)})
            return self.stats.backlog_blocks
        self.stats.backlog_blocks = max(0, last - self._cursor)
        return self.stats.backlog_blocks

    async def _log_backlog(self) -> None:
        now = time.monotonic()
        if now - self._last_backlog_log >= BACKLOG_LOG_INTERVAL:
            self._last_backlog_log = now
            backlog = await self._backlog()
            if backlog:
                log.info("mqtt backlog", extra={"backlog_blocks": backlog})

    async def _hold_if_asked(
        self, first: int, last: int, messages: list[tuple[str, bytes]]
    ) -> None:
        marker = self._hold_marker
        if not marker:
            return
        seqs = sorted({json.loads(p)["seq"] for _, p in messages})
        # Written whole, then renamed: a test polling for the file never reads half of it.
        partial = Path(marker + ".partial")
        partial.write_text(json.dumps({"first_row": first, "last_row": last, "seqs": seqs}))
        partial.replace(marker)
        log.warning("publisher held before marking published (test hook)", extra={"upto": last})
        await asyncio.Event().wait()  # forever: the node goes on settling; a test SIGKILLs it


def export_gauges(current: Callable[[], OutboxPublisher | None]) -> None:
    """The publisher's backlog, connection and counts as gauges of the node's metrics
    endpoint (`current()`: the running publisher, None while there is none)."""

    def read(field: str) -> Callable[[], float]:
        def value() -> float:
            publisher = current()
            return 0.0 if publisher is None else float(getattr(publisher.stats, field))

        return value

    for name, documentation, field in (
        (
            "mqtt_backlog_blocks",
            "Outbox rows not yet published to MQTT.",
            "backlog_blocks",
        ),
        ("mqtt_connected", "1 while the publisher is connected to the MQTT broker.", "connected"),
        ("mqtt_published_messages", "Messages the MQTT broker acknowledged.", "published_messages"),
        ("mqtt_reconnects", "Failed or lost connections to the MQTT broker.", "reconnects"),
    ):
        gauge(name, documentation, read(field))


def _paho_of(client: aiomqtt.Client) -> tuple[dict[int, Any], paho.Client] | None:
    """aiomqtt 2's table of calls waiting for a PUBACK and its paho client, or None when this
    aiomqtt keeps them otherwise (then the publisher uses its public `publish`)."""
    pending = getattr(client, "_pending_publishes", None)
    mqtt = getattr(client, "_client", None)
    if not isinstance(pending, dict) or not isinstance(mqtt, paho.Client):
        return None
    return pending, mqtt


def _time_reads(client: aiomqtt.Client) -> None:
    """Time the MQTT client's reads of the socket (aiomqtt calls `loop_read` whenever the
    socket is readable) as the `acks` stage."""
    mqtt = getattr(client, "_client", None)
    if not isinstance(mqtt, paho.Client):
        return
    read = mqtt.loop_read

    def timed_read(max_packets: int = 1) -> Any:
        with ACKS.timed():
            return read(max_packets)

    mqtt.loop_read = timed_read  # type: ignore[method-assign]


class _BatchAcks:
    """Stands for the `asyncio.Event` aiomqtt sets when a message is acknowledged: counts the
    acknowledgements of one batch and resolves `done` at the last (on the event loop)."""

    __slots__ = ("done", "left")

    def __init__(self, count: int) -> None:
        self.left = count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        self.left -= 1
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


async def _until_disconnected(client: aiomqtt.Client) -> None:
    async for _ in client.messages:
        pass


class PublishWhileLeading:
    """The publisher of one of several bridge processes sharing a database: it runs only while
    this process leads, since only the leader writes the outbox then. A deposed leader's last
    batch may be published twice (by it and by the next leader): duplicates, never loss."""

    def __init__(self, settings: MqttSettings | None, reader: Store, feed: ChainFeed) -> None:
        self.settings = settings
        self.reader = reader
        self.feed = feed
        self.publisher: OutboxPublisher | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    def install(self, sequencer: Sequencer | None) -> None:
        """Start publishing with this leader's sequencer, or stop (None: standing by)."""
        if self.settings is None:
            return
        if self.publisher is not None:
            stopping = asyncio.get_running_loop().create_task(self.publisher.stop())
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
            self.publisher = None
        if sequencer is not None:
            store = sequencer.engine.store
            self.publisher = OutboxPublisher(
                self.settings,
                reader=self.reader,
                mark=lambda upto: store.set_outbox_cursor(CONSUMER, upto),
                feed=self.feed,
                writer=sequencer.writer,
            )
            self.publisher.start()

    def block_committed(self) -> None:
        if self.publisher is not None:
            self.publisher.block_committed()

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
            self.publisher = None
        for stopping in list(self._stopping):
            await stopping
