"""Unit tests of the scoring rules (no Redis)."""

import math

import pytest

from scoring.rules import History, Rule, RuleParams, amount_rule, score
from scoring.settings import ColdStartPolicy

PARAMS = RuleParams(quantile=0.8, multiplier=2.0, min_history=5, cold_start_policy=ColdStartPolicy.ABSTAIN)
RICH = History(count=10, quantile=5600.0)


def test_amount_at_threshold_is_flagged():
    vote, reason, threshold = amount_rule(11200.0, RICH, PARAMS)
    assert threshold == 11200.0
    assert vote == 1
    assert reason == Rule.AMOUNT_ABOVE_THRESHOLD


def test_amount_below_threshold_passes():
    vote, reason, threshold = amount_rule(11199.99, RICH, PARAMS)
    assert vote == 0
    assert reason is None
    assert threshold == 11200.0


@pytest.mark.parametrize("history", [History(0, None), History(1, None), History(4, 100.0), History(10, math.nan), History(10, math.inf)])
def test_cold_start_abstains_by_default(history):
    vote, reason, threshold = amount_rule(1e9, history, PARAMS)
    assert vote == 0
    assert reason == Rule.INSUFFICIENT_HISTORY
    assert threshold is None


def test_cold_start_flag_policy_flags():
    params = RuleParams(0.8, 2.0, 5, ColdStartPolicy.FLAG)
    vote, reason, _ = amount_rule(1.0, History(1, math.nan), params)
    assert vote == 1
    assert reason == Rule.INSUFFICIENT_HISTORY


def test_min_history_boundary_votes():
    vote, reason, _ = amount_rule(1000.0, History(5, 100.0), PARAMS)
    assert vote == 1
    assert reason == Rule.AMOUNT_ABOVE_THRESHOLD


def test_prototype_scenario_decisions():
    user_2 = History(10, 5600.0)
    tx_1002 = score(3000.0, "88.214.48.17", True, user_2, PARAMS)
    tx_1004 = score(70000.0, "178.3.27.192", False, user_2, PARAMS)
    tx_1001 = score(500.0, "10.2.4.255", False, History(10, 560.0), PARAMS)
    assert (tx_1002.risk_score, tx_1002.reasons) == (1, (Rule.IP_BLOCKLISTED,))
    assert (tx_1004.risk_score, tx_1004.reasons) == (1, (Rule.AMOUNT_ABOVE_THRESHOLD,))
    assert tx_1004.threshold == 11200.0
    assert tx_1001.approved


def test_both_rules_sum():
    verdict = score(1e6, "1.2.3.4", True, RICH, PARAMS)
    assert verdict.risk_score == 2
    assert verdict.reasons == (Rule.IP_BLOCKLISTED, Rule.AMOUNT_ABOVE_THRESHOLD)


def test_unknown_ip_abstains():
    verdict = score(10.0, None, False, RICH, PARAMS)
    assert verdict.ip_risk == 0
    assert Rule.IP_UNKNOWN in verdict.reasons
    assert verdict.approved


def test_nan_quantile_never_recorded():
    verdict = score(10.0, "1.2.3.4", False, History(10, None), PARAMS)
    assert verdict.quantile is None
    assert verdict.threshold is None


def test_overflowing_threshold_abstains():
    vote, reason, threshold = amount_rule(1.7e308, History(10, 1e308), PARAMS)
    assert vote == 0
    assert reason == Rule.INSUFFICIENT_HISTORY
    assert threshold is None
