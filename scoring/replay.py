"""Replay of a transactions file through the real pipeline, and collection of every row's outcome.

A replay runs in a key namespace of its own (`riskscore-replay-<time>-<random>`), so it never mixes
with live data on the same server and can be deleted afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from scoring.errors import InputFormatError
from scoring.keys import Keys
from scoring.model import REQUIRED_FIELDS, decode_text

TRUE_LABELS = frozenset({"1", "true", "yes", "y", "t", "fraud"})


def new_namespace() -> str:
    """Return a fresh key prefix for one replay run."""
    return f"riskscore-replay-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """Parse FIELD=COLUMN options into {field: column}; raise InputFormatError on a bad item."""
    mapping: dict[str, str] = {}
    for item in items:
        name, sep, column = item.partition("=")
        name = name.strip()
        if not sep or not column or name not in REQUIRED_FIELDS:
            raise InputFormatError(
                f"invalid --map {item!r}: expected FIELD=COLUMN with FIELD one of {', '.join(REQUIRED_FIELDS)}"
            )
        mapping[name] = column
    return mapping


def _read_text(path: Path) -> str:
    """Return the text of a UTF-8 file without a leading BOM.

    Raise InputFormatError naming the file, and the line of the first invalid byte, when the file
    cannot be read or is not valid UTF-8.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputFormatError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise InputFormatError(
            f"{path}: line {line_number} is not valid UTF-8 ({error.reason}). Save the file as UTF-8."
        ) from None


def read_rows(path: Path) -> Iterator[dict[str, str]]:
    """Yield the rows of a CSV file (with a header) or a JSON Lines file (`.jsonl`, `.ndjson`).

    Both are read as UTF-8, with or without a BOM. A JSON line that is not an object yields a row
    with only `_raw_line`, so that it still gets an outcome (its fields are missing) instead of
    stopping the replay.
    """
    text = _read_text(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        # newline=None splits lines as text-mode open() does, on LF, CRLF and CR.
        with io.StringIO(text, newline=None) as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    value = None
                if not isinstance(value, dict):
                    yield {"_raw_line": line.rstrip("\n")[:1000]}
                    continue
                yield {str(k): "" if v is None else (v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()}
        return
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise InputFormatError(f"{path}: empty file, expected a CSV header")
        for row in reader:
            yield {k: (v if v is not None else "") for k, v in row.items() if k is not None}


def sort_rows(rows: list[dict[str, str]], column: str) -> list[dict[str, str]]:
    """Sort rows by `column`, numerically when every value is a number; rows without it go last."""
    values = [row.get(column) for row in rows]
    if all(v is None for v in values):
        raise InputFormatError(f"--sort-by column {column!r} is not in the file")

    def as_number(text: str | None) -> float | None:
        try:
            number = float(text) if text is not None else None
        except ValueError:
            return None
        return number if number is not None and math.isfinite(number) else None

    if all(as_number(v) is not None for v in values if v not in (None, "")):
        return sorted(rows, key=lambda r: (as_number(r.get(column)) is None, as_number(r.get(column)) or 0.0))
    return sorted(rows, key=lambda r: (r.get(column) is None, r.get(column) or ""))


def build_entries(
    rows: Sequence[Mapping[str, str]], mapping: Mapping[str, str], carry: Sequence[str]
) -> list[dict[str, str]]:
    """Turn rows into stream entries: mapped fields, carried columns, and the row number.

    A row without its mapped column gets no such field, so the pipeline records it as invalid. A
    file with no tx_id column gets `row-<n>` ids; a file with no ip column gets an empty ip (the IP
    rule abstains).
    """
    columns = set().union(*(row.keys() for row in rows)) if rows else set()
    entries = []
    for number, row in enumerate(rows, start=1):
        entry: dict[str, str] = {}
        for name in REQUIRED_FIELDS:
            column = mapping.get(name, name)
            if column in row:
                entry[name] = row[column]
            elif name == "tx_id" and column not in columns:
                entry[name] = f"row-{number}"
            elif name == "ip" and column not in columns:
                entry[name] = ""
        for column in carry:
            if column in row and column not in REQUIRED_FIELDS:
                entry[column] = row[column]
        entry["replay_row"] = str(number)
        entries.append(entry)
    return entries


def add_entries(client: redis.Redis, keys: Keys, entries: Sequence[Mapping[str, str]], progress=None) -> list[str]:  # type: ignore[no-untyped-def]
    """XADD every entry in pipelines of 1,000; return the stream ids in order."""
    ids: list[str] = []
    for start in range(0, len(entries), 1000):
        pipe = client.pipeline(transaction=False)
        chunk = entries[start : start + 1000]
        for entry in chunk:
            pipe.xadd(keys.stream, dict(entry))
        ids.extend(decode_text(i) for i in pipe.execute())
        if progress:
            progress(len(chunk))
    return ids


def group_progress(client: redis.Redis, keys: Keys) -> tuple[int, int]:
    """Return (entries delivered to the group, entries still pending) from XINFO GROUPS."""
    for group in client.xinfo_groups(keys.stream):
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name == keys.consumer_group:
            return int(group.get("entries-read") or 0), int(group["pending"])
    return 0, 0


@dataclass
class RowOutcome:
    """One input row's outcome, joined back from Redis by its stream id."""

    row: int
    tx_id: str
    outcome: str
    risk_score: str = ""
    reasons: str = ""


@dataclass
class Summary:
    """Counts over a replay's outcomes, and the label comparison when a label column is given."""

    rows: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    confusion: Counter[str] = field(default_factory=Counter)


def collect_outcomes(
    client: redis.Redis, keys: Keys, entries: Sequence[Mapping[str, str]], stream_ids: Sequence[str]
) -> list[RowOutcome]:
    """Return each row's outcome: from its hash when the hash was written by its entry, else from
    the dead-letter stream (invalid entries and duplicate tx_ids)."""
    dead: dict[str, tuple[str, str]] = {}
    for _entry_id, fields in client.xrange(keys.dead_letter):
        decoded = {decode_text(k): decode_text(v) for k, v in fields.items()}
        dead[decoded.get("source_id", "")] = (decoded.get("reason", ""), decoded.get("detail", ""))

    pipe = client.pipeline(transaction=False)
    for entry in entries:
        tx_id = entry.get("tx_id", "")
        pipe.hmget(keys.transaction(tx_id), "stream_id", "outcome", "risk_score", "reasons")
    outcomes = []
    for number, (entry, stream_id, reply) in enumerate(zip(entries, stream_ids, pipe.execute()), start=1):
        tx_id = entry.get("tx_id", "")
        hash_stream_id, outcome, risk_score, reasons = (decode_text(v) if v is not None else None for v in reply)
        if hash_stream_id == stream_id and outcome:
            outcomes.append(RowOutcome(number, tx_id, outcome, risk_score or "", reasons or ""))
        elif stream_id in dead:
            reason, _detail = dead[stream_id]
            outcome = "duplicate" if reason == "duplicate_tx_id" else "invalid"
            outcomes.append(RowOutcome(number, tx_id, outcome, "", reason))
        else:
            outcomes.append(RowOutcome(number, tx_id, "missing"))
    return outcomes


def summarize(outcomes: Sequence[RowOutcome], rows: Sequence[Mapping[str, str]], label: str | None) -> Summary:
    """Count outcomes and reasons, and flagged-versus-label when `label` names a column."""
    summary = Summary(rows=len(outcomes))
    for outcome, row in zip(outcomes, rows):
        summary.outcomes[outcome.outcome] += 1
        for reason in filter(None, outcome.reasons.split(",")):
            summary.reasons[reason] += 1
        if label is not None and outcome.outcome in ("approved", "flagged"):
            is_positive = row.get(label, "").strip().lower() in TRUE_LABELS
            summary.confusion[f"{'fraud' if is_positive else 'legitimate'}_{outcome.outcome}"] += 1
    return summary


def write_output(path: Path, outcomes: Sequence[RowOutcome], rows: Sequence[Mapping[str, str]], carry: Sequence[str]) -> None:
    """Write one CSV row per input row: its outcome, then the carried columns."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "tx_id", "outcome", "risk_score", "reasons", *carry])
        for outcome, row in zip(outcomes, rows):
            writer.writerow(
                [outcome.row, outcome.tx_id, outcome.outcome, outcome.risk_score, outcome.reasons]
                + [row.get(column, "") for column in carry]
            )


def delete_namespace(client: redis.Redis, prefix: str) -> int:
    """Delete every key under `prefix:`; return how many were deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted
