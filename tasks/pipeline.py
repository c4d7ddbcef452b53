"""The pipeline's tasks: the beat-scheduled drain and the batch scoring it fans out."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence

import redis
from celery import shared_task

from scoring.capability import check_capabilities
from scoring.engine import BatchScorer
from scoring.keys import Keys
from scoring.settings import get_settings
from scoring.store import (
    Entry,
    chunked,
    connect,
    ensure_group,
    read_new,
    reclaim,
    record_lost,
    trim_acknowledged,
    utc_now_iso,
)

log = logging.getLogger(__name__)

_client: redis.Redis | None = None
_client_pid: int | None = None
_scorer: BatchScorer | None = None
_group_ready = False


def data_client() -> redis.Redis:
    """Return this process's data-server client, made after fork and checked once."""
    global _client, _client_pid, _scorer, _group_ready
    if _client is None or _client_pid != os.getpid():
        from tasks.celeryconfig import _data_url  # resolved once per process with the broker URL

        _client = connect(_data_url)
        check_capabilities(_client)
        _client_pid = os.getpid()
        _scorer = None
        _group_ready = False
    return _client


_broker: redis.Redis | None = None
_broker_pid: int | None = None


def _score_backlog() -> int:
    """Return the number of scoring tasks waiting in the broker's queue."""
    global _broker, _broker_pid
    if _broker is None or _broker_pid != os.getpid():
        from tasks.celeryconfig import broker_url  # resolved once per process, like the data URL

        _broker = connect(broker_url)
        _broker_pid = os.getpid()
    return int(_broker.llen(Keys.from_settings(get_settings()).score_queue))


def scorer() -> BatchScorer:
    """Return this process's batch scorer."""
    global _scorer
    if _scorer is None:
        _scorer = BatchScorer(data_client(), get_settings())
    return _scorer


@shared_task(name="riskscore.score_batch", ignore_result=True)
def score_batch(entries: Sequence[Sequence[object]]) -> dict[str, int]:
    """Score a batch of stream entries, given as [entry id, {field: value}] pairs."""
    batch: list[Entry] = [(str(entry_id), dict(fields)) for entry_id, fields in entries]  # type: ignore[call-overload]
    result = scorer().score(batch)
    log.debug("scored batch size=%d %s", len(batch), result.as_dict())
    return result.as_dict()


def _fan_out(entries: list[Entry], batch_size: int) -> int:
    if not entries:
        return 0
    sent = 0
    with score_batch.app.producer_or_acquire() as producer:
        for chunk in chunked(entries, batch_size):
            score_batch.apply_async(args=[[list(entry) for entry in chunk]], producer=producer)
            sent += 1
    return sent


def _linger(client: redis.Redis, keys: Keys, consumer: str, wanted: int, linger_ms: float, deadline: float) -> list[Entry]:
    """Wait up to `linger_ms` for `wanted` more entries, so that a batch is not sent nearly empty.

    At low rates each XREADGROUP returns one or two entries; one task per entry would cost more in
    Celery overhead than the scoring itself. Lingering trades a few milliseconds of latency for
    fuller batches.
    """
    entries: list[Entry] = []
    linger_end = min(deadline, time.monotonic() + linger_ms / 1000)
    while len(entries) < wanted:
        remaining_ms = int((linger_end - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        entries += read_new(client, keys, consumer, wanted - len(entries), block_ms=remaining_ms)
    return entries


@shared_task(name="riskscore.drain", ignore_result=True)
def drain() -> dict[str, int]:
    """Read new and stale entries from the consumer group and send them out in batches.

    Entries read here stay pending in the group until `score_batch` acknowledges them after
    writing their outcome. Pending entries idle longer than `reclaim_idle_s` (a lost task, a
    killed worker) are claimed again and resent, so no entry is lost.

    Within its time budget the drain waits on the stream (a blocking XREADGROUP) instead of
    returning at once, so an entry is sent out milliseconds after it arrives rather than at the
    next beat tick. A drain that dies is replaced by the next tick; two that overlap read disjoint
    entries.
    """
    global _group_ready
    settings = get_settings()
    client = data_client()
    keys = Keys.from_settings(settings)
    if not _group_ready:
        ensure_group(client, keys)
        _group_ready = True

    consumer = f"drain@{socket.gethostname()}"
    started = time.monotonic()
    deadline = started + settings.drain_budget_s
    read_size = settings.batch_size * 10

    # While scoring tasks wait in the broker, their entries look idle to XAUTOCLAIM although they
    # are on their way; reclaiming them then would resend the whole backlog at every tick.
    backlog = _score_backlog()
    if backlog:
        claimed, deleted = [], []
        log.debug("reclaim skipped: %d scoring tasks are queued", backlog)
    else:
        try:
            claimed, deleted = reclaim(client, keys, consumer, int(settings.reclaim_idle_s * 1000), read_size)
        except redis.ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
            # Deleting the stream deletes its group too, and without a new group every later drain fails.
            log.warning("consumer group %r of stream %r is missing (%s); creating it again", keys.consumer_group, keys.stream, error)
            ensure_group(client, keys)
            claimed, deleted = reclaim(client, keys, consumer, int(settings.reclaim_idle_s * 1000), read_size)
    record_lost(client, keys, deleted)
    if claimed:
        log.warning("reclaimed %d entries idle over %.0f s", len(claimed), settings.reclaim_idle_s)
    tasks_sent = _fan_out(claimed, settings.batch_size)

    read = 0
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        entries = read_new(client, keys, consumer, read_size, block_ms=remaining_ms)
        if entries and len(entries) < settings.batch_size:
            entries += _linger(client, keys, consumer, settings.batch_size - len(entries), settings.batch_linger_ms, deadline)
        read += len(entries)
        tasks_sent += _fan_out(entries, settings.batch_size)

    trimmed = trim_acknowledged(client, keys, settings.stream_retention_s)
    stats = {"read": read, "reclaimed": len(claimed), "lost": len(deleted), "tasks": tasks_sent, "trimmed": trimmed}
    client.hset(
        keys.drain_heartbeat,
        mapping={**stats, "at": utc_now_iso(), "elapsed_ms": int((time.monotonic() - started) * 1000)},
    )
    if read or claimed or deleted:
        log.info("drain read=%d reclaimed=%d lost=%d tasks=%d trimmed=%d", read, len(claimed), len(deleted), tasks_sent, trimmed)
    return stats
