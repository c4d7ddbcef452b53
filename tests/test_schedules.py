"""Unit tests of schedule settings and the maintenance tasks' beat entries (no Celery processes)."""

from datetime import timedelta

import pytest
from celery.schedules import crontab

from scoring.errors import ConfigurationError
from scoring.settings import load_settings, parse_schedule
from tasks.schedules import CRONTAB_EXPIRES_S, maintenance_entry


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3600", 3600.0),
        (" 0.5 ", 0.5),
        ("off", None),
        ("OFF", None),
        ("", None),
        ("0 3 * * *", ("0", "3", "*", "*", "*")),
        ("*/15 * * * mon-fri", ("*/15", "*", "*", "*", "mon-fri")),
    ],
)
def test_parse_schedule(text, expected):
    assert parse_schedule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("soon", "expected seconds, a five-field crontab or off"),
        ("0", "seconds must be a positive number"),
        ("-5", "seconds must be a positive number"),
        ("inf", "seconds must be a positive number"),
        ("0 3 * *", "a crontab has five fields"),
        ("61 3 * * *", "invalid crontab"),
    ],
)
def test_parse_schedule_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_invalid_schedule_setting_names_variable():
    with pytest.raises(ConfigurationError, match="RISK_BLOCKLIST_REFRESH_SCHEDULE"):
        load_settings(blocklist_refresh_schedule="every hour")


def test_interval_entry_expires_after_one_interval():
    entry = maintenance_entry("riskscore.refresh_lists", "600")
    assert entry == {"task": "riskscore.refresh_lists", "schedule": timedelta(seconds=600), "options": {"expires": 600.0}}


def test_crontab_entry_expires():
    entry = maintenance_entry("riskscore.rebuild_histories", "30 3 * * *")
    assert entry is not None
    assert entry["schedule"] == crontab(minute="30", hour="3")
    assert entry["options"] == {"expires": CRONTAB_EXPIRES_S}


def test_off_has_no_entry():
    assert maintenance_entry("riskscore.refresh_lists", "off") is None
