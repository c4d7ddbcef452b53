"""Measurements of the IP lists and the history rebuild, for docs/blocklists.md.

    python -m bench.lists --data DIR                           # all measurements, about a minute
    python -m bench.lists --data DIR --users 10000 --rounds 1  # a quicker run

DIR holds the five public lists: firehol_level1.netset, spamhaus_drop.txt, spamhaus_dropv6.txt,
ipsum.txt and et_compromised-ips.txt.

Everything runs against a throwaway embedded server without persistence, started here. Results go
to standard output as Markdown tables and to bench/results/lists.json.

- Memory: the five public lists loaded together by one refresh; MEMORY USAGE (SAMPLES 0) of each
  key and the INFO used_memory delta. For comparison, the memory that the same single addresses
  would take as exact members of a sorted set instead of a Bloom filter.
- Lookups: batches of 100 addresses (the default RISK_BATCH_SIZE), half from the lists and half
  random. Each batch is read as the scoring read does (one read_lists.lua call), as the same call
  with and without MULTI/EXEC, as separate commands in MULTI/EXEC, and as BF.MEXISTS alone.
- A full ipsum refresh: from the file and from a local HTTP server on 127.0.0.1.
- History rebuild: users with a window of approved amounts each, rebuilt by one run.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from scoring.blocklists import refresh_lists
from scoring.embedded import EmbeddedServer
from scoring.histories import rebuild_histories
from scoring.keys import Keys
from scoring.lists import read_blocklist
from scoring.ranges import address_interval, lookup_bound
from scoring.settings import Settings, load_settings
from scoring.sources import ListSource
from scoring.store import _queue_batch_reads, connect, read_batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LISTS = [
    ("firehol_level1", "firehol_level1.netset", "netset"),
    ("spamhaus_drop", "spamhaus_drop.txt", "spamhaus"),
    ("spamhaus_dropv6", "spamhaus_dropv6.txt", "spamhaus"),
    ("ipsum", "ipsum.txt", "ipsum"),
    ("et_compromised", "et_compromised-ips.txt", "plain"),
]
BATCH = 100


def settle_memory(client: redis.Redis) -> tuple[int, int]:
    """Return (used_memory, used_memory_rss) once background frees (lazyfree) have finished."""
    for _ in range(50):
        if int(client.info("memory").get("lazyfree_pending_objects", 0)) == 0:
            break
        time.sleep(0.05)
    info = client.info("memory")
    return int(info["used_memory"]), int(info["used_memory_rss"])


def measure_memory(client: redis.Redis, keys: Keys, settings: Settings, data: Path) -> dict[str, Any]:
    sources = [ListSource(name=name, path=data / file, format=fmt) for name, file, fmt in LISTS]  # type: ignore[arg-type]
    before = settle_memory(client)
    started = time.perf_counter()
    report = refresh_lists(client, keys, settings, sources)
    elapsed = time.perf_counter() - started
    after = settle_memory(client)

    key_names = {
        "Bloom filter (single addresses)": keys.blocklist,
        "blocklisted ranges (sorted set)": keys.blocklist_ranges,
        "allowlisted ranges (sorted set)": keys.allowlist_ranges,
        "version and manifests": keys.list_versions,
    }
    for name, _file, _fmt in LISTS:
        key_names[f"stored entries of {name} (zlib)"] = keys.list_source_data(name)
    per_key = {label: client.memory_usage(key, samples=0) or 0 for label, key in key_names.items()}

    # The alternative design: every single address as an exact sorted-set member.
    singles = sorted({a for name, file, fmt in LISTS for a in read_blocklist(data / file, fmt).addresses})
    exact_key = f"{keys.prefix}:bench:exact_singles"
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(singles), 5000):
        pipe.zadd(exact_key, dict.fromkeys(singles[start : start + 5000], 0))
    pipe.execute()
    exact_bytes = client.memory_usage(exact_key, samples=0)
    client.delete(exact_key)

    return {
        "refresh_seconds": round(elapsed, 3),
        "counts": report.counts,
        "used_memory_delta_bytes": after[0] - before[0],
        "used_memory_rss_delta_bytes": after[1] - before[1],
        "memory_usage_bytes": per_key,
        "exact_singles_sorted_set_bytes": exact_bytes,
        "single_addresses": len(singles),
    }


def lookup_sample(data: Path, count: int) -> list[str]:
    generator = random.Random(20260822)
    listed = read_blocklist(data / "ipsum.txt", "ipsum").addresses
    sample = generator.sample(listed, count // 2)
    sample += [".".join(str(generator.randrange(256)) for _ in range(4)) for _ in range(count - len(sample))]
    generator.shuffle(sample)
    return sample


def time_batches(run: Callable[[list[str]], object], addresses: list[str], rounds: int) -> float:
    """Return the median over rounds of the time to run every batch, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for start in range(0, len(addresses), BATCH):
            run(addresses[start : start + BATCH])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_lookups(client: redis.Redis, keys: Keys, data: Path, count: int, rounds: int) -> dict[str, Any]:
    addresses = lookup_sample(data, count)

    def scoring_read(batch: list[str]) -> object:
        return read_batch(client, keys, batch, [], 0.8)

    def script_only(batch: list[str], transaction: bool = False) -> object:
        pipe = client.pipeline(transaction=transaction)
        _queue_batch_reads(pipe, keys, batch, [address_interval(address) for address in batch], [], 0.8)
        return pipe.execute()

    def script_in_multi(batch: list[str]) -> object:
        return script_only(batch, transaction=True)

    def commands_in_multi(batch: list[str]) -> object:
        pipe = client.pipeline(transaction=True)
        pipe.get(keys.list_version)
        pipe.execute_command("BF.MEXISTS", keys.blocklist, *batch)
        for address in batch:
            bound = lookup_bound(address)
            pipe.execute_command("ZRANGE", keys.blocklist_ranges, bound, "-", "BYLEX", "REV", "LIMIT", 0, 1)
            pipe.execute_command("ZRANGE", keys.allowlist_ranges, bound, "-", "BYLEX", "REV", "LIMIT", 0, 1)
        return pipe.execute()

    def bloom_only(batch: list[str]) -> object:
        return client.execute_command("BF.MEXISTS", keys.blocklist, *batch)

    scoring_read(addresses[:BATCH])  # warm-up: connection and code paths
    results = {}
    for label, run in (
        ("scoring read (read_batch): one read_lists.lua call, results checked in Python", scoring_read),
        ("the same script call, results not checked", script_only),
        ("the same script call wrapped in MULTI/EXEC, results not checked", script_in_multi),
        ("2 ZRANGE commands per address + BF.MEXISTS + GET, in MULTI/EXEC, no script", commands_in_multi),
        ("Bloom filter alone (BF.MEXISTS), as before ranges", bloom_only),
    ):
        seconds = time_batches(run, addresses, rounds)
        results[label] = {
            "addresses": len(addresses),
            "batches": len(addresses) // BATCH,
            "seconds": round(seconds, 4),
            "ms_per_batch": round(seconds * 1000 / (len(addresses) / BATCH), 3),
            "us_per_address": round(seconds * 1e6 / len(addresses), 2),
        }
    return results


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        return None


def serve_folder(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def measure_ipsum_refresh(client: redis.Redis, settings_for: Callable[[str], Settings], data: Path, rounds: int) -> dict[str, Any]:
    server, base = serve_folder(data)
    results: dict[str, Any] = {}
    try:
        for label, source in (
            ("from the file", ListSource(name="ipsum", path=data / "ipsum.txt", format="ipsum")),
            ("from a local HTTP server", ListSource(name="ipsum", url=f"{base}/ipsum.txt", format="ipsum")),
        ):
            times = []
            for round_number in range(rounds):
                settings = settings_for(f"bench-ipsum-{len(results)}-{round_number}")
                started = time.perf_counter()
                report = refresh_lists(client, Keys.from_settings(settings), settings, [source])
                times.append(time.perf_counter() - started)
                assert report.swapped, report.message
            results[label] = {"median_seconds": round(statistics.median(times), 3), "runs": [round(t, 3) for t in times]}
        parse_times = []
        for _ in range(rounds):
            started = time.perf_counter()
            read_blocklist(data / "ipsum.txt", "ipsum")
            parse_times.append(time.perf_counter() - started)
        results["of which parsing the file"] = {"median_seconds": round(statistics.median(parse_times), 3)}
    finally:
        server.shutdown()
        server.server_close()
    return results


def measure_rebuild(client: redis.Redis, settings: Settings, users: int, amounts_per_user: int) -> dict[str, Any]:
    keys = Keys.from_settings(settings)
    generator = random.Random(5)
    now_ms = time.time() * 1000
    before = settle_memory(client)
    pipe = client.pipeline(transaction=False)
    for number in range(users):
        members = {f"bench-{number}-{index}|{generator.uniform(1, 500):.2f}": now_ms + index for index in range(amounts_per_user)}
        pipe.zadd(keys.approved(f"user-{number}"), members)
        if number % 1000 == 999:
            pipe.execute()
    pipe.execute()
    with_windows = settle_memory(client)

    started = time.perf_counter()
    report = rebuild_histories(client, keys, settings)
    elapsed = time.perf_counter() - started
    with_digests = settle_memory(client)
    assert report.finished
    # RedisBloom 2.8.2 allocates digests outside used_memory, so RSS and MEMORY USAGE show their size.
    return {
        "users": report.users,
        "amounts_per_user": amounts_per_user,
        "seconds": round(elapsed, 2),
        "users_per_second": round(report.users / elapsed),
        "window MEMORY USAGE per user (bytes)": client.memory_usage(keys.approved("user-0"), samples=0),
        "digest MEMORY USAGE per user (bytes)": client.memory_usage(keys.history("user-0"), samples=0),
        "used_memory growth per user, windows (bytes)": round((with_windows[0] - before[0]) / users),
        "used_memory growth per user, digests (bytes)": round((with_digests[0] - with_windows[0]) / users),
        "RSS growth per user, digests (bytes)": round((with_digests[1] - with_windows[1]) / users),
    }


def machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis-py": redis.__version__,
    }


def markdown(results: dict[str, Any]) -> str:
    memory = results["memory"]
    lines = [
        "| key | MEMORY USAGE (bytes) |",
        "|---|---:|",
        *(f"| {label} | {size:,} |" for label, size in memory["memory_usage_bytes"].items()),
        f"| INFO used_memory delta of the refresh | {memory['used_memory_delta_bytes']:,} |",
        f"| INFO used_memory_rss delta of the refresh | {memory['used_memory_rss_delta_bytes']:,} |",
        f"| for comparison: the {memory['single_addresses']:,} single addresses as an exact sorted set | "
        f"{memory['exact_singles_sorted_set_bytes']:,} |",
        "",
        "| read of one batch | batches | ms per batch | µs per address |",
        "|---|---:|---:|---:|",
        *(
            f"| {label} | {row['batches']} | {row['ms_per_batch']} | {row['us_per_address']} |"
            for label, row in results["lookups"].items()
        ),
        "",
        "| ipsum refresh (120,430 addresses) | median seconds |",
        "|---|---:|",
        *(f"| {label} | {row['median_seconds']} |" for label, row in results["ipsum_refresh"].items()),
        "",
        "| history rebuild | value |",
        "|---|---:|",
        *(f"| {name} | {value:,} |" for name, value in results["rebuild"].items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="Folder of the five public lists.")
    parser.add_argument("--lookups", type=int, default=5000, help="Addresses looked up per round.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds of each timing; the median is reported.")
    parser.add_argument("--users", type=int, default=100_000, help="Users in the history rebuild.")
    parser.add_argument("--amounts", type=int, default=20, help="Approved amounts per user in the history rebuild.")
    parser.add_argument("--out", type=Path, default=RESULTS / "lists.json", help="JSON results file.")
    options = parser.parse_args()

    with EmbeddedServer(None, ephemeral=True) as info:
        client = connect(info.url(0))

        def settings_for(prefix: str) -> Settings:
            return load_settings(redis_url=info.url(0), broker_url=None, key_prefix=prefix, stream=f"{prefix}:transactions")

        settings = settings_for("bench-lists")
        keys = Keys.from_settings(settings)
        results: dict[str, Any] = {"machine": machine(), "server": client.info("server").get("valkey_version")}
        results["memory"] = measure_memory(client, keys, settings, options.data)
        results["lookups"] = measure_lookups(client, keys, options.data, options.lookups, options.rounds)
        results["ipsum_refresh"] = measure_ipsum_refresh(client, settings_for, options.data, options.rounds)
        client.flushall()
        results["rebuild"] = measure_rebuild(client, settings_for("bench-history"), options.users, options.amounts)
        client.close()

    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nmachine: {json.dumps(results['machine'])}, valkey {results['server']}")


if __name__ == "__main__":
    main()
