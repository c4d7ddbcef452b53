"""The notebook prototype's scenario, run end to end through real worker processes."""

from __future__ import annotations

from collections.abc import Mapping

import redis

from scoring.keys import Keys

HISTORIES: Mapping[str, list[float]] = {
    "user_1": [500, 520, 530, 540, 560, 560, 560, 520, 200, 520],
    "user_2": [5000, 5200, 5300, 5400, 5600, 5600, 5600, 5200, 2000, 5200],
    "user_3": [700, 720, 730, 740, 760, 760, 760, 720, 700, 720],
}

BAD_IPS = [
    "193.176.23.7", "212.18.104.18", "213.55.85.202", "27.254.235.3", "34.66.72.251",
    "45.148.10.240", "45.148.10.79", "51.254.101.166", "59.12.160.91", "80.242.208.68",
    "88.214.48.16", "88.214.48.17", "88.214.48.18", "91.205.219.185",
]  # fmt: skip

BLOOM_ERROR_RATE = 0.01
BLOOM_CAPACITY = 1000

# The prototype wrote each transaction's hash before adding its stream entry. The stream's amount
# for tx_1002 (3000) differs from its hash (4500): the stream entry is what gets scored.
INITIAL_HASHES = [
    {"tx_id": "tx_1001", "user_id": "user_1", "amount": "500", "status": "pending"},
    {"tx_id": "tx_1002", "user_id": "user_2", "amount": "4500", "status": "pending"},
    {"tx_id": "tx_1003", "user_id": "user_3", "amount": "700", "status": "pending"},
    {"tx_id": "tx_1004", "user_id": "user_2", "amount": "70000", "status": "pending"},
]
STREAM_ENTRIES = [
    {"tx_id": "tx_1001", "user_id": "user_1", "amount": "500", "ip": "10.2.4.255"},
    {"tx_id": "tx_1002", "user_id": "user_2", "amount": "3000", "ip": "88.214.48.17"},
    {"tx_id": "tx_1003", "user_id": "user_3", "amount": "700", "ip": "178.3.27.192"},
    {"tx_id": "tx_1004", "user_id": "user_2", "amount": "70000", "ip": "178.3.27.192"},
]
EXPECTED = {
    "tx_1001": ("Approved", None),
    "tx_1002": ("pending", "1"),
    "tx_1003": ("Approved", None),
    "tx_1004": ("pending", "1"),
}


def seed(client: redis.Redis, keys: Keys, compression: int) -> None:
    """Write the scenario's histories, blocklist, hashes and stream entries, replacing old ones."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.blocklist, keys.stream, keys.dead_letter)
    pipe.delete(*(keys.history(user) for user in HISTORIES))
    pipe.delete(*(keys.transaction(h["tx_id"]) for h in INITIAL_HASHES))
    pipe.execute_command("BF.RESERVE", keys.blocklist, BLOOM_ERROR_RATE, BLOOM_CAPACITY)
    pipe.execute_command("BF.MADD", keys.blocklist, *BAD_IPS)
    for user, amounts in HISTORIES.items():
        pipe.execute_command("TDIGEST.CREATE", keys.history(user), "COMPRESSION", compression)
        pipe.execute_command("TDIGEST.ADD", keys.history(user), *amounts)
    for fields in INITIAL_HASHES:
        pipe.hset(keys.transaction(fields["tx_id"]), mapping=fields)
    pipe.execute()
    pipe = client.pipeline(transaction=False)
    for fields in STREAM_ENTRIES:
        pipe.xadd(keys.stream, fields)
    pipe.execute()


def read_outcomes(client: redis.Redis, keys: Keys) -> dict[str, dict[str, str]]:
    """Return the scenario's transaction hashes, decoded."""
    outcomes = {}
    for fields in INITIAL_HASHES:
        raw = client.hgetall(keys.transaction(fields["tx_id"]))
        outcomes[fields["tx_id"]] = {k.decode(): v.decode() for k, v in raw.items()}
    return outcomes


def all_scored(client: redis.Redis, keys: Keys) -> bool:
    """Return True when every scenario transaction has an outcome."""
    pipe = client.pipeline(transaction=False)
    for fields in INITIAL_HASHES:
        pipe.hexists(keys.transaction(fields["tx_id"]), "outcome")
    return all(pipe.execute())


def matches_expected(outcomes: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Return a line for each transaction whose status or risk score differs from the prototype."""
    problems = []
    for tx_id, (status, risk_score) in EXPECTED.items():
        got = outcomes.get(tx_id, {})
        if got.get("status") != status or (risk_score is not None and got.get("risk_score") != risk_score):
            problems.append(
                f"{tx_id}: expected status={status} risk_score={risk_score}, "
                f"got status={got.get('status')} risk_score={got.get('risk_score')}"
            )
    return problems
