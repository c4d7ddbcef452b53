"""Benchmark harness: the prototype's loop, a pipelined loop and the full Celery pipeline.

    python -m bench.run                  # full run, writes bench/results/ and docs/benchmark.md
    python -m bench.run --smoke          # a few seconds, for CI

All three measurements run in one process tree against one embedded server and one generated data
set: users with histories and a blocklist. The full pipeline is XADD by a load generator process,
the beat-scheduled drain, Celery workers, and the hash written; decision latency is the time from
the entry's XADD (the millisecond time in its stream id) to `scored_at` in its hash.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import redis

from scoring.cli import stack_env
from scoring.embedded import EmbeddedServer
from scoring.engine import BatchScorer
from scoring.keys import Keys
from scoring.loads import load_blocklist, load_history
from scoring.settings import Settings, load_settings
from scoring.stack import Stack, wait_until
from scoring.store import connect, ensure_group, read_new

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class DataSet:
    """Generated users, histories, blocklist and transactions."""

    histories: dict[str, list[float]]
    bad_ips: list[str]
    good_ips: list[str]


def _ip(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def generate(users: int, history_length: int, bad_ips: int, seed: int = 7) -> DataSet:
    """Return users with log-normal amount histories, and disjoint bad and good IP pools."""
    rng = random.Random(seed)
    histories = {}
    for number in range(users):
        typical = rng.lognormvariate(4.0, 1.0)
        histories[f"user_{number}"] = [round(rng.lognormvariate(0, 0.4) * typical, 2) for _ in range(history_length)]
    bad = sorted({_ip(rng) for _ in range(bad_ips)})
    bad_set = set(bad)
    good = [ip for ip in (_ip(rng) for _ in range(20_000)) if ip not in bad_set]
    return DataSet(histories, bad, good)


def transactions(data: DataSet, count: int, prefix: str, seed: int) -> list[dict[str, str]]:
    """Return `count` transactions: about 5 % from a listed IP and 5 % with an outlying amount."""
    rng = random.Random(seed)
    users = list(data.histories)
    result = []
    for number in range(count):
        user = rng.choice(users)
        history = data.histories[user]
        amount = rng.choice(history) * (10 if rng.random() < 0.05 else 1)
        ip = rng.choice(data.bad_ips) if rng.random() < 0.05 else rng.choice(data.good_ips)
        result.append({"tx_id": f"{prefix}-{number}", "user_id": user, "amount": f"{amount:.2f}", "ip": ip})
    return result


def seed_server(client: redis.Redis, keys: Keys, settings: Settings, data: DataSet) -> None:
    load_history(client, keys, data.histories, compression=settings.tdigest_compression)
    load_blocklist(client, keys, data.bad_ips, error_rate=settings.bloom_error_rate, capacity=len(data.bad_ips))


# --- the two loops without Celery ----------------------------------------------------------------


def bench_prototype(client: redis.Redis, keys: Keys, txs: Sequence[dict[str, str]], settings: Settings) -> dict[str, float]:
    """Run the notebook's loop: per transaction BF.EXISTS, TDIGEST.QUANTILE and HSET, one after another."""
    started = time.perf_counter()
    for tx in txs:
        listed = client.execute_command("BF.EXISTS", keys.blocklist, tx["ip"])
        quantile = float(client.execute_command("TDIGEST.QUANTILE", keys.history(tx["user_id"]), settings.quantile)[0])
        total = int(listed) + int(float(tx["amount"]) >= settings.multiplier * quantile)
        mapping = {"risk_score": total} if total else {"status": "Approved"}
        client.hset(keys.transaction(tx["tx_id"]), mapping=mapping)
    elapsed = time.perf_counter() - started
    return {"transactions": len(txs), "seconds": elapsed, "tx_per_s": len(txs) / elapsed}


def bench_pipelined(client: redis.Redis, txs: Sequence[dict[str, str]], settings: Settings, batch: int) -> dict[str, float]:
    """Run a worker's work in one process with no Celery: read a batch from the consumer group,
    score it (one read pipeline, one write script), and repeat."""
    keys = Keys.from_settings(settings)
    _add_all(client, keys, txs)
    ensure_group(client, keys)
    scorer = BatchScorer(client, settings)
    started = time.perf_counter()
    done = 0
    while done < len(txs):
        entries = read_new(client, keys, "bench", batch)
        if not entries:
            break
        scorer.score(entries)
        done += len(entries)
    elapsed = time.perf_counter() - started
    return {"transactions": done, "seconds": elapsed, "tx_per_s": done / elapsed, "batch": batch}


def _add_all(client: redis.Redis, keys: Keys, txs: Sequence[dict[str, str]]) -> None:
    for start in range(0, len(txs), 1000):
        pipe = client.pipeline(transaction=False)
        for tx in txs[start : start + 1000]:
            pipe.xadd(keys.stream, tx)
        pipe.execute()


# --- the full pipeline ---------------------------------------------------------------------------


def _generator(url: str, stream: str, txs: list[dict[str, str]], rate: float | None, ready: Any) -> None:
    """Load generator process: XADD `txs` at `rate` per second (as fast as possible when None)."""
    client = connect(url)
    ready.wait()
    started = time.perf_counter()
    tick_s = 0.002
    sent = 0
    while sent < len(txs):
        if rate is None:
            due = len(txs)
        else:
            due = min(len(txs), int((time.perf_counter() - started) * rate) + 1)
        if due > sent:
            pipe = client.pipeline(transaction=False)
            for tx in txs[sent:due]:
                pipe.xadd(stream, tx)
            pipe.execute()
            sent = due
        elif rate is not None:
            time.sleep(tick_s)


def _acknowledged(client: redis.Redis, keys: Keys) -> int:
    for group in client.xinfo_groups(keys.stream):
        if group["name"] in (keys.consumer_group, keys.consumer_group.encode()):
            return int(group.get("entries-read") or 0) - int(group["pending"])
    return 0


def _cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for member in [process, *process.children(recursive=True)]:
                times = member.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _latencies_ms(client: redis.Redis, keys: Keys, txs: Sequence[dict[str, str]]) -> list[float]:
    latencies = []
    for start in range(0, len(txs), 2000):
        pipe = client.pipeline(transaction=False)
        for tx in txs[start : start + 2000]:
            pipe.hmget(keys.transaction(tx["tx_id"]), "stream_id", "scored_at")
        for stream_id, scored_at in pipe.execute():
            if stream_id is None or scored_at is None:
                continue
            added_ms = int(stream_id.split(b"-")[0])
            scored_ms = datetime.fromisoformat(scored_at.decode()).timestamp() * 1000
            latencies.append(scored_ms - added_ms)
    return latencies


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_load(
    client: redis.Redis, url: str, keys: Keys, txs: list[dict[str, str]], rate: float | None, pids: Sequence[int], timeout_s: float
) -> dict[str, Any]:
    """Offer `txs` at `rate` tx/s and measure throughput, latency percentiles and CPU."""
    base = _acknowledged(client, keys)
    ready = multiprocessing.Event()
    generator = multiprocessing.Process(target=_generator, args=(url, keys.stream, txs, rate, ready))
    generator.start()
    cpu_before = _cpu_seconds(pids)
    started = time.perf_counter()
    ready.set()
    finished = wait_until(lambda: _acknowledged(client, keys) - base >= len(txs), timeout_s, interval_s=0.02)
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(pids) - cpu_before
    generator.join()
    latencies = _latencies_ms(client, keys, txs)
    result: dict[str, Any] = {
        "offered_tx_per_s": rate,
        "transactions": len(txs),
        "completed": finished,
        "seconds": elapsed,
        "tx_per_s": len(txs) / elapsed,
        "cpu_s_per_1000_tx": 1000 * cpu / len(txs),
    }
    if latencies:
        result.update(
            {
                "latency_ms_p50": percentile(latencies, 0.50),
                "latency_ms_p95": percentile(latencies, 0.95),
                "latency_ms_p99": percentile(latencies, 0.99),
                "latency_ms_max": max(latencies),
            }
        )
    return result


def memory_per_item(client: redis.Redis, keys: Keys, data: DataSet) -> dict[str, float]:
    users = list(data.histories)[:200]
    digest_bytes = statistics.mean(client.memory_usage(keys.history(user), samples=0) or 0 for user in users)
    bloom_bytes = client.memory_usage(keys.blocklist, samples=0) or 0
    return {
        "bytes_per_user_digest": digest_bytes,
        "bytes_per_blocklist_entry": bloom_bytes / max(1, len(data.bad_ips)),
    }


# --- orchestration -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="A few seconds on small data, for CI.")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--bad-ips", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=None, help="RISK_BATCH_SIZE for the pipeline.")
    parser.add_argument("--concurrency", type=int, default=None, help="Worker processes (default: cores + 1).")
    parser.add_argument("--prefetch", type=int, default=None, help="Worker prefetch multiplier (default: the app's 4).")
    parser.add_argument("--rates", default="1000,3000,10000", help="Offered loads in tx/s, comma-separated.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each fixed-rate run.")
    parser.add_argument("--max-transactions", type=int, default=100_000, help="Transactions in the maximum-throughput run.")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (default: bench/results/pipeline.json).")
    parser.add_argument("--report", action="store_true", help="Also write the PNG plot and docs/benchmark.md tables.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.users, args.bad_ips, args.rates, args.seconds, args.max_transactions = 200, 500, "500", 1.0, 2_000

    data = generate(args.users, 20, args.bad_ips)
    rates = [float(r) for r in args.rates.split(",") if r]
    concurrency = args.concurrency or (os.cpu_count() or 2) + 1
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": "python -m bench.run " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "users": args.users,
        "bad_ips": args.bad_ips,
        "concurrency": concurrency,
        "prefetch_multiplier": args.prefetch or 4,
    }

    with tempfile.TemporaryDirectory(prefix="riskscore-bench-") as workdir, EmbeddedServer(None, ephemeral=True) as server:
        url = server.url(0)
        client = connect(url)
        overrides: dict[str, Any] = {"redis_url": url, "data_dir": Path(workdir)}
        if args.batch_size:
            overrides["batch_size"] = args.batch_size
        settings = load_settings(**overrides, key_prefix="bench", stream="bench:transactions")
        keys = Keys.from_settings(settings)
        seed_server(client, keys, settings, data)
        results["batch_size"] = settings.batch_size
        results["memory"] = memory_per_item(client, keys, data)

        loop_count = 2_000 if args.smoke else 20_000
        results["prototype_loop"] = bench_prototype(client, keys, transactions(data, loop_count, "proto", 1), settings)
        pipelined_settings = settings.model_copy(update={"stream": "bench:pipelined"})
        results["pipelined_loop"] = bench_pipelined(
            client, transactions(data, loop_count * 5, "piped", 2), pipelined_settings, batch=500
        )

        ensure_group(client, keys)
        stack = Stack(env={**stack_env(settings, url, server.url(1)), "RISK_BATCH_SIZE": str(settings.batch_size)}, workdir=Path(workdir), log_dir=Path(workdir))
        with stack:
            extra = ("--prefetch-multiplier", str(args.prefetch)) if args.prefetch else ()
            stack.start_worker(concurrency=concurrency, loglevel="WARNING", extra=extra)
            stack.start_beat(loglevel="WARNING")
            pids = [child.process.pid for child in stack.children] + [server.pid]
            warmup = transactions(data, 500, "warmup", 3)
            run_load(client, url, keys, warmup, None, pids, 60)

            results["fixed_rate"] = []
            for number, rate in enumerate(rates):
                txs = transactions(data, int(rate * args.seconds), f"rate{number}", 10 + number)
                results["fixed_rate"].append(run_load(client, url, keys, txs, rate, pids, 120))
            txs = transactions(data, args.max_transactions, "max", 99)
            results["maximum"] = run_load(client, url, keys, txs, None, pids, 600)

        results["ratios"] = {
            "pipeline_over_prototype": results["maximum"]["tx_per_s"] / results["prototype_loop"]["tx_per_s"],
            "pipeline_over_pipelined_limit": results["maximum"]["tx_per_s"] / results["pipelined_loop"]["tx_per_s"],
        }

    out = args.out or RESULTS / ("smoke.json" if args.smoke else "pipeline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.report:
        from bench.report import write_report

        write_report(results, out.with_suffix(".png"))
    print(json.dumps({k: results[k] for k in ("prototype_loop", "pipelined_loop", "maximum", "ratios")}, indent=2))
    return results


if __name__ == "__main__":
    main()
