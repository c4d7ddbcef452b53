"""Single-flight locks in Redis: at most one holder at a time, across processes and machines.

The lock is a string key set with SET NX PX to a random token. Only the holder of the token can
extend or release it (compare-and-set scripts), so a holder whose lock expired cannot delete the
lock that another process has taken since. While held, a thread extends the expiry every third
of it, so a long job keeps its lock and a killed one releases it after at most one expiry.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import datetime, timezone
from types import TracebackType

import redis

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def new_token() -> str:
    """Return a unique lock token that also names the holder (host and pid) and its start time."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{socket.gethostname()} pid {os.getpid()} since {started} ({secrets.token_hex(8)})"


class SingleFlightLock:
    """A Redis lock on `key` that expires after `ttl_s` unless its holder extends it.

    Use it as a context manager after acquire() returned True, or call release() yourself.
    """

    def __init__(self, client: redis.Redis, key: str, *, ttl_s: float = 60.0) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(int(ttl_s * 1000), 1000)
        self.token = new_token()
        self._acquired = False
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._release_script = client.register_script(_RELEASE)
        self._extend_script = client.register_script(_EXTEND)

    @property
    def lost(self) -> bool:
        """True when a renewal found the lock expired or taken by another holder."""
        return self._lost.is_set()

    def acquire(self) -> bool:
        """Take the lock unless another holder has it; return whether it was taken. Starts the renewal thread."""
        if self._acquired:
            raise RuntimeError(f"lock {self.key!r} is already held by this object")
        if not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._acquired = True
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_until_stopped, name=f"renew {self.key}", daemon=True)
        self._renewer.start()
        return True

    def extend(self) -> bool:
        """Reset the expiry to the full ttl; return False when the lock is no longer ours."""
        return bool(self._extend_script(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours."""
        if not self._acquired:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        self._acquired = False
        try:
            if not self._release_script(keys=[self.key], args=[self.token]):
                log.warning("lock %s had expired or been taken by another holder before release", self.key)
        except redis.RedisError as error:
            # The lock expires by itself after ttl, so a failed release delays the next run only.
            log.error("releasing lock %s failed: %s; it expires within %d ms", self.key, error, self.ttl_ms)

    def _renew_until_stopped(self) -> None:
        interval_s = self.ttl_ms / 3000
        while not self._stop.wait(interval_s):
            try:
                if not self.extend():
                    log.error("lock %s expired or was taken by another holder; the job must stop", self.key)
                    self._lost.set()
                    return
            except redis.RedisError as error:
                log.warning("extending lock %s failed: %s; retrying in %.0f s", self.key, error, interval_s)

    def __enter__(self) -> SingleFlightLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def lock_holder(client: redis.Redis, key: str) -> tuple[str, float] | None:
    """Return (token, seconds until expiry) of the lock on `key`, or None when it is free."""
    pipe = client.pipeline(transaction=True)
    pipe.get(key)
    pipe.pttl(key)
    token, ttl_ms = pipe.execute()
    if token is None:
        return None
    text = token.decode("utf-8", "replace") if isinstance(token, bytes) else str(token)
    return text, max(int(ttl_ms), 0) / 1000
