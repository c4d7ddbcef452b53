"""Tuning runs: maximum full-pipeline throughput for each batch size and worker concurrency.

    python -m bench.tune                      # writes bench/results/tune.json and prints a table

Each combination is a separate `python -m bench.run` burst of 60,000 transactions with no
fixed-rate runs, so every row has its own server, workers and data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.run import RESULTS
from bench.run import main as run_benchmark


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="50,100,500,1000")
    parser.add_argument("--concurrency", default="2,3,4")
    parser.add_argument("--prefetch", default="4", help="Worker prefetch multipliers, comma-separated.")
    parser.add_argument("--transactions", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "tune.json")
    args = parser.parse_args(argv)

    rows = []
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        prefetches = [int(value) for value in args.prefetch.split(",")]
        for batch_size, concurrency, prefetch in itertools.product(batch_sizes, concurrencies, prefetches):
            out = Path(folder) / f"{batch_size}-{concurrency}-{prefetch}.json"
            result = run_benchmark(
                [
                    "--rates", "", "--max-transactions", str(args.transactions),
                    "--batch-size", str(batch_size), "--concurrency", str(concurrency), "--prefetch", str(prefetch),
                    "--out", str(out),
                ]
            )  # fmt: skip
            maximum = result["maximum"]
            rows.append(
                {
                    "batch_size": batch_size,
                    "concurrency": concurrency,
                    "prefetch_multiplier": prefetch,
                    "tx_per_s": round(maximum["tx_per_s"]),
                    "cpu_s_per_1000_tx": round(maximum["cpu_s_per_1000_tx"], 3),
                    "pipelined_loop_tx_per_s": round(result["pipelined_loop"]["tx_per_s"]),
                }
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| batch size | concurrency | prefetch | full pipeline tx/s | CPU s per 1,000 tx | pipelined loop tx/s (same run) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['batch_size']} | {row['concurrency']} | {row['prefetch_multiplier']} | {row['tx_per_s']:,} | {row['cpu_s_per_1000_tx']} | "
            f"{row['pipelined_loop_tx_per_s']:,} |"
        )
    return rows


if __name__ == "__main__":
    main()
