"""Drain the store's outbox to an MQTT broker, in order, at least once.

The bridge node is the one publisher: it owns the outbox (every block writes its events there in
the block's own transaction) and is its only writer, so a single task publishes it in order.
The sequencer hands each committed block's events and outbox row id to the publisher in memory
(`block_committed`); the outbox is read, from the cursor to its end, only when what was handed
over may not follow on from what was published: at start, after a reconnection, after a block
not handed over (too many waiting), or for a party whose topic is not known yet. Each event
goes, QoS 1, to the topic of every bank party to it (`bridge.notify`); the outbox cursor moves
past a block only after the broker acknowledged every message of it. If the broker is
unreachable settlement goes on and events wait in the outbox; the task reconnects with jittered
exponential backoff and publishes the backlog in order. If the node dies between the broker's
acknowledgement and the cursor update, the same messages (same seq, same instruction id) are
published again on restart: duplicates, never loss. The cursor is stored at most every
MARK_INTERVAL, so a crash publishes again up to that much more.

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
import itertools
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
    notice_body,
    settlement_topic,
    with_prev_seq,
)
from bridge.store.base import Store

if TYPE_CHECKING:
    from bridge.node.sequencer import Sequencer
    from bridge.settlement import OutboxRow

log = logging.getLogger("bridge.publisher")
T = TypeVar("T")
CONSUMER = "mqtt"
HOLD_ENV = "CBDC_BRIDGE_PUBLISHER_HOLD"
ROWS_PER_READ = 200  # outbox rows (blocks) read at once (or taken from memory)
HANDED_EVENTS = 20_000  # events of blocks handed over in memory kept while they wait
IN_FLIGHT = 512  # QoS 1 messages awaiting PUBACK at once (kept by the publisher, not paho)
PUBLISH_CHUNK = IN_FLIGHT // 2  # messages handed to the MQTT client at once; two in flight
BACKLOG_LOG_INTERVAL = 5.0
POLL_INTERVAL = 1.0  # the longest an event waits if no block wakes the publisher
FINAL_INTERVAL = 0.05  # at most one `blocks/final` message per this many seconds
MARK_INTERVAL = 0.1  # at most one cursor write per this many seconds
READ_BUFFER = 65536  # bytes taken from the broker's socket at once
# outbox rows read and made into messages (reader thread), or taken from memory (event loop)
OUTBOX = stage("outbox", thread_cpu=True)
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
    """One task: outbox rows in id order (handed over in memory, or read back from the store)
    → QoS 1 messages → cursor, forever.

    A batch of rows is handed to the MQTT client (at most IN_FLIGHT messages unacknowledged)
    and acknowledged before the next is read, so the blocks committed meanwhile make one
    batch; the acknowledged position moves in row order, and the stored cursor follows it at
    most every MARK_INTERVAL. The final height is published by a task of its own, at most
    every FINAL_INTERVAL, without waiting for its acknowledgement."""

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
        self._homes: dict[str, str] = {}
        self._topics: dict[str, str] = {}  # party -> its topic, once its home is known
        # committed blocks' rows handed over in memory (`block_committed`), in row order; they
        # are published from here while `_caught_up`: no row of the store lies between the
        # cursor and them. `_gaps` counts the rows not kept here (read from the store instead).
        self._handed: collections.deque[OutboxRow] = collections.deque()
        self._handed_events = 0
        self._handed_height: int | None = None  # the height of the block handed over last
        self._caught_up = False
        self._gaps = 0
        self._prev: dict[str, int] = {}  # topic -> seq of its last message handed to the client
        self._acked_prev: dict[str, int] = {}  # the same, of its last acknowledged message
        self._cursor = 0  # the last outbox row handed to the client
        self._acked = 0  # the last row whose messages (and all before) the broker acknowledged
        self._stored = 0  # the last row stored as the cursor (or being stored)
        self._sent: collections.deque[_Sent] = collections.deque()  # in row order
        # the messages packed by the publisher itself awaiting their PUBACK: mid -> the
        # counter of their chunk (this connection's; None when paho packs them)
        self._awaiting: dict[int, _BatchAcks] | None = None
        self._topic_fields: dict[str, bytes] = {}  # topic -> its PUBLISH header field
        self._in_flight = 0  # messages of `_sent` (handed over, not all acknowledged)
        self._final_sent = -1
        self._task: asyncio.Task[None] | None = None
        self._marking: asyncio.Future[Any] | None = None
        # a cursor not stored means a re-publication after a restart, not a lost event
        self._cursor_writes = FailureEpisode(log, "outbox cursor writes (events published again)")
        self._outbox_reads = FailureEpisode(log, "outbox reads (events wait in the outbox)")
        self._mark_timer: asyncio.TimerHandle | None = None
        self._last_mark = -math.inf
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
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        if self._hold_marker is None:
            try:
                self._mark_now()  # what was acknowledged since the last mark
            except RuntimeError:
                # the ledger's writer thread has already shut down (a leader stepping down
                # stops its sequencer first): the last mark goes on the publisher's own thread
                self._mark_now(self._reads)
        if self._marking is not None:
            with contextlib.suppress(Exception):
                await self._marking  # the last cursor update lands before the store closes
        self._reads.shutdown(wait=True)

    def block_committed(self, row: OutboxRow | None = None) -> None:
        """Wake the publisher: a block (and its outbox row) was committed. With `row` (every
        block committed after this publisher was made, in order), its events are published
        from memory, not read back; without it, or past HANDED_EVENTS waiting, rows are read
        from the store from the cursor until its end is reached again."""
        if not self.stats.connected:
            self.stats.backlog_blocks += 1  # one outbox row per block (each batch recounts)
        # a block not handed over (its height skipped) is read from the store: never passed
        follows = row is not None and (
            self._handed_height is None or row.height == self._handed_height + 1
        )
        self._handed_height = None if row is None else row.height
        if row is not None and follows and self._handed_events + len(row.notices) <= HANDED_EVENTS:
            self._handed.append(row)
            self._handed_events += len(row.notices)
        else:
            self._handed.clear()
            self._handed_events = 0
            self._caught_up = False
            self._gaps += 1
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
                    self._acked = self._stored = self._cursor
                    self._acked_prev = dict(self._prev)
                    self._outbox_reads.succeeded()
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
                    _buffer_reads(client)
                    self._awaiting = _own_acknowledgements(client)
                    _time_reads(client)
                    _coalesce_writes(client)
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
                # must outlive it, or events would wait in the outbox until the node restarts;
                # one line per episode, a traceback only for what is not a store failure
                self.stats.connected = False
                self._outbox_reads.failed(error, traceback=not isinstance(error, StoreError))
                await asyncio.sleep(backoff.next())

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish until the connection breaks (raises MqttError) or the store fails."""
        # what a broken connection left unacknowledged is read and published again, each
        # topic's chain going on from its last acknowledged message
        self._sent.clear()
        self._in_flight = 0
        self._cursor = self._acked
        self._prev = dict(self._acked_prev)
        self._caught_up = False  # the rows between the acknowledged position and memory
        self._final_sent = -1  # the final height once more on every connection
        # the message iterator ends with MqttError when the connection drops: a broken
        # connection is noticed at once, not after a publish times out
        tasks = {
            asyncio.create_task(_until_disconnected(client)),
            asyncio.create_task(self._drain_forever(client)),
        }
        if self.feed is not None:
            tasks.add(asyncio.create_task(self._publish_finality(client)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the store's error, or the connection's
            raise aiomqtt.MqttError("connection lost")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain_forever(self, client: aiomqtt.Client) -> None:
        while True:
            # cleared before draining: a block committed meanwhile wakes the next round
            self._wake.clear()
            await self._drain(client)
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await self._wake.wait()

    async def _publish_finality(self, client: aiomqtt.Client) -> None:
        """The final height, retained, whenever it moves but at most every FINAL_INTERVAL: a
        subscriber needs only the highest (a height is final once it is at most that), so the
        heights in between are left out. Not waited for: a message lost with the connection is
        sent again on the next one (`_final_sent` is reset)."""
        assert self.feed is not None
        feed = self.feed
        internals = _paho_of(client)
        while True:
            final = feed.final_height
            if final == self._final_sent:
                await feed.wait_final_at_least(final + 1)
                continue
            payload = final_message(final, feed.height)
            if internals is None:
                await client.publish(FINAL_TOPIC, payload, qos=1, retain=True)
            else:
                info = internals[1].publish(FINAL_TOPIC, payload, qos=1, retain=True)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            self._final_sent = final
            await asyncio.sleep(FINAL_INTERVAL)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Hand every outbox row not handed over yet to the client, in order: from memory
        while caught up with the store, read from the store otherwise (at start, after a
        reconnection, a gap in what was handed over, a party whose home is not known yet)."""
        while True:
            if self._caught_up:
                taken = self._take_handed()
                if taken is not None:
                    if not taken[0]:
                        self.stats.backlog_blocks = 0
                        return
                    await self._publish_batch(client, *taken, len(self._handed))
                    continue
            gaps = self._gaps
            rows, messages, heads, last = await self._read(self._read_batch, self._cursor)
            self._outbox_reads.succeeded()
            if len(rows) < ROWS_PER_READ and gaps == self._gaps:
                # the store's end, read after every row not handed over in memory was
                # committed: the rows handed over from here on follow without a gap
                self._caught_up = True
            if not rows:
                self.stats.backlog_blocks = max(0, last - self._cursor)
                return
            await self._publish_batch(client, rows, messages, heads, max(0, last - rows[-1]))
            if len(rows) < ROWS_PER_READ:
                # the outbox's end (a block committed since woke the next round): no read
                # that finds nothing, one fewer hop to the reader thread per block
                return

    async def _publish_batch(
        self,
        client: aiomqtt.Client,
        rows: list[int],
        messages: list[tuple[str, bytes]],
        heads: dict[str, int],
        backlog: int,
    ) -> None:
        await self._send(client, rows, messages, heads)
        # the next batch waits for this one's acknowledgements: the blocks committed meanwhile
        # go as one batch (a read and a write per block cost the bridge more than a broker
        # round trip costs the latency)
        while self._acked < rows[-1]:
            await self._sent[0].acks.done
        self.stats.backlog_blocks = backlog
        await self._hold_if_asked(rows[0], rows[-1], messages)
        await self._log_backlog()

    def _take_handed(self) -> tuple[list[int], list[tuple[str, bytes]], dict[str, int]] | None:
        """Up to ROWS_PER_READ rows handed over in memory after the cursor, their messages
        and each topic's last seq once they are published (as `_read_batch` reads them from
        the store); the rows before the first with a party whose topic is not known yet, or
        None when that is the first (the store path learns the topic)."""
        handed = self._handed
        cursor = self._cursor
        while handed and handed[0].row_id <= cursor:  # read from the store meanwhile
            self._handed_events -= len(handed.popleft().notices)
        if not handed:
            return [], [], self._prev
        with OUTBOX.timed():
            heads = dict(self._prev)
            rows: list[int] = []
            messages: list[tuple[str, bytes]] = []
            for row in itertools.islice(handed, ROWS_PER_READ):
                made = self._row_messages(row, heads)
                if made is None:
                    break
                messages += made
                rows.append(row.row_id)
            for _ in rows:
                self._handed_events -= len(handed.popleft().notices)
        if not rows:
            self._caught_up = False
            return None
        return rows, messages, heads

    def _row_messages(
        self, row: OutboxRow, heads: dict[str, int]
    ) -> list[tuple[str, bytes]] | None:
        """The messages of one row handed over in memory (as `_messages` makes them of a
        stored row), `heads` advanced past them; None, `heads` untouched, if a party's topic
        is not known yet."""
        topics = self._topics
        moved: dict[str, int] = {}  # each topic's last seq within the row
        out = []
        for seq, parties, encoded in row.notices:
            body = notice_body(encoded)
            for party in parties:
                if party == BRIDGE_SENDER:
                    continue  # as in `_messages`
                topic = topics.get(party)
                if topic is None:
                    return None
                prev = moved.get(topic)
                out.append(
                    (topic, with_prev_seq(body, heads.get(topic, 0) if prev is None else prev))
                )
                moved[topic] = seq
        heads.update(moved)
        return out

    def _read_batch(
        self, cursor: int, limit: int = ROWS_PER_READ
    ) -> tuple[list[int], list[tuple[str, bytes]], dict[str, int], int]:
        """Up to `limit` outbox row ids after `cursor`, their messages, each topic's last seq
        once they are published, and the newest row's id (the backlog's end)."""
        with OUTBOX.timed():
            rows = self.reader.outbox_after(cursor, limit)
            heads = dict(self._prev)
            messages = [m for _, payload in rows for m in self._messages(payload, heads)]
            ids = [i for i, _ in rows]
            # a short read reached the outbox's end: no query for it
            last = ids[-1] if 0 < len(ids) < limit else self.reader.outbox_last_id()
        return ids, messages, heads, last

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        """Run a read of the store on the publisher's own reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._reads, function, *args)

    async def _send(
        self,
        client: aiomqtt.Client,
        rows: list[int],
        messages: list[tuple[str, bytes]],
        heads: dict[str, int],
    ) -> None:
        """Hand the messages of `rows` to the MQTT client (QoS 1, retained: a new subscriber
        learns each topic's latest seq at once, and so its gap) and return once they are
        handed over, not acknowledged: `_acknowledged` moves the acknowledged position.

        Messages go to paho (which sends them at once) in chunks of at most half the window,
        each with one waiter counting its acknowledgements; a chunk is handed over once at
        most IN_FLIGHT messages would then wait for a PUBACK. (`aiomqtt.Client.publish` costs
        a task, an event and a scan of every pending call per message: with a full window that
        scan made publishing quadratic.) No timeout: the watchdog notices a broken
        connection."""
        self._cursor = rows[-1]
        self._prev = heads
        internals = _paho_of(client)
        if internals is None or not messages:  # another aiomqtt: its public API
            for start in range(0, len(messages), IN_FLIGHT):
                chunk = messages[start : start + IN_FLIGHT]
                await asyncio.gather(
                    *(client.publish(t, p, qos=1, retain=True, timeout=math.inf) for t, p in chunk)
                )
            self._sent.append(_Sent(_BatchAcks(0), len(messages), rows[-1], heads, len(rows)))
            self._acknowledged()
            return
        pending, mqtt = internals
        awaiting = self._awaiting
        for start in range(0, len(messages), PUBLISH_CHUNK):
            chunk = messages[start : start + PUBLISH_CHUNK]
            while self._in_flight + len(chunk) > IN_FLIGHT:
                await self._sent[0].acks.done  # `_acknowledged` makes room
            acks = _BatchAcks(len(chunk), self._acknowledged)
            if start + PUBLISH_CHUNK >= len(messages):  # the batch's last chunk
                self._sent.append(_Sent(acks, len(chunk), rows[-1], heads, len(rows)))
            else:
                self._sent.append(_Sent(acks, len(chunk)))
            self._in_flight += len(chunk)
            if awaiting is not None:
                with PUBLISH.timed(len(chunk)):
                    _queue_publishes(mqtt, chunk, acks, awaiting, self._topic_fields)
                continue
            with PUBLISH.timed(len(chunk)):
                for topic, payload in chunk:
                    info = mqtt.publish(topic, payload, qos=1, retain=True)
                    if info.rc != paho.MQTT_ERR_SUCCESS:
                        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
                    if info.is_published():  # acknowledged already
                        acks.set()
                    else:
                        pending[info.mid] = acks  # aiomqtt calls `.set()` on its PUBACK

    def _acknowledged(self) -> None:
        """Move the acknowledged position over every chunk acknowledged in full, in order."""
        sent = self._sent
        while sent and sent[0].acks.done.done():
            chunk = sent.popleft()
            self._in_flight -= chunk.messages
            self.stats.published_messages += chunk.messages
            if chunk.upto is not None and chunk.heads is not None:
                self._acked = chunk.upto
                self._acked_prev = chunk.heads
                self.stats.published_blocks += chunk.rows
                self._mark_soon()

    def _mark_soon(self) -> None:
        """Store the acknowledged position as the cursor, at most every MARK_INTERVAL (a
        write on the ledger's writer thread per block would delay the next block); a crash
        before it lands means those messages are published again. Nothing is marked while
        the test hook holds."""
        if self._hold_marker or self._mark_timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_mark + MARK_INTERVAL - loop.time()
        if wait <= 0 and (self._marking is None or self._marking.done()):
            self._mark_now()
        else:
            self._mark_timer = loop.call_later(max(wait, MARK_INTERVAL / 10), self._mark_due)

    def _mark_due(self) -> None:
        self._mark_timer = None
        self._mark_soon()

    def _mark_now(self, executor: Executor | None = None) -> None:
        """Move the stored cursor to the acknowledged position without waiting: the writer
        thread may be busy with a block's fsync. Marks run in order on that one thread
        (`executor`: another, once that one is gone)."""
        upto = self._acked
        if upto <= self._stored:
            return
        loop = asyncio.get_running_loop()
        on = executor if executor is not None else self._writer
        try:
            marking = loop.run_in_executor(on, self._mark, upto)
        except RuntimeError:  # that thread is gone (a leader stepping down): the reader's
            marking = loop.run_in_executor(self._reads, self._mark, upto)
        self._stored = upto
        self._last_mark = loop.time()
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
                self._topics[party] = settlement_topic(home, party)
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
        while self._acked < last:  # the broker acknowledged the batch
            await self._sent[0].acks.done
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


def _buffer_reads(client: aiomqtt.Client) -> None:
    """Read the socket in blocks of READ_BUFFER bytes rather than paho's three `recv` calls per
    packet (its command byte, its length, its body: a PUBACK is four bytes).

    paho handles at most as many packets per `loop_read` as it has messages in flight; bytes
    received beyond that are handled at once by reading again (the socket will not wake the
    loop for bytes already taken from it)."""
    mqtt = getattr(client, "_client", None)
    if not isinstance(mqtt, paho.Client):
        return
    receive = mqtt._sock_recv
    buffer = bytearray()

    def buffered(size: int) -> bytes:
        if not buffer:
            data = receive(READ_BUFFER)  # BlockingIOError when nothing waits, as paho expects
            if len(data) <= size:
                return data
            buffer.extend(data)
        taken = bytes(buffer[:size])
        del buffer[:size]
        return taken

    read = mqtt.loop_read

    def read_all(max_packets: int = 1) -> Any:
        rc = read(max_packets)
        while buffer and rc == paho.MQTT_ERR_SUCCESS:
            rc = read(max_packets)
        return rc

    mqtt._sock_recv = buffered  # type: ignore[method-assign,assignment]
    mqtt.loop_read = read_all  # type: ignore[method-assign]


def _coalesce_writes(client: aiomqtt.Client) -> None:
    """Send the packets paho has queued with one `send` instead of one per packet.

    paho writes each queued packet with its own system call when the socket is writable; the
    publisher queues a batch of messages at once, so they go as one buffer. Only packets that
    need nothing after their last byte is written are joined (not a DISCONNECT, nor a QoS 0
    PUBLISH, whose `on_publish` fires on writing): a QoS 1 PUBLISH is done with once written
    (paho keeps it apart for its PUBACK and a resend). A partial write keeps the rest queued,
    as paho does for one packet."""
    mqtt = getattr(client, "_client", None)
    queue = getattr(mqtt, "_out_packet", None)
    if not isinstance(mqtt, paho.Client) or not isinstance(queue, collections.deque):
        return
    write = mqtt._packet_write

    def joined() -> Any:
        packets = mqtt._out_packet
        if len(packets) > 1 and all(_joinable(p) for p in packets):
            data = b"".join(memoryview(p["packet"])[p["pos"] :] for p in packets)
            last = packets[-1]
            packets.clear()
            packets.append(
                {
                    "command": last["command"],
                    "mid": last["mid"],
                    "qos": 1,
                    "pos": 0,
                    "to_process": len(data),
                    "packet": data,
                    "info": None,
                }
            )
        return write()

    mqtt._packet_write = joined  # type: ignore[method-assign]


def _joinable(packet: Any) -> bool:
    command = packet["command"] & 0xF0
    return command != paho.DISCONNECT and not (command == paho.PUBLISH and packet["qos"] == 0)


def _own_acknowledgements(client: aiomqtt.Client) -> dict[int, _BatchAcks] | None:
    """Handle the PUBACK of each message the publisher packed itself (`_queue_publishes`) at
    once, and leave every other packet to paho: the table of those messages (mid -> the
    counter of their chunk), or None when this paho does not fit (the publisher then calls
    its `publish`).

    paho decodes each PUBACK into a reason code and a properties object, takes two locks,
    calls aiomqtt's callback (which finds its waiter) and marks its own copy of the message
    published: about three quarters of the `acks` stage. An MQTT 3.1.1 PUBACK is its message
    id and nothing else; a PUBACK of a message paho sent (the final height) goes to paho."""
    mqtt = getattr(client, "_client", None)
    if (
        not isinstance(mqtt, paho.Client)
        or getattr(mqtt, "_protocol", None) not in (paho.MQTTv31, paho.MQTTv311)
        or not isinstance(getattr(mqtt, "_in_packet", None), dict)
        or not isinstance(getattr(mqtt, "_out_packet", None), collections.deque)
        or not callable(getattr(mqtt, "_mid_generate", None))
        or not callable(getattr(mqtt, "_call_socket_register_write", None))
        or not callable(getattr(mqtt, "_packet_handle", None))
        or not hasattr(mqtt, "_sock")
    ):
        return None
    awaiting: dict[int, _BatchAcks] = {}
    handle = mqtt._packet_handle
    success = paho.MQTT_ERR_SUCCESS

    def handled() -> Any:
        packet = mqtt._in_packet
        if packet["command"] == paho.PUBACK and len(packet["packet"]) == 2:
            acks = awaiting.pop(int.from_bytes(packet["packet"], "big"), None)
            if acks is not None:
                acks.set()
                return success
        return handle()

    mqtt._packet_handle = handled  # type: ignore[method-assign]
    return awaiting


def _queue_publishes(
    mqtt: paho.Client,
    chunk: list[tuple[str, bytes]],
    acks: _BatchAcks,
    awaiting: dict[int, _BatchAcks],
    topic_fields: dict[str, bytes],
) -> None:
    """Pack each message as a QoS 1, retained MQTT 3.1.1 PUBLISH (the bytes paho packs) and
    queue the chunk on paho's socket at once; `awaiting` gets each one's id.

    paho's `publish` also builds a message object and an info object per message, keeps a
    copy for a resend on reconnection (this client is not reused: the publisher publishes
    again from its acknowledged position on a new connection) and wakes its own loop's
    socket pair with a `send` per message (unused under aiomqtt)."""
    if mqtt._sock is None:
        raise aiomqtt.MqttCodeError(paho.MQTT_ERR_NO_CONN, "Could not publish message")
    queue = mqtt._out_packet
    next_mid = mqtt._mid_generate
    for topic, payload in chunk:
        field = topic_fields.get(topic)
        if field is None:
            field = topic_fields[topic] = _topic_field(topic)
        mid = next_mid()
        body_length = len(field) + 2 + len(payload)
        packet = b"".join(
            (_PUBLISH_QOS1_RETAIN, _remaining_length(body_length), field, mid.to_bytes(2), payload)
        )
        queue.append(
            {
                "command": _PUBLISH_QOS1_RETAIN[0],
                "mid": mid,
                "qos": 1,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": None,
            }
        )
        awaiting[mid] = acks
    mqtt._call_socket_register_write()


_PUBLISH_QOS1_RETAIN = bytes((paho.PUBLISH | 1 << 1 | 1,))  # QoS 1, retain, not DUP


def _topic_field(topic: str) -> bytes:
    """A PUBLISH packet's topic: its UTF-8 length, then the bytes (checked as paho does)."""
    name = topic.encode()
    if not name or b"+" in name or b"#" in name or len(name) > 65535:
        raise ValueError(f"not a topic to publish to: {topic!r}")
    return len(name).to_bytes(2) + name


MAX_REMAINING_LENGTH = 268_435_455  # MQTT 3.1.1: four bytes of seven bits


def _remaining_length(length: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length (ValueError past what
    it can encode, as paho raises for a payload too large)."""
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(f"an MQTT packet holds at most {MAX_REMAINING_LENGTH} bytes")
    if length < 128:
        return bytes((length,))
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


class _BatchAcks:
    """Stands for the `asyncio.Event` aiomqtt sets when a message is acknowledged: counts the
    acknowledgements of one chunk, resolves `done` at the last and calls `on_done` (on the
    event loop)."""

    __slots__ = ("done", "left", "on_done")

    def __init__(self, count: int, on_done: Callable[[], None] | None = None) -> None:
        self.left = count
        self.on_done = on_done
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if count <= 0:
            self.done.set_result(None)

    def set(self) -> None:
        self.left -= 1
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)
            if self.on_done is not None:
                self.on_done()


@dataclass(slots=True)
class _Sent:
    """A chunk of messages handed to the MQTT client; the last chunk of an outbox batch
    carries the batch's last row, its row count and each topic's last seq after it."""

    acks: _BatchAcks
    messages: int
    upto: int | None = None
    heads: dict[str, int] | None = None
    rows: int = 0


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
        self._sequencer: Sequencer | None = None
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
        if self._sequencer is not None:
            self._sequencer.on_outbox = None
        self._sequencer = sequencer
        if sequencer is not None:
            store = sequencer.engine.store
            self.publisher = OutboxPublisher(
                self.settings,
                reader=self.reader,
                mark=lambda upto: store.set_outbox_cursor(CONSUMER, upto),
                feed=self.feed,
                writer=sequencer.writer,
            )
            # every block this sequencer commits from now on, in memory; those it committed
            # before are read from the store (the publisher starts there)
            sequencer.on_outbox = self.publisher.block_committed
            self.publisher.start()

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
            self.publisher = None
        for stopping in list(self._stopping):
            await stopping
