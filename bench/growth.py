"""Growth benchmark: memory and scoring throughput as users grow, and the T-Digest compression's
effect on memory and on the quantile's accuracy.

    python -m bench.growth                       # 1 thousand, 100 thousand and 1 million users
    python -m bench.growth --users 1000,100000   # fewer sizes

Throughput is the pipelined loop (one process, no Celery, batches of 500), the part that depends
on the number of users; the Celery pipeline adds a constant per batch on top.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.run import RESULTS, DataSet, bench_pipelined, transactions
from scoring.embedded import EmbeddedServer
from scoring.keys import Keys
from scoring.loads import load_history
from scoring.settings import load_settings
from scoring.store import connect


def exact_quantile(values: Sequence[float], q: float) -> float:
    """Return the q quantile by linear interpolation between closest ranks."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def compression_accuracy(url: str, compressions: Sequence[int], users: int, observations: int, q: float) -> list[dict[str, Any]]:
    """For each compression: bytes per digest and the quantile's relative error against exact."""
    client = connect(url)
    rng = random.Random(11)
    histories = {}
    for number in range(users):
        typical = rng.lognormvariate(4.0, 1.0)
        histories[f"u{number}"] = [rng.lognormvariate(0, 0.6) * typical for _ in range(observations)]
    rows = []
    for compression in compressions:
        keys = Keys(prefix=f"acc{compression}", stream="unused", consumer_group="unused")
        load_history(client, keys, histories, compression=compression)
        errors = []
        pipe = client.pipeline(transaction=False)
        for user in histories:
            pipe.execute_command("TDIGEST.QUANTILE", keys.history(user), q)
        for user, reply in zip(histories, pipe.execute()):
            estimate = float(reply[0])
            exact = exact_quantile(histories[user], q)
            errors.append(abs(estimate - exact) / exact)
        memory = statistics.mean(client.memory_usage(keys.history(user), samples=0) for user in list(histories)[:200])
        errors.sort()
        rows.append(
            {
                "compression": compression,
                "observations_per_user": observations,
                "bytes_per_digest": memory,
                "relative_error_median": errors[len(errors) // 2],
                "relative_error_p99": errors[int(0.99 * (len(errors) - 1))],
                "relative_error_max": errors[-1],
            }
        )
        client.flushdb()
    return rows


def growth(url: str, server_pid: int, sizes: Sequence[int], compression: int, history_length: int) -> list[dict[str, Any]]:
    """For each user count: memory per user and the pipelined loop's throughput.

    Memory is the server's resident set growth: valkey's `used_memory` does not count RedisBloom's
    allocations (about 76 bytes per digest reported against 9.8 KB resident, checked with
    valkey 9.1.2 and RedisBloom 2.8.2), while MEMORY USAGE on a digest key matches the RSS growth.
    """
    client = connect(url)
    server = psutil.Process(server_pid)
    rows = []
    for users in sizes:
        needed = users * (compression * 100 + 2_000)
        if psutil.virtual_memory().available < 1.3 * needed:
            print(f"skipping {users:,} users: about {needed / 2**30:.1f} GiB needed, too close to the free memory")
            continue
        client.flushall()
        rng = random.Random(5)
        histories: dict[str, list[float]] = {}
        before = server.memory_info().rss
        loaded = 0
        started = time.perf_counter()
        # Load in slices so the generated histories never all sit in Python memory at once.
        for start in range(0, users, 50_000):
            histories = {
                f"user_{n}": [round(rng.lognormvariate(4, 1), 2) for _ in range(history_length)]
                for n in range(start, min(users, start + 50_000))
            }
            settings_keys = Keys(prefix="grow", stream="grow:transactions", consumer_group="grow")
            load_history(client, settings_keys, histories, compression=compression)
            loaded += len(histories)
        load_s = time.perf_counter() - started
        used = server.memory_info().rss - before
        data = DataSet(
            histories={f"user_{n}": [100.0] * history_length for n in rng.sample(range(users), min(users, 20_000))},
            bad_ips=["203.0.113.7"],
            good_ips=[f"198.51.100.{n}" for n in range(1, 255)],
        )
        settings = load_settings(redis_url=url, data_dir=Path(tempfile.gettempdir()), key_prefix="grow", stream="grow:transactions", consumer_group="grow", tdigest_compression=compression)
        keys = Keys.from_settings(settings)
        client.execute_command("BF.RESERVE", keys.blocklist, 0.01, 1000)
        loop = bench_pipelined(client, transactions(data, 50_000, f"g{users}", 3), settings, batch=500)
        rows.append(
            {
                "users": users,
                "compression": compression,
                "rss_growth_bytes": used,
                "bytes_per_user": used / users,
                # RSS does not grow while the server reuses memory freed by an earlier run, so the
                # digests' own size is reported too.
                "memory_usage_per_digest": statistics.mean(
                    client.memory_usage(settings_keys.history(f"user_{n}"), samples=0) or 0 for n in range(0, users, max(1, users // 200))
                ),
                "history_load_users_per_s": loaded / load_s,
                "pipelined_tx_per_s": loop["tx_per_s"],
            }
        )
        print(json.dumps(rows[-1]))
    client.flushall()
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,100000,1000000", help="User counts, comma-separated.")
    parser.add_argument("--compression", type=int, default=100, help="Compression of the growth runs' digests.")
    parser.add_argument("--compressions", default="25,50,100,200,500", help="Compressions compared for accuracy.")
    parser.add_argument("--out", type=Path, default=RESULTS / "growth.json")
    args = parser.parse_args(argv)
    with EmbeddedServer(None, ephemeral=True) as server:
        url = server.url(0)
        results = {
            "accuracy": compression_accuracy(url, [int(c) for c in args.compressions.split(",")], 2_000, 200, 0.8),
            "growth": growth(url, server.pid, [int(n) for n in args.users.split(",")], args.compression, 20),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["accuracy"], indent=2))
    return results


if __name__ == "__main__":
    main()
