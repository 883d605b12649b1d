"""The pure rules of ``holds``: ttl text, the delivery report mappings, the settings."""

from __future__ import annotations

import pytest

from smscredits import holds
from smscredits.errors import BadInput


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("48h", 172_800),
                                               ("7d", 604_800), (" 1s ", 1), ("366d", 31_622_400)])
def test_a_ttl_is_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert holds.parse_ttl(text) == seconds * 1_000_000


@pytest.mark.parametrize("text", ["0s", "367d", "1.5h", "-1h", "48", "h", "1w", "", "1e3s"])
def test_a_bad_ttl_is_refused_by_name(text: str) -> None:
    with pytest.raises(BadInput, match="bad ttl") as e:
        holds.parse_ttl(text)
    assert e.value.code == "bad_ttl"


def test_an_age_may_be_zero() -> None:
    assert holds.parse_age("0s") == 0
    assert holds.parse_age("2m") == 120_000_000


@pytest.mark.parametrize(("source", "status", "action"), [
    ("kannel", "1", "settle"), ("kannel", "2", "void"), ("kannel", "16", "void"),
    ("kannel", "4", "ignore"), ("kannel", "8", "ignore"), ("kannel", "9", "settle"),
    ("kannel", "24", "void"), ("kannel", "12", "ignore"), ("kannel", "08", "ignore"),
    ("jasmin", "DELIVRD", "settle"), ("jasmin", "delivrd", "settle"),
    ("jasmin", "UNDELIV", "void"), ("jasmin", "ESME_RINVDSTADR", "void"),
    ("jasmin", "ESME_ROK", "ignore"), ("jasmin", "ENROUTE", "ignore"),
    ("smpp", "EXPIRED", "void"), ("smpp", "ACCEPTD", "settle"), ("smpp", "UNKNOWN", "ignore"),
    ("smpp", "REJECTD", "void"), ("smpp", "DELETED", "void"),
])
def test_each_gateways_status_has_a_default_action(source: str, status: str,
                                                   action: str) -> None:
    assert holds.dlr_action(holds.Rules(), source, status) == action


@pytest.mark.parametrize(("source", "status"), [("kannel", "32"), ("kannel", "0"),
                                                ("smpp", "ESME_RSYSERR"), ("jasmin", "BOGUS"),
                                                ("smpp", "")])
def test_an_unknown_status_is_refused_naming_it(source: str, status: str) -> None:
    with pytest.raises(BadInput, match=f"unknown {source} delivery status") as e:
        holds.dlr_action(holds.Rules(), source, status)
    assert e.value.code == "unknown_status"


def test_an_unknown_source_is_refused() -> None:
    with pytest.raises(BadInput, match="report source"):
        holds.dlr_action(holds.Rules(), "nowsms", "DELIVRD")


def test_a_mapping_set_in_the_config_file_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from smscredits import config

    config.write_setting("dlr.jasmin.EXPIRED", "settle")
    config.write_setting("dlr.kannel.04", "void")  # keyed as Kannel sends it: a number
    config.write_setting("hold_ttl", "90s")
    monkeypatch.setenv("SMSCREDITS_HOLD_EXPIRY", "void")
    rules = holds.rules_from_config()
    assert (rules.ttl_us, rules.expiry, rules.void_settled) == (90_000_000, "void", "refund")
    assert holds.dlr_action(rules, "jasmin", "expired") == "settle"
    assert holds.dlr_action(rules, "kannel", "4") == "void"
    assert holds.dlr_action(rules, "smpp", "EXPIRED") == "void"  # other sources keep theirs


def test_a_bad_setting_is_named_when_it_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSCREDITS_HOLD_EXPIRY", "later")
    with pytest.raises(BadInput, match="setting hold_expiry: bad hold_expiry 'later'"):
        holds.rules_from_config()
