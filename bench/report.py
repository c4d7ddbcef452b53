"""Turn benchmark results into a PNG plot and the tables of docs/benchmark.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmark.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def plot_latency(results: dict[str, Any], png: Path) -> None:
    """Plot p50, p95 and p99 decision latency against offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["fixed_rate"]
    loads = [run["offered_tx_per_s"] for run in runs]
    burst = results["maximum"]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label in (("latency_ms_p50", "p50"), ("latency_ms_p95", "p95"), ("latency_ms_p99", "p99")):
        line = axes.plot(loads, [run[key] for run in runs], marker="o", label=label)[0]
        # The burst is not an offered load: it is drawn at its achieved rate, unconnected.
        axes.plot([burst["tx_per_s"]], [burst[key]], marker="x", markersize=9, color=line.get_color())
    axes.axhline(35, color="grey", linestyle=":", linewidth=1)
    axes.axhline(100, color="grey", linestyle="--", linewidth=1)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered load, transactions/s (x: burst, at its achieved maximum)")
    axes.set_ylabel("decision latency, ms (XADD to hash written)")
    axes.set_title(f"riskscore full pipeline, {results['machine']['cores']} cores, {results['date'][:10]}")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(png)
    plt.close(figure)


def tables(results: dict[str, Any], png: Path) -> str:
    """Return the Markdown tables for one run."""
    machine = results["machine"]
    prototype = results["prototype_loop"]["tx_per_s"]
    pipelined = results["pipelined_loop"]["tx_per_s"]
    maximum = results["maximum"]
    lines = [
        f"Run {results['date']} on {machine['cores']} cores, {machine['memory_gib']} GiB, Python {machine['python']}, "
        f"{machine['platform']}; `{results['command']}`; {results['users']:,} users with 20 amounts each, "
        f"{results['bad_ips']:,} listed IPs, batch size {results['batch_size']}, worker concurrency {results['concurrency']}.",
        "",
        "| measurement | transactions/s | ratio |",
        "|---|---:|---:|",
        f"| prototype loop (BF.EXISTS, TDIGEST.QUANTILE, HSET per transaction) | {prototype:,.0f} | 1.0 |",
        f"| pipelined loop, one process, no Celery | {pipelined:,.0f} | {pipelined / prototype:.1f} |",
        f"| full pipeline, maximum sustained | {maximum['tx_per_s']:,.0f} | {maximum['tx_per_s'] / prototype:.1f} |",
        "",
        f"Full pipeline / pipelined loop: {maximum['tx_per_s'] / pipelined:.0%}.",
        "",
        "| offered load (tx/s) | achieved (tx/s) | p50 ms | p95 ms | p99 ms | max ms | CPU s per 1,000 tx |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in [*results["fixed_rate"], maximum]:
        offered = "burst" if run["offered_tx_per_s"] is None else f"{run['offered_tx_per_s']:,.0f}"
        lines.append(
            f"| {offered} | {run['tx_per_s']:,.0f} | {run['latency_ms_p50']:.0f} | {run['latency_ms_p95']:.0f} | "
            f"{run['latency_ms_p99']:.0f} | {run['latency_ms_max']:.0f} | {run['cpu_s_per_1000_tx']:.3f} |"
        )
    memory = results["memory"]
    lines += [
        "",
        f"Redis memory: {memory['bytes_per_user_digest']:,.0f} bytes per user digest (compression "
        f"{results.get('compression', 100)}), {memory['bytes_per_blocklist_entry']:.1f} bytes per blocklist entry.",
        "",
        f"![latency against offered load]({png.relative_to(ROOT / 'docs') if png.is_relative_to(ROOT / 'docs') else '../' + str(png.relative_to(ROOT))})",
    ]
    return "\n".join(lines)


def write_report(results: dict[str, Any], png: Path) -> None:
    """Write the plot and replace the results section of docs/benchmark.md."""
    png = png.resolve()
    plot_latency(results, png)
    section = f"{BEGIN}\n{tables(results, png)}\n{END}"
    text = PAGE.read_text() if PAGE.exists() else f"# Benchmark\n\n{BEGIN}\n{END}\n"
    start, end = text.index(BEGIN), text.index(END) + len(END)
    PAGE.write_text(text[:start] + section + text[end:])
