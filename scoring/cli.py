"""The `riskscore` command line."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import redis

from scoring import demo as demo_scenario
from scoring.capability import check_capabilities
from scoring.blocklists import refresh_lists
from scoring.cli_lists import print_refresh_report, sources_from_options, blocklist, history
from scoring import replay as replay_mod
from scoring.embedded import find_running, redis_urls, resolve_running_urls
from scoring.errors import RiskscoreError
from scoring.keys import Keys
from scoring.lists import ListFormat, count, guess_format, read_blocklist, read_history
from scoring.loads import load_blocklist, load_history
from scoring.settings import Settings, get_settings, load_settings
from scoring.stack import Stack, wait_until
from scoring.status import collect_status
from scoring.store import connect, ensure_group

log = logging.getLogger("scoring.cli")


def configure_logging(level: str) -> None:
    """Send log records of `level` and above to standard error, one line each."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def default_concurrency() -> int:
    """Return worker processes for local runs: one per core, plus one for the drain, which spends
    most of its time waiting on the stream."""
    return (os.cpu_count() or 1) + 1


def isolated_env(settings: Settings, data_url: str, broker_url: str) -> dict[str, str]:
    """Return the environment of a demo's or replay's own worker and beat: the same server and
    keys as `stack_env`, with the scheduled list refresh and history rebuild off, so that they
    score only what the command loaded."""
    return {
        **stack_env(settings, data_url, broker_url),
        "RISK_BLOCKLIST_REFRESH_SCHEDULE": "off",
        "RISK_HISTORY_REFRESH_SCHEDULE": "off",
    }


def stack_env(settings: Settings, data_url: str, broker_url: str) -> dict[str, str]:
    """Return the environment that points child processes at the same server and keys."""
    return {
        "RISK_REDIS_URL": data_url,
        "RISK_BROKER_URL": broker_url,
        "RISK_KEY_PREFIX": settings.key_prefix,
        "RISK_STREAM": settings.stream,
        "RISK_CONSUMER_GROUP": settings.consumer_group,
        "RISK_ALLOWLIST_RESERVED": "true" if settings.allowlist_reserved else "false",
    }


@contextmanager
def connected(settings: Settings, *, ephemeral: bool = False) -> Iterator[tuple[redis.Redis, str, str]]:
    """Yield a checked client and the data and broker URLs for the configured or embedded server."""
    with redis_urls(settings, ephemeral=ephemeral) as (data_url, broker_url):
        client = connect(data_url)
        try:
            check_capabilities(client)
            yield client, data_url, broker_url
        finally:
            client.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="Least severe log level printed to standard error.",
)
def cli(log_level: str) -> None:
    """Real-time transaction risk scoring on Redis Streams, RedisBloom and Celery.

    Settings come from RISK_* environment variables and a .env file. With RISK_REDIS_URL unset,
    commands use the embedded server that `riskscore run` started, or start one themselves.
    """
    configure_logging(log_level.upper())


@cli.command()
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, help="Seconds to wait for the outcomes.")
def demo(timeout_s: float) -> None:
    """Run the prototype's scenario through a real worker and beat, and print the four hashes.

    The scenario uses its own keys (prefix riskscore-demo) and, unless RISK_REDIS_URL is set, a
    throwaway embedded server, so it never touches other data.
    """
    settings = load_settings(key_prefix="riskscore-demo", stream="riskscore-demo:transactions")
    keys = Keys.from_settings(settings)
    with connected(settings, ephemeral=True) as (client, data_url, broker_url):
        demo_scenario.seed(client, keys, settings.tdigest_compression)
        ensure_group(client, keys)
        click.echo(f"Seeded 3 user histories, {len(demo_scenario.BAD_IPS)} bad IPs and 4 transactions.")
        with tempfile.TemporaryDirectory(prefix="riskscore-demo-") as workdir:
            with Stack(env=isolated_env(settings, data_url, broker_url), workdir=Path(workdir), log_dir=Path(workdir)) as stack:
                stack.start_worker(concurrency=default_concurrency())
                stack.start_beat()
                click.echo("Started a Celery worker and beat; waiting for the drain to score the stream...")
                started = time.monotonic()
                done = wait_until(lambda: demo_scenario.all_scored(client, keys), timeout_s, stack=stack)
                elapsed = time.monotonic() - started
                if not done:
                    worker_log = Path(workdir) / "worker.log"
                    tail = worker_log.read_text(errors="replace")[-3000:] if worker_log.exists() else ""
                    raise click.ClickException(f"not all transactions were scored within {timeout_s:.0f} s\n{tail}")
        outcomes = demo_scenario.read_outcomes(client, keys)
    click.echo(f"All four scored in {elapsed:.1f} s (including worker start-up).\n")
    for tx_id, fields in outcomes.items():
        click.echo(f"{keys.transaction(tx_id)}")
        for name in sorted(fields):
            click.echo(f"  {name:15} {fields[name]}")
    problems = demo_scenario.matches_expected(outcomes)
    if problems:
        raise click.ClickException("outcomes differ from the prototype:\n" + "\n".join(problems))
    click.echo("\nOutcomes match the prototype: tx_1001 Approved, tx_1002 risk 1, tx_1003 Approved, tx_1004 risk 1.")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def single_run(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir/run.lock` while `riskscore run` runs; raise if another run has it locked.

    A second run would start a second beat on the same schedule file and a second Flower on the
    same port.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(data_dir / "run.lock", "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            raise click.ClickException(
                f"riskscore run is already running with data folder {data_dir} (pid {holder}); stop it first"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _flower_password(settings: Settings) -> tuple[str, str]:
    """Return (password, where it comes from), generating and storing one when none is set."""
    if settings.flower_password is not None:
        return settings.flower_password.get_secret_value(), "RISK_FLOWER_PASSWORD"
    path = settings.data_dir / "flower-password"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created with mode 0600 from the start, so the password is never readable by others.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip(), str(path)


@cli.command()
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Worker processes of the Celery worker; default: CPU cores + 1, since the drain mostly waits.",
)
@click.option("--flower/--no-flower", default=True, show_default=True, help="Start Flower on 127.0.0.1.")
@click.option("--loglevel", default="INFO", show_default=True, help="Log level of the Celery processes.")
def run(concurrency: int | None, flower: bool, loglevel: str) -> None:
    """Run the whole local stack in the foreground: server, worker, beat and Flower.

    A worker, beat or Flower that exits is started again, up to 5 times in 5 minutes each.
    Ctrl-C stops Flower, beat, then the worker (after its running tasks), and then the server.
    """
    settings = get_settings()
    keys = Keys.from_settings(settings)
    # SIGTERM (systemd, docker stop, kill) stops the stack like Ctrl-C. SIGINT gets Python's handler
    # back, because a background job of a non-interactive shell starts with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    with single_run(settings.data_dir), connected(settings) as (client, data_url, broker_url):
        ensure_group(client, keys)
        where = "embedded server" if settings.redis_url is None else "configured server"
        click.echo(f"Using the {where}; stream {keys.stream!r}, consumer group {keys.consumer_group!r}.")
        workdir = settings.data_dir
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stack = Stack(env=stack_env(settings, data_url, broker_url), workdir=workdir)
        try:
            stack.start_worker(concurrency=concurrency or default_concurrency(), loglevel=loglevel)
            stack.start_beat(loglevel=loglevel)
            if flower:
                password, source = _flower_password(settings)
                stack.start_flower(settings.flower_port, settings.flower_user, password)
                click.echo(
                    f"Flower: http://127.0.0.1:{settings.flower_port} "
                    f"(user {settings.flower_user!r}, password from {source})"
                )
            click.echo("Running. Press Ctrl-C to stop.")
            while True:
                for child in stack.restart_exited():
                    click.echo(f"{child.name} had exited; started it again (pid {child.process.pid}).", err=True)
                time.sleep(0.5)
        except KeyboardInterrupt:
            click.echo("\nStopping (the worker finishes its running tasks first)...")
        finally:
            # A second Ctrl-C must not abandon half-stopped children; stop() kills any child that
            # has not exited within its timeout.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stack.stop()
    click.echo("Stopped.")


@cli.command("load-blocklist")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in ListFormat]),
    default=None,
    help="List format; guessed from the content when omitted.",
)
@click.option("--min-count", default=1, show_default=True, help="ipsum lists: minimum blacklist count of an IP.")
def load_blocklist_command(files: tuple[Path, ...], fmt: str | None, min_count: int) -> None:
    """Add the single addresses of IP blocklist FILES to the Bloom filter.

    Ranges (CIDR lines) are counted and reported as skipped: the Bloom filter holds exact
    addresses only.
    """
    settings = get_settings()
    keys = Keys.from_settings(settings)
    with connected(settings) as (client, _data_url, _broker_url):
        for path in files:
            list_format = ListFormat(fmt) if fmt else guess_format(path)
            parsed = read_blocklist(path, list_format, min_count=min_count)
            with click.progressbar(length=len(parsed.addresses), label=f"Loading {path.name}") as bar:
                added = load_blocklist(
                    client,
                    keys,
                    parsed.addresses,
                    error_rate=settings.bloom_error_rate,
                    capacity=settings.bloom_capacity,
                    progress=bar.update,
                )
            click.echo(f"{path} ({list_format.value}): {parsed.summary()}")
            click.echo(f"  {count(added, 'address', 'addresses')} new to the filter; {count(len(parsed.networks), 'range')} skipped (CIDR)")
            if parsed.networks:
                click.echo(f"  `riskscore blocklist refresh --source {path}` loads the ranges too.")


@cli.command("load-history")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--user-column", default="user_id", show_default=True, help="CSV column with the user id.")
@click.option("--amount-column", default="amount", show_default=True, help="CSV column with the amount.")
@click.option("--replace", is_flag=True, help="Replace these users' digests instead of adding to them.")
def load_history_command(file: Path, user_column: str, amount_column: str, replace: bool) -> None:
    """Add per-user amounts from a CSV FILE to the users' T-Digests."""
    settings = get_settings()
    keys = Keys.from_settings(settings)
    parsed = read_history(file, user_column=user_column, amount_column=amount_column)
    total = sum(len(amounts) for amounts in parsed.amounts_by_user.values())
    with connected(settings) as (client, _data_url, _broker_url):
        with click.progressbar(length=total, label=f"Loading {file.name}") as bar:
            load_history(
                client,
                keys,
                parsed.amounts_by_user,
                compression=settings.tdigest_compression,
                replace=replace,
                window_count=settings.history_window_count,
                progress=bar.update,
            )
    click.echo(f"{file}: {total} amounts for {len(parsed.amounts_by_user)} users; {parsed.invalid} invalid rows skipped")
    for line_number, row, reason in parsed.invalid_examples:
        click.echo(f"  line {line_number}: {reason}: {row}")


@cli.command()
@click.argument("transactions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--history", "history_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV of past amounts per user, loaded before the replay.")
@click.option("--history-user-column", default="user_id", show_default=True, help="User column of the --history file.")
@click.option("--history-amount-column", default="amount", show_default=True, help="Amount column of the --history file.")
@click.option("--blocklist", "blocklists", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="IP blocklist file (addresses and CIDR ranges, any supported format) to load first; repeatable.")
@click.option("--allow", "allowlists", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="IP allowlist file, which wins over every blocklist; repeatable.")
@click.option("--allow-reserved", is_flag=True, help="Allowlist private and reserved ranges (RISK_ALLOWLIST_RESERVED) for this replay.")
@click.option("--min-count", default=1, show_default=True, help="ipsum blocklists: minimum blacklist count of an IP.")
@click.option("--map", "mappings", multiple=True, metavar="FIELD=COLUMN", help="Read FIELD (tx_id, user_id, amount, ip) from COLUMN; repeatable.")
@click.option("--carry", multiple=True, metavar="COLUMN", help="Copy COLUMN from the input into the output; repeatable.")
@click.option("--label", metavar="COLUMN", help="Column with a fraud label (1/true/yes): the summary compares it with the outcome. Implies --carry.")
@click.option("--sort-by", metavar="COLUMN", help="Replay rows in the order of COLUMN (numeric when all values are numbers).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Output CSV; default: TRANSACTIONS with .outcomes.csv.")
@click.option("--concurrency", type=int, default=None, help="Worker processes; default: CPU cores + 1.")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True, help="Seconds to wait for every outcome.")
@click.option("--keep", is_flag=True, help="Keep the replay's keys on the server instead of deleting them.")
def replay(
    transactions: Path,
    history_file: Path | None,
    history_user_column: str,
    history_amount_column: str,
    blocklists: tuple[Path, ...],
    allowlists: tuple[Path, ...],
    allow_reserved: bool,
    min_count: int,
    mappings: tuple[str, ...],
    carry: tuple[str, ...],
    label: str | None,
    sort_by: str | None,
    out_file: Path | None,
    concurrency: int | None,
    timeout_s: float,
    keep: bool,
) -> None:
    """Push TRANSACTIONS (CSV, or JSON Lines as .jsonl) through the real pipeline.

    Rows become stream entries in a key namespace of their own, a Celery worker and beat score
    them, and every row's outcome is written to the output CSV. Approved amounts feed the users'
    digests as in live scoring, so with --sort-by on a time column each transaction is judged
    against the same user's earlier approved ones.
    """
    mapping = replay_mod.parse_mapping(mappings)
    carried = list(dict.fromkeys([*carry, *([label] if label else [])]))
    rows = list(replay_mod.read_rows(transactions))
    if not rows:
        raise click.ClickException(f"{transactions}: no rows")
    columns = set().union(*(row.keys() for row in rows))
    # tx_id and ip may be absent (row numbers and unknown IPs stand in); user_id and amount may not.
    needed = [mapping.get(name, name) for name in ("user_id", "amount")]
    unknown = [column for column in dict.fromkeys([*needed, *mapping.values(), *carried]) if column not in columns]
    if unknown:
        raise click.ClickException(
            f"{transactions}: no column {', '.join(map(repr, unknown))}; the columns are {', '.join(map(repr, sorted(columns)))}"
        )
    if sort_by:
        rows = replay_mod.sort_rows(rows, sort_by)
    entries = replay_mod.build_entries(rows, mapping, carried)
    out_path = out_file or transactions.with_suffix(".outcomes.csv")

    prefix = replay_mod.new_namespace()
    overrides: dict[str, object] = {"key_prefix": prefix, "stream": f"{prefix}:transactions"}
    if allow_reserved:
        overrides["allowlist_reserved"] = True
    settings = load_settings(**overrides)
    keys = Keys.from_settings(settings)
    with connected(settings, ephemeral=settings.redis_url is None and find_running(settings.data_dir) is None) as (
        client,
        data_url,
        broker_url,
    ):
        try:
            _replay_loads(
                client, keys, settings, history_file, history_user_column, history_amount_column, blocklists, allowlists, min_count
            )
            ensure_group(client, keys)
            with tempfile.TemporaryDirectory(prefix="riskscore-replay-") as workdir:
                with Stack(env=isolated_env(settings, data_url, broker_url), workdir=Path(workdir), log_dir=Path(workdir)) as stack:
                    stack.start_worker(concurrency=concurrency or default_concurrency())
                    stack.start_beat()
                    started = time.monotonic()
                    with click.progressbar(length=len(entries), label="Adding to the stream") as bar:
                        stream_ids = replay_mod.add_entries(client, keys, entries, progress=bar.update)
                    done = _wait_for_outcomes(client, keys, len(entries), timeout_s, stack)
                    elapsed = time.monotonic() - started
                    if not done:
                        raise click.ClickException(f"not every row had an outcome after {timeout_s:.0f} s; worker log: {Path(workdir) / 'worker.log'}")
            outcomes = replay_mod.collect_outcomes(client, keys, entries, stream_ids)
        finally:
            if not keep:
                replay_mod.delete_namespace(client, prefix)
    replay_mod.write_output(out_path, outcomes, rows, carried)
    _print_summary(replay_mod.summarize(outcomes, rows, label), elapsed, out_path, prefix if keep else None)


def _replay_loads(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    history_file: Path | None,
    user_column: str,
    amount_column: str,
    blocklists: tuple[Path, ...],
    allowlists: tuple[Path, ...],
    min_count: int,
) -> None:
    sources = sources_from_options(tuple(map(str, blocklists)), tuple(map(str, allowlists)), None, min_count)
    if sources:
        report = refresh_lists(client, keys, settings, sources)
        print_refresh_report(report)
        if report.failed or not report.swapped:
            raise click.ClickException("the replay's lists could not be loaded; see the report above")
    if history_file:
        history = read_history(history_file, user_column=user_column, amount_column=amount_column)
        total = load_history(
            client,
            keys,
            history.amounts_by_user,
            compression=settings.tdigest_compression,
            window_count=settings.history_window_count,
        )
        click.echo(f"History {history_file.name}: {total} amounts for {len(history.amounts_by_user)} users")


def _wait_for_outcomes(client: redis.Redis, keys: Keys, total: int, timeout_s: float, stack: Stack) -> bool:
    with click.progressbar(length=total, label="Scoring") as bar:
        shown = 0

        def finished() -> bool:
            nonlocal shown
            delivered, pending = replay_mod.group_progress(client, keys)
            done = max(delivered - pending, 0)
            bar.update(done - shown)
            shown = done
            return done >= total

        return wait_until(finished, timeout_s, interval_s=0.2, stack=stack)


def _print_summary(summary: replay_mod.Summary, elapsed_s: float, out_path: Path, kept_prefix: str | None) -> None:
    click.echo(f"\n{summary.rows} rows scored in {elapsed_s:.1f} s ({summary.rows / elapsed_s:,.0f} rows/s, including worker start-up)")
    for outcome, rows in summary.outcomes.most_common():
        click.echo(f"  {outcome:12} {rows:8,}")
    if summary.reasons:
        click.echo("Reasons:")
        for reason, rows in summary.reasons.most_common():
            click.echo(f"  {reason:24} {rows:8,}")
    if summary.confusion:
        c = summary.confusion
        frauds = c["fraud_flagged"] + c["fraud_approved"]
        legit = c["legitimate_flagged"] + c["legitimate_approved"]
        click.echo("Against the label:")
        click.echo(f"  labelled fraud flagged       {c['fraud_flagged']:6,} of {frauds:,}")
        click.echo(f"  labelled legitimate flagged  {c['legitimate_flagged']:6,} of {legit:,}")
    click.echo(f"Outcomes written to {out_path}")
    if kept_prefix:
        click.echo(f"Keys kept under {kept_prefix}:*")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--ping-timeout", default=1.0, show_default=True, help="Seconds to wait for workers to answer a ping.")
@click.option("--check", is_flag=True, help="Exit with code 2 when a problem is found (for health checks).")
def status(as_json: bool, ping_timeout: float, check: bool) -> None:
    """Show the pipeline's health: stream, consumer group lag and pending entries, outcomes,
    dead letters, duplicates, the last drain, broker queues and the workers that answer a ping.

    It never starts a server: it reports on the configured one or on the running embedded one.
    """
    settings = get_settings()
    keys = Keys.from_settings(settings)
    data_url, broker_url = resolve_running_urls(settings)
    client = connect(data_url)
    broker = connect(broker_url)
    try:
        check_capabilities(client)
        from tasks import app  # imported here: it configures Celery from the same settings

        replies = app.control.ping(timeout=ping_timeout) or []
        workers = sorted(name for reply in replies for name in reply)
        report = collect_status(client, broker, keys, settings, workers)
    finally:
        client.close()
        broker.close()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_status(report)
    if check and report["problems"]:
        sys.exit(2)


def _print_status(report: dict[str, object]) -> None:
    group = report["group"]
    click.echo(f"stream            {report['stream']}: {report['stream_length']:,} entries")
    if group is None:
        click.echo(f"consumer group    {report['consumer_group']}: not created yet (the first drain creates it)")
    else:
        assert isinstance(group, dict)
        oldest = "none" if group["oldest_pending_age_s"] is None else f"{group['oldest_pending_age_s']:.1f} s old"
        click.echo(
            f"consumer group    {report['consumer_group']}: lag {group['lag']}, pending {group['pending']:,} "
            f"(oldest {oldest}), {group['consumers']} consumers"
        )
    outcomes = report["outcomes"]
    assert isinstance(outcomes, dict)
    click.echo("outcome writes    " + (", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())) or "none yet"))
    click.echo(f"dead letters      {report['dead_letter_length']:,}")
    click.echo(f"duplicates        {report['duplicates']:,}")
    drain = report["drain"]
    if drain:
        assert isinstance(drain, dict)
        click.echo(f"last drain        {drain['at']} ({drain['age_s']:.1f} s ago): read {drain['read']}, reclaimed {drain['reclaimed']}, lost {drain['lost']}, tasks {drain['tasks']}")
    else:
        click.echo("last drain        never")
    lists = report["lists"]
    assert isinstance(lists, dict)
    last_refresh = lists["last_refresh"] or {}
    click.echo(
        f"list version      {lists['version'] or 'none (no refresh has run)'}; last refresh "
        f"{last_refresh.get('at', 'never')} {last_refresh.get('result', '')}".rstrip()
    )
    for source in lists["sources"]:
        error = f", last error {source['last_error']!r} at {source['last_error_at']}" if source.get("last_error") else ""
        click.echo(f"  source {source['name']}: last success {source['last_success_at'] or 'never'}{error}")
    history = report["history_rebuild"]
    assert isinstance(history, dict)
    state = history["state"] or {}
    click.echo(f"history rebuild   last finished {state.get('last_finished_at', 'never')}{' (running)' if history['running'] else ''}")
    queues = report["broker_queues"]
    assert isinstance(queues, dict)
    click.echo(f"broker queues     {queues['score']:,} scoring tasks, {queues['drain']:,} drain tasks waiting")
    workers = report["workers"]
    click.echo(f"workers           {', '.join(workers) if workers else 'none answered'}")  # type: ignore[arg-type]
    problems = report["problems"]
    assert isinstance(problems, list)
    click.echo("health            " + ("ok" if not problems else "PROBLEMS:\n  - " + "\n  - ".join(problems)))


@cli.command()
@click.argument("fields", nargs=-1, required=True, metavar="FIELD=VALUE...")
def add(fields: tuple[str, ...]) -> None:
    """Add one transaction to the stream, for example:

    riskscore add tx_id=tx_1 user_id=user_1 amount=12.50 ip=88.214.48.17

    The running stack scores it within about a second; `riskscore show TX_ID` prints the outcome.
    """
    entry: dict[str, str] = {}
    for item in fields:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected FIELD=VALUE, got {item!r}", param_hint="FIELDS")
        entry[name] = value
    settings = get_settings()
    keys = Keys.from_settings(settings)
    with connected(settings) as (client, _data_url, _broker_url):
        entry_id = client.xadd(keys.stream, entry)
    click.echo(f"Added entry {entry_id.decode()} to stream {keys.stream!r}.")


@cli.command()
@click.argument("tx_id")
def show(tx_id: str) -> None:
    """Print the hash of transaction TX_ID."""
    settings = get_settings()
    keys = Keys.from_settings(settings)
    with connected(settings) as (client, _data_url, _broker_url):
        fields = client.hgetall(keys.transaction(tx_id))
    if not fields:
        raise click.ClickException(f"no transaction {tx_id!r} (key {keys.transaction(tx_id)!r} does not exist)")
    width = max(len(name) for name in fields)
    for name, value in sorted(fields.items()):
        click.echo(f"{name.decode(errors='replace'):{width}}  {value.decode(errors='replace')}")


cli.add_command(blocklist)
cli.add_command(history)


def main() -> None:
    """Run the command line, turning riskscore errors into one-line messages and exit code 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except RiskscoreError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
