"""Tests of the single-flight lock against the real session server."""

from __future__ import annotations

import time

import redis

from scoring.locks import SingleFlightLock, lock_holder


def test_second_holder_refused(redis_client: redis.Redis):
    first = SingleFlightLock(redis_client, "lock:a")
    second = SingleFlightLock(redis_client, "lock:a")

    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
    assert not redis_client.exists("lock:a")


def test_release_keeps_lock_of_another_holder(redis_client: redis.Redis):
    expired = SingleFlightLock(redis_client, "lock:b", ttl_s=1.0)
    assert expired.acquire()
    # Another process takes the lock after it expired; the first holder's release must not delete it.
    redis_client.set("lock:b", "someone else")

    expired.release()

    assert redis_client.get("lock:b") == b"someone else"


def test_renewal_keeps_lock_past_ttl(redis_client: redis.Redis):
    with_renewal = SingleFlightLock(redis_client, "lock:c", ttl_s=1.0)
    assert with_renewal.acquire()
    time.sleep(2.0)

    assert redis_client.get("lock:c") == with_renewal.token.encode()
    assert not with_renewal.lost
    with_renewal.release()


def test_lost_lock_detected(redis_client: redis.Redis):
    holder = SingleFlightLock(redis_client, "lock:d", ttl_s=1.0)
    assert holder.acquire()
    redis_client.set("lock:d", "someone else")
    deadline = time.monotonic() + 3
    while not holder.lost and time.monotonic() < deadline:
        time.sleep(0.05)

    assert holder.lost
    holder.release()


def test_killed_holder_lock_expires(redis_client: redis.Redis):
    # A holder that died never renews: its lock ends after one ttl.
    redis_client.set("lock:e", "dead holder", px=300)
    waiting = SingleFlightLock(redis_client, "lock:e")
    assert not waiting.acquire()
    time.sleep(0.4)
    assert waiting.acquire()
    waiting.release()


def test_lock_holder_reports_token(redis_client: redis.Redis):
    assert lock_holder(redis_client, "lock:f") is None
    holder = SingleFlightLock(redis_client, "lock:f", ttl_s=30)
    holder.acquire()
    try:
        token, expires_in_s = lock_holder(redis_client, "lock:f")  # type: ignore[misc]
    finally:
        holder.release()
    assert token == holder.token
    assert " pid " in token
    assert 0 < expires_in_s <= 30
