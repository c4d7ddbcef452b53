"""Tests of data access and batch scoring against the real session server (no Celery)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from scoring.engine import BatchScorer
from scoring.keys import Keys
from scoring.loads import load_blocklist, load_history
from scoring.rules import History
from scoring.settings import ColdStartPolicy
from scoring.store import Entry, connect, ensure_group, read_batch_state, read_new, reclaim, record_lost

USER_1_AMOUNTS = [500, 520, 530, 540, 560, 560, 560, 520, 200, 520]
LISTED_IP = "203.0.113.9"


def add_entries(client: redis.Redis, keys: Keys, entries: list[dict[str, str]]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(keys.stream, fields)
    return [entry_id.decode() for entry_id in pipe.execute()]


def add_history(client: redis.Redis, keys: Keys, user: str, amounts: list[float]) -> None:
    client.execute_command("TDIGEST.CREATE", keys.history(user), "COMPRESSION", 100)
    client.execute_command("TDIGEST.ADD", keys.history(user), *amounts)


def observations(client: redis.Redis, keys: Keys, user: str) -> int:
    info = client.execute_command("TDIGEST.INFO", keys.history(user))
    fields = dict(zip(info[::2], info[1::2]))
    return int(fields[b"Observations"])


def read_all(client: redis.Redis, keys: Keys, consumer: str = "test") -> list[Entry]:
    ensure_group(client, keys)
    return read_new(client, keys, consumer, 10_000)


def pending_count(client: redis.Redis, keys: Keys) -> int:
    return int(client.xpending(keys.stream, keys.consumer_group)["pending"])


def tx_hash(client: redis.Redis, keys: Keys, tx_id: str) -> dict[str, str]:
    raw = client.hgetall(keys.transaction(tx_id))
    return {name.decode(): value.decode() for name, value in raw.items()}


def dead_letters(client: redis.Redis, keys: Keys) -> list[dict[bytes, bytes]]:
    return [fields for _entry_id, fields in client.xrange(keys.dead_letter)]


def tx(tx_id: str, user_id: str = "user_1", amount: str = "500", ip: str = "198.51.100.7") -> dict[str, str]:
    return {"tx_id": tx_id, "user_id": user_id, "amount": amount, "ip": ip}


# --- the stream and its consumer group ------------------------------------------------------------


def test_ensure_group_reads_backlog(client, keys):
    ids = add_entries(client, keys, [tx("tx_1"), tx("tx_2"), tx("tx_3")])

    created = ensure_group(client, keys)
    entries = read_new(client, keys, "test", 100)

    assert created is True
    assert [entry_id for entry_id, _fields in entries] == ids
    assert entries[0][1] == tx("tx_1")


def test_ensure_group_twice_is_harmless(client, keys):
    add_entries(client, keys, [tx("tx_1")])

    first = ensure_group(client, keys)
    second = ensure_group(client, keys)

    assert first is True
    assert second is False
    assert len(read_new(client, keys, "test", 100)) == 1


def test_ensure_group_creates_missing_stream(client, keys):
    ensure_group(client, keys)

    assert client.type(keys.stream) == b"stream"


@pytest.mark.parametrize("consumers", [("drain-a", "drain-b"), ("drain", "drain")], ids=["different", "same"])
def test_concurrent_readers_split_entries(client, keys, settings, consumers):
    total = 5_000
    all_ids = set(add_entries(client, keys, [tx(f"tx_{n}") for n in range(total)]))
    ensure_group(client, keys)
    start = threading.Barrier(len(consumers))
    read_ids: list[list[str]] = [[] for _ in consumers]

    def read_until_empty(index: int) -> None:
        own_client = connect(settings.redis_url.get_secret_value())
        try:
            start.wait()
            while entries := read_new(own_client, keys, consumers[index], 50):
                read_ids[index].extend(entry_id for entry_id, _fields in entries)
        finally:
            own_client.close()

    threads = [threading.Thread(target=read_until_empty, args=(index,)) for index in range(len(consumers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    first, second = (set(ids) for ids in read_ids)
    assert len(read_ids[0]) + len(read_ids[1]) == total
    assert first.isdisjoint(second)
    assert first | second == all_ids
    # Both threads took part, so the test exercised concurrent reads.
    assert first
    assert second


# --- batch reads ----------------------------------------------------------------------------------


def test_batch_state_missing_digest(client, keys):
    _listed, histories = read_batch_state(client, keys, [], ["nobody"], 0.8)

    assert histories["nobody"] == History(count=0, quantile=None)


def test_one_observation_has_no_quantile(client, keys):
    # RedisBloom 2.8.2 returns nan as the quantile of a digest with one observation.
    add_history(client, keys, "newcomer", [42.0])

    _listed, histories = read_batch_state(client, keys, [], ["newcomer"], 0.8)

    assert histories["newcomer"] == History(count=1, quantile=None)


def test_empty_digest_has_no_quantile(client, keys):
    client.execute_command("TDIGEST.CREATE", keys.history("empty"))

    _listed, histories = read_batch_state(client, keys, [], ["empty"], 0.8)

    assert histories["empty"] == History(count=0, quantile=None)


def test_batch_state_normal_digest(client, keys):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    expected = float(client.execute_command("TDIGEST.QUANTILE", keys.history("user_1"), 0.8)[0])

    _listed, histories = read_batch_state(client, keys, [], ["user_1", "user_1"], 0.8)

    assert list(histories) == ["user_1"]
    assert histories["user_1"].count == 10
    assert histories["user_1"].quantile == expected
    assert expected == 560.0


def test_missing_filter_lists_nothing(client, keys):
    listed, _histories = read_batch_state(client, keys, ["198.51.100.7", LISTED_IP], [], 0.8)

    assert listed == [False, False]


def test_membership_read_in_order(client, keys):
    load_blocklist(client, keys, [LISTED_IP], error_rate=0.01, capacity=1000)

    listed, _histories = read_batch_state(client, keys, ["198.51.100.7", LISTED_IP, "198.51.100.8"], [], 0.8)

    assert listed == [False, True, False]


# --- reclaim of stale pending entries -------------------------------------------------------------


def test_reclaim_returns_idle_entries(client, keys):
    ids = add_entries(client, keys, [tx("tx_1"), tx("tx_2")])
    read_all(client, keys, consumer="lost-worker")
    time.sleep(0.05)

    claimed, deleted = reclaim(client, keys, "drain", idle_ms=20, count=100)

    assert [entry_id for entry_id, _fields in claimed] == ids
    assert claimed[0][1] == tx("tx_1")
    assert deleted == []


def test_reclaim_skips_recent_entries(client, keys):
    add_entries(client, keys, [tx("tx_1")])
    read_all(client, keys, consumer="busy-worker")

    claimed, deleted = reclaim(client, keys, "drain", idle_ms=60_000, count=100)

    assert claimed == []
    assert deleted == []


def test_reclaim_stops_at_count(client, keys):
    add_entries(client, keys, [tx(f"tx_{n}") for n in range(10)])
    read_all(client, keys, consumer="lost-worker")
    time.sleep(0.05)

    claimed, _deleted = reclaim(client, keys, "drain", idle_ms=20, count=4)

    assert len(claimed) == 4


def test_reclaim_reports_deleted_entries(client, keys):
    ids = add_entries(client, keys, [tx("tx_1"), tx("tx_2"), tx("tx_3")])
    read_all(client, keys, consumer="lost-worker")
    client.xdel(keys.stream, ids[0], ids[2])
    time.sleep(0.05)

    claimed, deleted = reclaim(client, keys, "drain", idle_ms=20, count=100)

    assert [entry_id for entry_id, _fields in claimed] == [ids[1]]
    assert sorted(deleted) == [ids[0], ids[2]]


def test_record_lost_dead_letters_and_acks(client, keys):
    ids = add_entries(client, keys, [tx("tx_1"), tx("tx_2")])
    read_all(client, keys, consumer="lost-worker")
    client.xdel(keys.stream, ids[0])
    time.sleep(0.05)
    claimed, deleted = reclaim(client, keys, "drain", idle_ms=20, count=100)

    record_lost(client, keys, deleted)

    letters = dead_letters(client, keys)
    assert len(letters) == 1
    assert letters[0][b"reason"] == b"entry_lost"
    assert letters[0][b"source_id"] == ids[0].encode()
    pending_ids = [item["message_id"].decode() for item in client.xpending_range(keys.stream, keys.consumer_group, "-", "+", 10)]
    assert pending_ids == [ids[1]]
    assert [entry_id for entry_id, _fields in claimed] == [ids[1]]


# --- outcome writes: idempotence and duplicates ---------------------------------------------------


def test_rescored_entries_are_redelivered(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    add_entries(client, keys, [tx("tx_1", amount="500"), tx("tx_2", amount="510")])
    entries = read_all(client, keys)
    scorer = BatchScorer(client, settings)

    first = scorer.score(entries)
    outcome_before = tx_hash(client, keys, "tx_1")
    second = scorer.score(entries)

    assert first.statuses == {"scored": 2}
    assert first.outcomes == {"approved": 2}
    assert second.statuses == {"redelivered": 2}
    assert tx_hash(client, keys, "tx_1") == outcome_before
    assert observations(client, keys, "user_1") == len(USER_1_AMOUNTS) + 2
    assert dead_letters(client, keys) == []
    assert pending_count(client, keys) == 0


def test_approved_amount_learned_once(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    add_entries(client, keys, [tx("tx_1", amount="333")])
    entries = read_all(client, keys)
    scorer = BatchScorer(client, settings)

    scorer.score(entries)
    scorer.score(entries)

    # Only 200 is below 333, so the rank of 333 is 1 when it was added once and 2 when added twice.
    rank = client.execute_command("TDIGEST.RANK", keys.history("user_1"), 333)[0]
    assert observations(client, keys, "user_1") == 11
    assert int(rank) == 1
    assert tx_hash(client, keys, "tx_1")["learned"] == "1"


def test_flagged_amount_not_learned(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    add_entries(client, keys, [tx("tx_1", amount="50000")])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    assert result.outcomes == {"flagged": 1}
    assert observations(client, keys, "user_1") == 10
    assert "learned" not in tx_hash(client, keys, "tx_1")


def test_duplicate_tx_id_is_dead_lettered(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    ids = add_entries(client, keys, [tx("tx_1", amount="500"), tx("tx_1", amount="777", ip="198.51.100.99")])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    fields = tx_hash(client, keys, "tx_1")
    assert result.statuses == {"scored": 1, "duplicate": 1}
    assert fields["amount"] == "500"
    assert fields["stream_id"] == ids[0]
    assert fields["outcome"] == "approved"
    assert fields["duplicates"] == "1"
    assert fields["last_duplicate_id"] == ids[1]
    assert observations(client, keys, "user_1") == 11
    assert pending_count(client, keys) == 0


def test_duplicate_dead_letter_keeps_fields(client, keys, settings):
    ids = add_entries(client, keys, [tx("tx_1", amount="500"), tx("tx_1", amount="777", ip="198.51.100.99")])

    BatchScorer(client, settings).score(read_all(client, keys))

    letters = dead_letters(client, keys)
    assert len(letters) == 1
    letter = letters[0]
    assert letter[b"reason"] == b"duplicate_tx_id"
    assert letter[b"source_id"] == ids[1].encode()
    assert ids[0].encode() in letter[b"detail"]
    assert letter[b"field:tx_id"] == b"tx_1"
    assert letter[b"field:user_id"] == b"user_1"
    assert letter[b"field:amount"] == b"777"
    assert letter[b"field:ip"] == b"198.51.100.99"


def test_duplicate_across_batches(client, keys, settings):
    scorer = BatchScorer(client, settings)
    add_entries(client, keys, [tx("tx_1", amount="500")])
    scorer.score(read_all(client, keys))
    add_entries(client, keys, [tx("tx_1", amount="900")])

    result = scorer.score(read_new(client, keys, "test", 100))

    assert result.statuses == {"duplicate": 1}
    assert tx_hash(client, keys, "tx_1")["amount"] == "500"
    assert tx_hash(client, keys, "tx_1")["duplicates"] == "1"


def test_prewritten_hash_gets_outcome(client, keys, settings):
    # A producer may write the hash before the entry, as the prototype did. That is no duplicate.
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    client.hset(keys.transaction("tx_1"), mapping={"tx_id": "tx_1", "status": "pending", "amount": "500"})
    add_entries(client, keys, [tx("tx_1", amount="500")])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    assert result.statuses == {"scored": 1}
    assert tx_hash(client, keys, "tx_1")["status"] == "Approved"


# --- invalid entries ------------------------------------------------------------------------------

INVALID_CASES = [
    ("bad_amount", tx("tx_bad_amount", amount="12,50"), "invalid_amount"),
    ("negative_amount", tx("tx_negative", amount="-5"), "invalid_amount"),
    ("missing_ip", {"tx_id": "tx_no_ip", "user_id": "user_1", "amount": "5"}, "missing_field"),
    ("bad_ip", tx("tx_bad_ip", ip="300.1.1.1"), "invalid_ip"),
    ("blank_user", tx("tx_blank_user", user_id="  "), "invalid_user_id"),
]


@pytest.mark.parametrize(("fields", "reason"), [case[1:] for case in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_invalid_entry_dead_lettered(client, keys, settings, fields, reason):
    (entry_id,) = add_entries(client, keys, [fields])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    letters = dead_letters(client, keys)
    assert result.statuses == {"invalid": 1}
    assert len(letters) == 1
    assert letters[0][b"reason"] == reason.encode()
    assert letters[0][b"source_id"] == entry_id.encode()
    assert letters[0][b"detail"]
    for name, value in fields.items():
        assert letters[0][f"field:{name}".encode()] == value.encode()
    assert pending_count(client, keys) == 0


@pytest.mark.parametrize(("fields", "reason"), [case[1:] for case in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_invalid_entry_marks_hash(client, keys, settings, fields, reason):
    add_entries(client, keys, [fields])

    BatchScorer(client, settings).score(read_all(client, keys))

    marked = tx_hash(client, keys, fields["tx_id"])
    assert marked["status"] == "invalid"
    assert marked["outcome"] == "invalid"
    assert marked["reasons"] == reason


def test_unusable_tx_id_writes_no_hash(client, keys, settings):
    add_entries(client, keys, [tx(" padded "), {"user_id": "user_1", "amount": "5", "ip": ""}])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    assert result.statuses == {"invalid": 2}
    assert client.keys(f"{keys.prefix}:tx:*") == []
    assert [letter[b"reason"] for letter in dead_letters(client, keys)] == [b"invalid_tx_id", b"missing_field"]


def test_non_utf8_bytes_restored_exactly(client, keys, settings):
    raw_value = b"caf\xe9 \xff\xfe end"
    raw_name = b"n\xe4me"
    client.xadd(
        keys.stream,
        {b"tx_id": b"tx_bytes", b"user_id": b"user_1", b"amount": b"5", b"ip": b"", b"memo": raw_value, raw_name: b"x"},
    )

    result = BatchScorer(client, settings).score(read_all(client, keys))

    letter = dead_letters(client, keys)[0]
    assert result.statuses == {"invalid": 1}
    assert letter[b"reason"] == b"invalid_encoding"
    assert letter[b"field:memo"] == raw_value
    assert letter[b"field:" + raw_name] == b"x"
    assert letter[b"field:tx_id"] == b"tx_bytes"
    assert tx_hash(client, keys, "tx_bytes")["outcome"] == "invalid"
    assert pending_count(client, keys) == 0


def test_non_utf8_tx_id_writes_no_hash(client, keys, settings):
    client.xadd(keys.stream, {b"tx_id": b"tx_\xff", b"user_id": b"user_1", b"amount": b"5", b"ip": b""})

    BatchScorer(client, settings).score(read_all(client, keys))

    letter = dead_letters(client, keys)[0]
    assert letter[b"field:tx_id"] == b"tx_\xff"
    assert client.keys(f"{keys.prefix}:tx:*") == []


def test_mixed_batch_acknowledges_every_entry(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    entries = [tx("tx_1"), tx("tx_2", amount="abc"), tx("tx_1", amount="9"), {"tx_id": "tx_3"}, tx("tx_4", amount="99999")]
    add_entries(client, keys, entries)

    result = BatchScorer(client, settings).score(read_all(client, keys))

    assert result.statuses == {"scored": 2, "invalid": 2, "duplicate": 1}
    assert result.outcomes == {"approved": 1, "flagged": 1}
    assert pending_count(client, keys) == 0
    assert len(dead_letters(client, keys)) == 3


# --- key injection --------------------------------------------------------------------------------


def test_tx_id_naming_filter_is_harmless(client, keys, settings):
    load_blocklist(client, keys, [LISTED_IP, "203.0.113.10"], error_rate=0.01, capacity=1000)
    add_history(client, keys, "alice", USER_1_AMOUNTS)
    filter_info_before = client.execute_command("BF.INFO", keys.blocklist)
    keys_before = set(client.keys("*"))
    # Flagged (listed IP), so the transaction writes no history of its own.
    add_entries(client, keys, [tx(keys.blocklist, user_id=keys.history("alice"), amount="1", ip=LISTED_IP)])
    keys_before.add(keys.stream.encode())

    result = BatchScorer(client, settings).score(read_all(client, keys))

    # Keys with fixed names (the stats hash, say) may appear too, because no identifier can spell them.
    new_keys = {key.decode() for key in set(client.keys("*")) - keys_before}
    identifier_keys = {key for key in new_keys if key not in (keys.stats, keys.dead_letter, keys.drain_heartbeat)}
    assert result.outcomes == {"flagged": 1}
    assert client.type(keys.blocklist) == b"MBbloom--"
    assert client.execute_command("BF.INFO", keys.blocklist) == filter_info_before
    assert client.execute_command("BF.CARD", keys.blocklist) == 2
    assert observations(client, keys, "alice") == len(USER_1_AMOUNTS)
    assert identifier_keys == {keys.transaction(keys.blocklist)}


def test_user_id_naming_history_is_harmless(client, keys, settings):
    add_history(client, keys, "alice", USER_1_AMOUNTS)
    injected_user = keys.history("alice")
    add_entries(client, keys, [tx("tx_1", user_id=injected_user, amount="5")])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    assert result.outcomes == {"approved": 1}
    assert observations(client, keys, "alice") == len(USER_1_AMOUNTS)
    assert observations(client, keys, injected_user) == 1
    assert keys.history(injected_user) == f"{keys.prefix}:history:{keys.prefix}:history:alice"


# --- rules against stored state -------------------------------------------------------------------


def test_cold_start_abstains_by_default(client, keys, settings):
    add_entries(client, keys, [tx("tx_1", user_id="newcomer", amount="1000000")])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    assert result.outcomes == {"approved": 1}
    assert tx_hash(client, keys, "tx_1")["reasons"] == "insufficient_history"


def test_cold_start_flag_policy_flags(client, keys, settings):
    flagging = settings.model_copy(update={"cold_start_policy": ColdStartPolicy.FLAG})
    add_history(client, keys, "newcomer", [10.0])
    add_entries(client, keys, [tx("tx_1", user_id="newcomer", amount="1")])

    result = BatchScorer(client, flagging).score(read_all(client, keys))

    fields = tx_hash(client, keys, "tx_1")
    assert result.outcomes == {"flagged": 1}
    assert fields["amount_risk"] == "1"
    assert fields["reasons"] == "insufficient_history"
    assert fields["status"] == "pending"
    assert observations(client, keys, "newcomer") == 1


def test_flag_policy_spares_rich_user(client, keys, settings):
    flagging = settings.model_copy(update={"cold_start_policy": ColdStartPolicy.FLAG})
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    add_entries(client, keys, [tx("tx_1", amount="500")])

    result = BatchScorer(client, flagging).score(read_all(client, keys))

    assert result.outcomes == {"approved": 1}


def test_learning_disabled_leaves_digest(client, keys, settings):
    frozen = settings.model_copy(update={"learn_from_approved": False})
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    add_entries(client, keys, [tx("tx_1", amount="500")])

    result = BatchScorer(client, frozen).score(read_all(client, keys))

    assert result.outcomes == {"approved": 1}
    assert observations(client, keys, "user_1") == len(USER_1_AMOUNTS)


def test_listed_ip_is_flagged(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    load_blocklist(client, keys, [LISTED_IP], error_rate=0.01, capacity=1000)
    add_entries(client, keys, [tx("tx_1", ip=LISTED_IP), tx("tx_2", ip=f"::ffff:{LISTED_IP}")])

    result = BatchScorer(client, settings).score(read_all(client, keys))

    assert result.outcomes == {"flagged": 2}
    assert tx_hash(client, keys, "tx_2")["ip_checked"] == LISTED_IP
    assert tx_hash(client, keys, "tx_2")["reasons"] == "ip_blocklisted"


# --- bulk loads -----------------------------------------------------------------------------------


def test_load_blocklist_counts_new_addresses(client, keys):
    first = load_blocklist(client, keys, ["192.0.2.1", "192.0.2.2"], error_rate=0.01, capacity=1000)
    second = load_blocklist(client, keys, ["192.0.2.2", "192.0.2.3"], error_rate=0.01, capacity=1000)

    assert first == 2
    assert second == 1
    assert client.execute_command("BF.CARD", keys.blocklist) == 3


def test_load_blocklist_reserves_capacity(client, keys):
    load_blocklist(client, keys, [f"10.0.{n // 256}.{n % 256}" for n in range(1500)], error_rate=0.01, capacity=1000)

    info = client.execute_command("BF.INFO", keys.blocklist)
    fields = dict(zip(info[::2], info[1::2]))
    assert fields[b"Capacity"] == 1500
    assert fields[b"Number of filters"] == 1


def test_load_blocklist_reports_progress(client, keys):
    reported: list[int] = []

    load_blocklist(client, keys, [f"10.1.{n // 256}.{n % 256}" for n in range(7000)], error_rate=0.01, capacity=1000, progress=reported.append)

    assert reported == [5000, 2000]


def test_load_history_adds_amounts(client, keys):
    total = load_history(client, keys, {"user_1": [1.0, 2.0], "user_2": [3.0]}, compression=100)
    load_history(client, keys, {"user_1": [4.0]}, compression=100)

    assert total == 3
    assert observations(client, keys, "user_1") == 3
    assert observations(client, keys, "user_2") == 1


def test_load_history_replace(client, keys):
    load_history(client, keys, {"user_1": USER_1_AMOUNTS, "user_2": [7.0]}, compression=100)

    load_history(client, keys, {"user_1": [1000.0, 2000.0]}, compression=100, replace=True)

    assert observations(client, keys, "user_1") == 2
    assert float(client.execute_command("TDIGEST.MIN", keys.history("user_1"))) == 1000.0
    assert observations(client, keys, "user_2") == 1


def test_corrected_resend_replaces_invalid(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    scorer = BatchScorer(client, settings)
    add_entries(client, keys, [tx("tx_1", amount="$99")])
    scorer.score(read_all(client, keys))
    add_entries(client, keys, [tx("tx_1", amount="99")])

    result = scorer.score(read_all(client, keys))

    fields = tx_hash(client, keys, "tx_1")
    assert result.statuses == {"scored": 1}
    assert fields["outcome"] == "approved"
    assert fields["status"] == "Approved"
    assert "detail" not in fields
    assert "duplicates" not in fields


def test_invalid_resend_after_outcome_is_duplicate(client, keys, settings):
    add_history(client, keys, "user_1", USER_1_AMOUNTS)
    scorer = BatchScorer(client, settings)
    add_entries(client, keys, [tx("tx_1", amount="99")])
    scorer.score(read_all(client, keys))
    add_entries(client, keys, [tx("tx_1", amount="$99")])

    result = scorer.score(read_all(client, keys))

    assert result.statuses == {"duplicate": 1}
    assert tx_hash(client, keys, "tx_1")["outcome"] == "approved"


def test_queues_carry_key_prefix():
    keys = Keys(prefix="riskscore-replay-1", stream="s", consumer_group="g")
    assert keys.score_queue == "riskscore-replay-1.score"
    assert keys.drain_queue == "riskscore-replay-1.drain"
    assert keys.maintenance_queue == "riskscore-replay-1.maintenance"
