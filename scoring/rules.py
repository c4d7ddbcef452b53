"""The scoring rules, as pure functions of a transaction and the data read for it.

Decisions match the notebook prototype: the IP rule votes 1 when the IP is in the blocklist, the
amount rule votes 1 when amount >= multiplier x quantile of the user's amounts, and a transaction
is approved when the votes sum to 0. Beyond the prototype, a user with too little history never
gets a vote from a NaN quantile: the cold-start policy decides instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scoring.settings import ColdStartPolicy


class Rule:
    """Reasons recorded in a transaction's hash when a rule fires or abstains."""

    IP_BLOCKLISTED = "ip_blocklisted"
    IP_ALLOWLISTED = "ip_allowlisted"
    AMOUNT_ABOVE_THRESHOLD = "amount_above_threshold"
    INSUFFICIENT_HISTORY = "insufficient_history"
    IP_UNKNOWN = "ip_unknown"


@dataclass(frozen=True)
class RuleParams:
    """Parameters of the amount rule."""

    quantile: float
    multiplier: float
    min_history: int
    cold_start_policy: ColdStartPolicy


@dataclass(frozen=True)
class History:
    """A user's digest as read for one batch: observation count and the quantile (None when unusable)."""

    count: int
    quantile: float | None


@dataclass(frozen=True)
class Verdict:
    """The outcome of scoring one transaction."""

    ip_risk: int
    amount_risk: int
    reasons: tuple[str, ...]
    quantile: float | None
    threshold: float | None

    @property
    def risk_score(self) -> int:
        return self.ip_risk + self.amount_risk

    @property
    def approved(self) -> bool:
        return self.risk_score == 0


def amount_rule(amount: float, history: History, params: RuleParams) -> tuple[int, str | None, float | None]:
    """Return (vote, reason, threshold) of the amount rule.

    The rule abstains or flags, by the cold-start policy, when the digest has fewer than
    `min_history` observations or its quantile is not a finite number (RedisBloom 2.8.2 returns
    `nan` for a digest with one observation or none).
    """
    quantile = history.quantile
    if history.count < params.min_history or quantile is None or not math.isfinite(quantile):
        vote = 1 if params.cold_start_policy is ColdStartPolicy.FLAG else 0
        return vote, Rule.INSUFFICIENT_HISTORY, None
    threshold = params.multiplier * quantile
    if not math.isfinite(threshold):
        # multiplier x quantile overflowed: an infinite threshold would approve every amount.
        vote = 1 if params.cold_start_policy is ColdStartPolicy.FLAG else 0
        return vote, Rule.INSUFFICIENT_HISTORY, None
    if amount >= threshold:
        return 1, Rule.AMOUNT_ABOVE_THRESHOLD, threshold
    return 0, None, threshold


def score(
    amount: float,
    ip: str | None,
    ip_listed: bool,
    history: History,
    params: RuleParams,
    *,
    ip_allowlisted: bool = False,
) -> Verdict:
    """Apply both rules to one transaction. An allowlisted IP never votes, even when also listed."""
    reasons: list[str] = []
    if ip is None:
        ip_risk = 0
        reasons.append(Rule.IP_UNKNOWN)
    elif ip_allowlisted:
        ip_risk = 0
        reasons.append(Rule.IP_ALLOWLISTED)
    else:
        ip_risk = 1 if ip_listed else 0
        if ip_risk:
            reasons.append(Rule.IP_BLOCKLISTED)

    amount_risk, reason, threshold = amount_rule(amount, history, params)
    if reason:
        reasons.append(reason)

    usable_quantile = history.quantile if threshold is not None else None
    return Verdict(ip_risk, amount_risk, tuple(reasons), usable_quantile, threshold)
