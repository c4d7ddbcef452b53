"""The `riskscore blocklist` and `riskscore history` command groups."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pydantic
import redis

from scoring.blocklists import RefreshReport, SourceResult, list_status, refresh_lists, report_as_dict
from scoring.capability import check_capabilities
from scoring.embedded import resolve_running_urls
from scoring.histories import history_status, rebuild_histories
from scoring.keys import Keys
from scoring.lists import ListFormat
from scoring.settings import get_settings
from scoring.sources import ListSource, SourceKind, check_unique_names
from scoring.store import connect

FORMAT_CHOICE = click.Choice([f.value for f in ListFormat])


@contextmanager
def _running_server() -> Iterator[redis.Redis]:
    """Yield a client of the configured or running embedded server, without starting one."""
    data_url, _broker_url = resolve_running_urls(get_settings())
    client = connect(data_url)
    try:
        check_capabilities(client)
        yield client
    finally:
        client.close()


@contextmanager
def _any_server() -> Iterator[redis.Redis]:
    """Yield a client of the configured or running embedded server, starting the embedded one if needed."""
    from scoring.cli import connected  # imported here because scoring.cli imports this module

    with connected(get_settings()) as (client, _data_url, _broker_url):
        yield client


# --- sources given on the command line ------------------------------------------------------------


def _name_for(location: str) -> str:
    if "://" in location:
        parts = urlsplit(location)
        base = Path(parts.path).name or parts.hostname or "source"
    else:
        base = Path(location).name
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("._-")[:64]
    return name or "source"


def parse_source_option(text: str, kind: SourceKind, fmt: str | None, min_count: int) -> ListSource:
    """Turn a --source or --allow value into a source: a path, an http(s) URL or a JSON object.

    A path or URL gets its file name as the source name, `fmt` (guessed when None), `min_count`
    and `kind`. A JSON object has the fields of an RISK_BLOCKLIST_SOURCES item; `kind` and the
    options fill in the fields it leaves out.
    """
    try:
        if text.lstrip().startswith("{"):
            fields = json.loads(text)
            if not isinstance(fields, dict):
                raise click.BadParameter(f"expected a JSON object, got {text!r}")
            fields.setdefault("kind", kind.value)
            fields.setdefault("min_count", min_count)
            if fmt is not None:
                fields.setdefault("format", fmt)
            return ListSource(**fields)
        location = {"url": text} if text.lower().startswith(("http://", "https://")) else {"path": text}
        return ListSource(name=_name_for(text), kind=kind, format=fmt, min_count=min_count, **location)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"invalid JSON in {text!r}: {error}") from None
    except pydantic.ValidationError as error:
        problems = "; ".join(item["msg"] for item in error.errors())
        raise click.BadParameter(f"invalid source {text!r}: {problems}") from None


def sources_from_options(
    blocklists: tuple[str, ...], allowlists: tuple[str, ...], fmt: str | None, min_count: int
) -> list[ListSource] | None:
    if not blocklists and not allowlists:
        return None
    sources = [parse_source_option(text, SourceKind.blocklist, fmt, min_count) for text in blocklists]
    sources += [parse_source_option(text, SourceKind.allowlist, None, 1) for text in allowlists]
    try:
        return check_unique_names(sources)
    except ValueError as error:
        raise click.BadParameter(f"{error}; give the sources different names with the JSON form") from None


# --- output ---------------------------------------------------------------------------------------


def print_refresh_report(report: RefreshReport) -> None:
    for outcome in report.outcomes:
        source = outcome.source
        click.echo(f"{source.name} ({source.kind.value}, {source.location}): {outcome.result.value}")
        if outcome.parsed is not None:
            click.echo("  " + outcome.parsed.summary().replace("\n", "\n  "))
        if outcome.error:
            click.echo(f"  error: {outcome.error}")
            fallback = "its last accepted entries stay in use" if outcome.data is not None else "it has no accepted entries"
            click.echo(f"  {fallback}")
    if report.swapped:
        counts = report.counts
        click.echo(
            f"Version {report.version} is live: {counts['bloom_addresses']:,} single addresses in the Bloom filter "
            f"({counts['addresses_in_ranges']:,} more inside blocklisted ranges), "
            f"{counts['blocklist_ranges']:,} blocklisted ranges, {counts['allowlist_ranges']:,} allowlisted ranges "
            f"({report.duration_s:.1f} s)."
        )
    else:
        click.echo(f"{report.message[:1].upper()}{report.message[1:]} (version {report.version or 'none'}).")


def _exit_code(report: RefreshReport) -> int:
    if report.skipped is not None:
        return 1
    return 1 if any(outcome.result is SourceResult.failed for outcome in report.outcomes) else 0


def _run_refresh(sources: list[ListSource] | None, force: bool, as_json: bool) -> None:
    settings = get_settings()
    keys = Keys.from_settings(settings)
    with _any_server() as client:
        report = refresh_lists(client, keys, settings, sources, force=force)
    if as_json:
        click.echo(json.dumps(report_as_dict(report), indent=2))
    elif report.skipped is not None:
        click.echo(f"Refresh skipped: {report.skipped}.", err=True)
    else:
        print_refresh_report(report)
    sys.exit(_exit_code(report))


# --- riskscore blocklist --------------------------------------------------------------------------


@click.group()
def blocklist() -> None:
    """Refresh the IP blocklist and allowlist from their sources, and show their status."""


@blocklist.command("refresh")
@click.option(
    "--source",
    "blocklists",
    multiple=True,
    metavar="PATH|URL|JSON",
    help="Blocklist source for this run instead of RISK_BLOCKLIST_SOURCES; repeatable.",
)
@click.option("--allow", "allowlists", multiple=True, metavar="PATH|URL|JSON", help="Allowlist source for this run; repeatable.")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default=None, help="Format of --source lists; guessed when omitted.")
@click.option("--min-count", default=1, show_default=True, help="ipsum lists given with --source: minimum blacklist count.")
@click.option("--force", is_flag=True, help="Download every list again and accept any drop in entries.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def blocklist_refresh(
    blocklists: tuple[str, ...], allowlists: tuple[str, ...], fmt: str | None, min_count: int, force: bool, as_json: bool
) -> None:
    """Refresh the lists now, from RISK_BLOCKLIST_SOURCES or the sources given here.

    The new version contains exactly these sources. A source that fails (missing file, HTTP error,
    timeout, body too large, no entries, too many invalid lines, too large a drop) keeps its last
    accepted entries. Exits with 1 when a source failed or another refresh was running.
    """
    sources = sources_from_options(blocklists, allowlists, fmt, min_count)
    if sources is None and not get_settings().blocklist_sources:
        raise click.UsageError("no list sources: set RISK_BLOCKLIST_SOURCES, or give --source or --allow")
    _run_refresh(sources, force, as_json)


def _print_list_status(status: dict[str, Any]) -> None:
    live = status["live"]
    if live is None:
        click.echo("live version      none (no list refresh has run)")
    else:
        click.echo(f"live version      {live['version']}, built {live.get('built_at', '?')}")
        if "bloom_addresses" in live:
            click.echo(
                f"  {live['bloom_addresses']:,} single addresses in the Bloom filter (error rate {live['bloom_error_rate']}), "
                f"{live['blocklist_ranges']:,} blocklisted ranges, {live['allowlist_ranges']:,} allowlisted ranges"
            )
    last_run = status["last_run"]
    if last_run:
        failed = f", failed: {last_run['failed']}" if last_run.get("failed") else ""
        click.echo(f"last refresh      {last_run['at']}: {last_run['message']}{failed}")
    running = status["running"]
    if running:
        click.echo(f"running now       {running['holder']}")
    for source in status["sources"]:
        configured = "" if source["configured"] else " (not in RISK_BLOCKLIST_SOURCES)"
        click.echo(f"\n{source['name']}{configured}: {source.get('kind', '?')}, {source.get('location', '?')}")
        if "last_attempt_at" not in source:
            click.echo("  never refreshed")
            continue
        click.echo(f"  last attempt    {source['last_attempt_at']}: {source.get('last_result')}")
        click.echo(f"  last success    {source.get('last_success_at', 'never')}")
        if "entries" in source:
            click.echo(
                f"  entries         {int(source['entries']):,} ({source.get('addresses', 0)} addresses, "
                f"{source.get('networks', 0)} networks), in version {source.get('version', 'none')}"
            )
        if source.get("last_error"):
            click.echo(f"  last error      {source.get('last_error_at')}: {source['last_error']}")
            click.echo(f"  failures in a row {source.get('consecutive_failures', 0)}")


@blocklist.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def blocklist_status(as_json: bool) -> None:
    """Show the live list version and, per source, the last success, entry counts, version and last error."""
    settings = get_settings()
    keys = Keys.from_settings(settings)
    with _running_server() as client:
        status = list_status(client, keys, settings)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print_list_status(status)


# --- riskscore history ----------------------------------------------------------------------------


@click.group()
def history() -> None:
    """Rebuild user histories from their windows of approved amounts, and show the rebuild's status."""


@history.command("refresh")
@click.option("--max-users", type=click.IntRange(min=1), default=None, help="Stop after about this many users; the next run resumes.")
@click.option("--restart", is_flag=True, help="Start a new run from the beginning instead of resuming an unfinished one.")
def history_refresh(max_users: int | None, restart: bool) -> None:
    """Rebuild every user's digest from the newest RISK_HISTORY_WINDOW_COUNT approved amounts
    of the last RISK_HISTORY_WINDOW_DAYS days (0: no age limit).

    An unfinished run (stopped by --max-users, a time budget or a killed process) is resumed
    where it stopped. Exits with 1 when another rebuild is running.
    """
    settings = get_settings()
    keys = Keys.from_settings(settings)
    rebuilt = {"users": 0, "printed_at": time.monotonic()}
    started = time.monotonic()

    def progress(users: int) -> None:
        rebuilt["users"] += users
        if time.monotonic() - rebuilt["printed_at"] >= 2:
            rebuilt["printed_at"] = time.monotonic()
            rate = rebuilt["users"] / max(rebuilt["printed_at"] - started, 1e-9)
            click.echo(f"  {rebuilt['users']:,} users rebuilt ({rate:,.0f} users/s)", err=True)

    with _any_server() as client:
        report = rebuild_histories(client, keys, settings, max_users=max_users, restart=restart, progress=progress)
    if report.skipped is not None:
        click.echo(f"Rebuild skipped: {report.skipped}.", err=True)
        sys.exit(1)
    verb = "Resumed and rebuilt" if report.resumed else "Rebuilt"
    click.echo(
        f"{verb} {report.users:,} users ({report.emptied:,} with an empty window, their digests deleted) "
        f"from {report.amounts:,} amounts in {report.duration_s:.1f} s ({report.users_per_s:,.0f} users/s)."
    )
    if report.finished:
        click.echo(f"The run is finished: {report.run_users:,} users in all.")
    else:
        click.echo(f"The run is unfinished after {report.run_users:,} users; the next `riskscore history refresh` resumes it.")


@history.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def history_status_command(as_json: bool) -> None:
    """Show the rebuild's progress, its last finished run and the window settings."""
    settings = get_settings()
    keys = Keys.from_settings(settings)
    with _running_server() as client:
        status = history_status(client, keys, settings)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    days = status["window_days"]
    click.echo(f"window            newest {status['window_count']:,} approved amounts" + (f" of the last {days:g} days" if days else ""))
    state = status["state"]
    if not state:
        click.echo("rebuild           never run")
        return
    if status["running"]:
        click.echo(f"running now       {status['running']['holder']}")
    if state.get("status") == "running":
        click.echo(
            f"current run       started {state.get('run_started_at')}, {int(state.get('run_users', 0)):,} users so far, "
            f"cursor {state.get('cursor')}" + ("" if status["running"] else " (unfinished: the next rebuild resumes it)")
        )
    if state.get("last_finished_at"):
        click.echo(
            f"last finished run {state['last_finished_at']}: {int(state['last_run_users']):,} users "
            f"({int(state['last_run_emptied']):,} emptied), {int(state['last_run_amounts']):,} amounts, "
            f"{float(state['last_run_seconds']):.1f} s, {float(state['last_run_users_per_s']):,.0f} users/s"
        )
