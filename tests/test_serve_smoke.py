"""The service answers a charge as the CLI would, on both engines (the serve tests' base)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.serve_server import running


def test_a_charge_over_http_is_the_charge_path_s(funded: Any, db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as server, server.client() as http:
        first = http.post("/v1/charge", json={"user": "alice", "to": "+36301234567",
                                              "text": "hi", "id": "m-1"})
        again = http.post("/v1/charge", json={"user": "alice", "to": "+36301234567",
                                              "text": "hi", "id": "m-1"})
        balance = http.get("/v1/users/alice/balance").json()
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "charged"
    assert Decimal(first.text.split('"balance":')[1].split(",")[0]) == Decimal("99.95")
    assert again.json()["replayed"] is True
    assert Decimal(str(balance["balance"])) == Decimal("99.95")
