"""The gateway recipes in ``contrib/`` do what their READMEs say, against a real service.

- Jasmin: ``contrib/jasmin/interceptor.py`` run as interceptord runs it (compiled, then
  evaluated with the globals Jasmin gives, in both of the ways Jasmin has evaluated scripts,
  and its outcome read back by Jasmin's rules) on a faithful ``RoutableSubmitSm``; then the
  delivery reports Jasmin sends to the README's ``dlr-url``.
- Kannel: the reports Kannel sends to the README's ``dlr-url`` once it has decoded it and
  filled in ``%d``.
- The systemd unit, the nginx and Kannel configs: checked statically (and by
  ``systemd-analyze verify`` where it exists).
"""

from __future__ import annotations

import ast
import itertools
import pickle
import re
import shutil
import socket
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlencode

import httpx
import pytest

from tests.serve_server import ADMIN_TOKEN, GATEWAY_TOKEN, Server, free_port, running

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
INTERCEPTOR = CONTRIB / "jasmin" / "interceptor.py"
TOKENS = {"gateway": GATEWAY_TOKEN, "admin": ADMIN_TOKEN}
STYLES = ["globals", "locals"]  # eval(node, glo) (Jasmin after 0.11.0); eval(node, {}, glo)

# -- a RoutableSubmitSm as Jasmin's HTTP API and SMPP server build it ----------------------


class RegisteredDelivery:
    """smpp.pdu's RegisteredDelivery, as far as the script may see it."""

    def __init__(self, receipt: str) -> None:
        self.receipt = receipt


class DataCoding:
    """smpp.pdu's DataCoding: what an SMPP server submit carries instead of an int."""

    def __init__(self, scheme: str = "GSM_MESSAGE_CLASS", value: int = 0) -> None:
        self.scheme, self.value = scheme, value


SUBMIT_SM_PARAMS = (
    "service_type", "source_addr_ton", "source_addr_npi", "source_addr", "dest_addr_ton",
    "dest_addr_npi", "destination_addr", "esm_class", "protocol_id", "priority_flag",
    "schedule_delivery_time", "validity_period", "registered_delivery",
    "replace_if_present_flag", "data_coding", "sm_default_msg_id", "short_message")


class SubmitSM:
    """smpp.pdu's SubmitSM: every mandatory param present (None unless given), str values
    made bytes; ``nextPdu`` only on a part that has a next one."""

    def __init__(self, **params: Any) -> None:
        self.params = {k: v.encode() if isinstance(v, str) else v for k, v in params.items()}
        for name in SUBMIT_SM_PARAMS:
            self.params.setdefault(name, None)


class User:
    """jasmin.routing.jasminApi.User, as far as the script may see it."""

    def __init__(self, uid: str, username: str) -> None:
        self.uid, self.username = uid, username


class RoutableSubmitSm:
    """jasmin.routing.Routables.RoutableSubmitSm: the pdu (part 1 of a chain), the user,
    tags kept as str."""

    def __init__(self, pdu: SubmitSM, user: User) -> None:
        self.pdu, self.user = pdu, user
        self._tags: list[str] = []

    def addTag(self, tag: Any) -> None:  # Jasmin's name
        self._tags.append(str(tag))

    def getTags(self) -> list[str]:  # Jasmin's name
        return self._tags


def http_send(username: str, to: str, text: str, *, tags: str | None = None,
              dlr: bool = True, rate: bool = False) -> RoutableSubmitSm:
    """The routable of an HTTP ``/send`` (or ``/rate``): the text split as Jasmin splits a
    GSM 7-bit message (153 characters a part behind a 6-byte UDH), ``registered_delivery`` set
    on the last part (never by ``/rate``), the tags added as ``/send`` adds them."""
    content = text.encode("ascii")
    if len(content) <= 160:
        chunks = [content]
    else:
        chunks = [content[i:i + 153] for i in range(0, len(content), 153)]
    pdus = []
    for seq, chunk in enumerate(chunks, 1):
        udh = bytes([5, 0, 3, 42, len(chunks), seq]) if len(chunks) > 1 else b""
        pdus.append(SubmitSM(destination_addr=to.encode(), source_addr=b"SHOP",
                             short_message=udh + chunk, data_coding=0))
    for pdu, after in itertools.pairwise(pdus):
        pdu.nextPdu = after  # type: ignore[attr-defined]
    if not rate:
        pdus[-1].params["registered_delivery"] = RegisteredDelivery(
            "SMSC_DELIVERY_RECEIPT_REQUESTED" if dlr else "NO_SMSC_DELIVERY_RECEIPT_REQUESTED")
    routable = RoutableSubmitSm(pdus[0], User("u" + username, username))
    for tag in (tags or "").split(","):
        if tag:
            routable.addTag(tag)
    return routable


def smpp_submit(username: str, to: bytes, text: bytes) -> RoutableSubmitSm:
    """The routable of a submit_sm to Jasmin's SMPP server: decoded by smpp.pdu (bytes,
    a DataCoding object), one part, no tags."""
    pdu = SubmitSM(destination_addr=to, source_addr=b"SHOP", short_message=text,
                   data_coding=DataCoding(),
                   registered_delivery=RegisteredDelivery("SMSC_DELIVERY_RECEIPT_REQUESTED"))
    return RoutableSubmitSm(pdu, User("u" + username, username))


# -- interceptord ---------------------------------------------------------------------------


def script(**settings: Any) -> str:
    """interceptor.py with some settings edited, as an operator edits them."""
    code = INTERCEPTOR.read_text()
    for name, value in settings.items():
        code, found = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert found == 1, name
    return code


def run_script(code: str, routable: RoutableSubmitSm, style: str
               ) -> tuple[dict[str, Any], Any]:
    """Run ``code`` as interceptord's ``perspective_run_script`` does; the globals after it and
    what it returns to jasmind: the pickled routable (accepted), a dict of statuses
    (refused), or False (the script raised)."""
    node = compile(code, "", "exec")
    glo: dict[str, Any] = {"routable": routable, "smpp_status": None, "http_status": None,
                           "extra": {}}
    try:
        if style == "globals":
            eval(node, glo)
        else:
            eval(node, {}, glo)
    except Exception:
        return glo, False
    if glo["smpp_status"] is None and glo["http_status"] is None:
        return glo, pickle.dumps(glo["routable"])
    if not isinstance(glo["smpp_status"], int):
        glo["smpp_status"] = 255
    elif not isinstance(glo["http_status"], int):
        glo["http_status"] = 520
    return glo, {k: glo[k] for k in ("http_status", "smpp_status", "extra")}


def send_answer(returned: Any) -> int:
    """The HTTP status Jasmin's ``/send`` answers for the script's return (before routing)."""
    if isinstance(returned, dict) and returned["http_status"] != 200:
        return int(returned["http_status"])
    return 200 if isinstance(returned, bytes) else 400


def account(http: httpx.Client, user: str) -> tuple[Decimal, Decimal]:
    doc = http.get(f"/v1/users/{user}/balance").json()
    return Decimal(str(doc["balance"])), Decimal(str(doc["held"]))


def readme_url(readme: Path, name: str) -> str:
    """The ``name=`` URL of a README's example request, as the gateway sends it on."""
    found = re.findall(rf"{name}=(http[^'\s]+)", readme.read_text())
    assert found, f"no {name}= example in {readme}"
    return found[0]


def jasmin_report(server: Server, ref: str, fields: dict[str, str]) -> httpx.Response:
    """A report as Jasmin's DLRThrower POSTs it to the README's dlr-url (query kept, form
    body, its headers)."""
    url = readme_url(CONTRIB / "jasmin" / "README.md", "dlr-url")
    url = (url.replace("http://127.0.0.1:8787", server.url).replace("=REF", "=" + ref)
           .replace("=TOKEN", "=" + GATEWAY_TOKEN))
    return httpx.post(url, content=urlencode(fields), timeout=10, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "text/plain",
        "User-Agent": "Jasmin gateway/1.0 DLRThrower"})


def level1(status: str = "ESME_ROK") -> dict[str, str]:
    return {"id": str(uuid.uuid4()), "level": "1", "message_status": status,
            "connector": "smppc01"}


def level2(jasmin_id: str, status: str) -> dict[str, str]:
    return {"id": jasmin_id, "level": "2", "message_status": status, "connector": "1F2A3B",
            "id_smsc": "1F2A3B", "sub": "001", "dlvrd": "001", "subdate": "2604261121",
            "donedate": "2604261122", "err": "000", "text": "Hello world"}


LONG = "x" * 400  # three parts of 153
TO = "36301234567"


# -- Jasmin ---------------------------------------------------------------------------------


def test_the_interceptor_survives_both_of_jasmins_evaluations() -> None:
    """No def, lambda, class or comprehension: each is a scope of its own, which cannot see
    the script's names when Jasmin evaluates it with them as locals."""
    tree = ast.parse(INTERCEPTOR.read_text())
    scoped = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
              ast.SetComp, ast.DictComp, ast.GeneratorExp)
    assert not [type(n).__name__ for n in ast.walk(tree) if isinstance(n, scoped)]
    assert "http_status = 200" not in INTERCEPTOR.read_text()


@pytest.mark.parametrize("style", STYLES)
def test_jasmin_holds_at_submit_and_settles_on_the_report(
        funded: Any, db_url: str, tmp_path: Path, style: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert funded("user", "add", "carol").exit_code == 0
    assert funded("power", "create", "carol", "credits", "--initial", "0.1").exit_code == 0
    monkeypatch.setenv("SMSCREDITS_SERVE_TOKEN", GATEWAY_TOKEN)  # TOKEN's source
    with running(db_url, tmp_path, tokens=TOKENS) as server, \
            server.client(GATEWAY_TOKEN) as http:
        code = script(SERVICE_URL=server.url)

        # A tagged long message: its three parts held under the sender's reference.
        ref = str(uuid.uuid4())
        routable = http_send("alice", TO, LONG, tags=f"urgent,sc-{ref}")
        glo, returned = run_script(code, routable, style)
        assert (glo["http_status"], glo["smpp_status"]) == (None, None)
        assert isinstance(returned, bytes) and send_answer(returned) == 200
        assert pickle.loads(returned).getTags() == ["urgent", f"sc-{ref}"]
        assert account(http, "alice") == (Decimal("100"), Decimal("0.15"))

        # Too few credits: refused with 402 / ESME_RTHROTTLED, nothing held.
        glo, returned = run_script(code, http_send("carol", TO, LONG, tags=f"sc-{uuid.uuid4()}"),
                                   style)
        assert (glo["http_status"], glo["smpp_status"]) == (402, 88)
        assert returned == {"http_status": 402, "smpp_status": 88, "extra": {}}
        assert send_answer(returned) == 402
        assert account(http, "carol") == (Decimal("0.1"), Decimal("0"))

        # The same /send again (same reference): held once. The reference reused for another
        # user or cost: refused (409 / ESME_RSUBMITFAIL).
        glo, returned = run_script(code, http_send("alice", TO, LONG, tags=f"sc-{ref}"), style)
        assert isinstance(returned, bytes)
        assert account(http, "alice") == (Decimal("100"), Decimal("0.15"))
        glo, _ = run_script(code, http_send("bob", TO, LONG, tags=f"sc-{ref}"), style)
        assert (glo["http_status"], glo["smpp_status"]) == (409, 69)
        glo, _ = run_script(code, http_send("alice", TO, "hi", tags=f"sc-{ref}"), style)
        assert (glo["http_status"], glo["smpp_status"]) == (409, 69)

        # A destination that is no number: 400 / ESME_RINVDSTADR.
        glo, _ = run_script(code, http_send("alice", "SHOP", "hi", tags=f"sc-{uuid.uuid4()}"),
                            style)
        assert (glo["http_status"], glo["smpp_status"]) == (400, 11)

        # Not known to smscredits: refused (403 / ESME_RSUBMITFAIL).
        glo, _ = run_script(code, http_send("dave", TO, "hi", tags=f"sc-{uuid.uuid4()}"), style)
        assert (glo["http_status"], glo["smpp_status"]) == (403, 69)

        # No sc- tag: charged at once, three parts; an SMPP client's submit: one part.
        glo, returned = run_script(code, http_send("bob", "+" + TO, LONG), style)
        assert isinstance(returned, bytes) and glo["smpp_status"] is None
        assert account(http, "bob") == (Decimal("9.85"), Decimal("0"))
        glo, returned = run_script(code, smpp_submit("bob", TO.encode(), b"hi"), style)
        assert isinstance(returned, bytes) and glo["smpp_status"] is None
        assert account(http, "bob") == (Decimal("9.80"), Decimal("0"))

        # A /rate query goes through the script too: neither held nor charged.
        glo, returned = run_script(code, http_send("bob", TO, LONG, rate=True), style)
        assert isinstance(returned, bytes)
        assert account(http, "bob") == (Decimal("9.80"), Decimal("0"))

        # The reports of the held message: level 1 (the SMSC took it) changes nothing, level 2
        # DELIVRD settles it; Jasmin's retry of it is acknowledged and changes nothing.
        jasmin_id = str(uuid.uuid4())
        first = jasmin_report(server, ref, {**level1(), "id": jasmin_id})
        assert (first.status_code, first.text) == (200, "ACK/Jasmin")
        assert account(http, "alice") == (Decimal("100"), Decimal("0.15"))
        for _ in range(2):
            done = jasmin_report(server, ref, level2(jasmin_id, "DELIVRD"))
            assert (done.status_code, done.text) == (200, "ACK/Jasmin")
            assert account(http, "alice") == (Decimal("99.85"), Decimal("0"))

        # Refused by the SMSC (a level-1 ESME_R* error): the hold (of a ttl of its own) is
        # voided.
        refused = str(uuid.uuid4())
        glo, _ = run_script(script(SERVICE_URL=server.url, HOLD_TTL="26h"),
                            http_send("alice", TO, "short", tags=f"sc-{refused}"), style)
        assert glo["smpp_status"] is None
        assert account(http, "alice") == (Decimal("99.85"), Decimal("0.05"))
        answer = jasmin_report(server, refused, level1("ESME_RINVDSTADR"))
        assert answer.text == "ACK/Jasmin"
        assert account(http, "alice") == (Decimal("99.85"), Decimal("0"))


@pytest.mark.parametrize("style", STYLES)
def test_jasmin_refuses_quickly_when_the_service_is_down(style: str) -> None:
    routable = http_send("alice", TO, LONG, tags="sc-m1")
    closed = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    glo, returned = run_script(script(SERVICE_URL=closed), routable, style)
    assert (glo["http_status"], glo["smpp_status"]) == (503, 8)  # ESME_RSYSERR
    assert send_answer(returned) == 503
    assert time.monotonic() - began < 2

    # Open but silent: refused after TIMEOUT_S, not after the OS's timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        began = time.monotonic()
        glo, _ = run_script(script(SERVICE_URL=url, TIMEOUT_S=0.3), routable, style)
        assert (glo["http_status"], glo["smpp_status"]) == (503, 8)
        assert time.monotonic() - began < 2

        # FAIL_OPEN: let through, uncharged.
        glo, returned = run_script(script(SERVICE_URL=url, TIMEOUT_S=0.3, FAIL_OPEN=True),
                                   routable, style)
        assert (glo["http_status"], glo["smpp_status"]) == (None, None)
        assert isinstance(returned, bytes)


@pytest.mark.parametrize("style", STYLES)
def test_jasmin_refuses_a_destination_without_price_and_a_refused_token(
        cli: Any, db_url: str, tmp_path: Path, style: str) -> None:
    assert cli("user", "add", "erin").exit_code == 0  # no price set at all
    assert cli("power", "create", "erin", "credits", "--initial", "10").exit_code == 0
    with running(db_url, tmp_path, tokens=TOKENS) as server:
        routable = http_send("erin", TO, "hi", tags="sc-m1")
        glo, returned = run_script(script(SERVICE_URL=server.url, TOKEN=GATEWAY_TOKEN),
                                   routable, style)
        assert (glo["http_status"], glo["smpp_status"]) == (412, 11)  # as Jasmin's no route
        assert send_answer(returned) == 412
        # A wrong token is the service failing, not the message: 503 / ESME_RSYSERR.
        glo, _ = run_script(script(SERVICE_URL=server.url, TOKEN="wrong-token-" + "w" * 20),
                            routable, style)
        assert (glo["http_status"], glo["smpp_status"]) == (503, 8)


# -- Kannel ---------------------------------------------------------------------------------


def kannel_report(server: Server, msg_id: str, dlr_type: int) -> httpx.Response:
    """The report Kannel sends for the README's sendsms call: the ``dlr-url`` argument
    URL-decoded (smsbox's CGI parsing), its escape codes filled in (``%d``: this report's
    type), and fetched with a GET."""
    encoded = readme_url(CONTRIB / "kannel" / "README.md", "dlr-url").split("&")[0]
    url = unquote_plus(encoded)
    assert "%d" in url and "id=MSGID" in url
    url = (url.replace("%d", str(dlr_type)).replace("http://127.0.0.1:8787", server.url)
           .replace("=MSGID", "=" + msg_id).replace("=TOKEN", "=" + GATEWAY_TOKEN))
    return httpx.get(url, headers={"User-Agent": "Kannel/1.4.5"}, timeout=10)


def test_kannel_reports_settle_and_void_the_holds(funded: Any, db_url: str,
                                                  tmp_path: Path) -> None:
    with running(db_url, tmp_path, tokens=TOKENS) as server, \
            server.client(GATEWAY_TOKEN) as http:
        for msg_id in ("m-1001", "m-1002", "m-1003"):  # held before sendsms, as the README
            held = http.post("/v1/hold", json={"user": "alice", "to": "+" + TO,
                                               "text": "Hello world", "id": msg_id})
            assert held.status_code == 200 and held.json()["status"] == "held"
        assert account(http, "alice") == (Decimal("100"), Decimal("0.15"))

        delivered = kannel_report(server, "m-1001", 1)
        assert delivered.status_code == 200  # Kannel retries anything but 200/202
        assert account(http, "alice") == (Decimal("99.95"), Decimal("0.10"))
        rejected = kannel_report(server, "m-1002", 16)  # rejected by the SMSC
        assert rejected.status_code == 200
        assert account(http, "alice") == (Decimal("99.95"), Decimal("0.05"))
        assert kannel_report(server, "m-1001", 1).status_code == 200  # twice: no change
        # sendsms answered an error: the app voids the hold.
        voided = http.post("/v1/void", json={"id": "m-1003"})
        assert voided.json()["status"] == "voided"
        assert account(http, "alice") == (Decimal("99.95"), Decimal("0"))


# -- configs --------------------------------------------------------------------------------


def test_kannel_conf_and_readme_agree() -> None:
    readme = (CONTRIB / "kannel" / "README.md").read_text()
    conf = (CONTRIB / "kannel" / "kannel.conf").read_text()
    url = unquote_plus(readme_url(CONTRIB / "kannel" / "README.md", "dlr-url").split("&")[0])
    assert url == "http://127.0.0.1:8787/v1/dlr/kannel?id=MSGID&status=%d&token=TOKEN"
    assert "dlr-mask=19" in readme and url in readme
    assert "dlr-mask=19" in conf and url in conf
    groups = re.findall(r"^group\s*=\s*(\S+)", conf, flags=re.M)
    assert {"core", "smsc", "smsbox", "sendsms-user"} <= set(groups)
    assert re.search(r"^smsc-id\s*=", conf, flags=re.M)  # reports need one


NGINX = CONTRIB / "nginx" / "smscredits.conf"


def test_nginx_never_logs_a_query_string() -> None:
    conf = NGINX.read_text()
    lines = [line.split("#", 1)[0] for line in conf.splitlines()]
    text = "\n".join(lines)
    formats = re.findall(r"log_format\s+(\S+)([^;]*);", text)
    assert formats
    for _, body in formats:
        assert not re.search(r"\$(request|request_uri|args|query_string|arg_\w+)\b", body)
        assert "$uri" in body
    names = {name for name, _ in formats}
    for target in re.findall(r"access_log\s+([^;]*);", text):
        words = target.split()
        assert words == ["off"] or (len(words) >= 2 and words[1] in names), target
    assert re.search(r"client_max_body_size\s+4m\s*;", text)  # serve's --max-body default
    assert "proxy_pass http://smscredits" in text and "127.0.0.1:8787" in text


def empty_sqlite(tmp_path: Path) -> str:
    from smscredits.storage.engine import open_db
    from smscredits.storage.migrate import upgrade

    url = str(tmp_path / "credits.db")
    handle = open_db(url, check=False, actor="tester")
    upgrade(handle)
    handle.dispose()
    return url


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "nginx exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polling for a port to open, not waiting on a clock
    raise AssertionError("nginx did not listen")


def test_nginx_proxies_over_tls_and_logs_no_token(tmp_path: Path) -> None:
    """The conf as shipped (but its ports, certificate and log paths) in front of a serve:
    requests get through over TLS, and neither log holds the token of a report URL."""
    nginx, openssl = shutil.which("nginx"), shutil.which("openssl")
    if nginx is None or openssl is None:
        pytest.skip("nginx or openssl is not installed")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    plain, tls = free_port(), free_port()
    with running(empty_sqlite(tmp_path), tmp_path, tokens=TOKENS) as server:
        site = (NGINX.read_text()
                .replace("/etc/letsencrypt/live/credits.example.com/fullchain.pem",
                         str(tmp_path / "cert.pem"))
                .replace("/etc/letsencrypt/live/credits.example.com/privkey.pem",
                         str(tmp_path / "key.pem"))
                .replace("/var/log/nginx", str(tmp_path))
                .replace("127.0.0.1:8787", server.url.removeprefix("http://"))
                .replace("listen 443 ssl;", f"listen 127.0.0.1:{tls} ssl;")
                .replace("listen 80;", f"listen 127.0.0.1:{plain};"))
        site = re.sub(r"^\s*listen \[::\].*$", "", site, flags=re.M)
        (tmp_path / "site.conf").write_text(site)
        main = tmp_path / "nginx.conf"
        main.write_text(f"events {{}}\nhttp {{\n include {tmp_path / 'site.conf'};\n}}\n")
        command = [nginx, "-p", str(tmp_path), "-c", str(main), "-g",
                   f"daemon off; pid {tmp_path / 'nginx.pid'}; error_log stderr;"]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(tls, proc)
            with httpx.Client(base_url=f"https://127.0.0.1:{tls}", verify=False,
                              timeout=10) as http:
                health = http.get("/healthz")
                report = http.get(f"/v1/dlr/kannel?id=m-9&status=1&token={GATEWAY_TOKEN}")
                big = http.post("/v1/charge", content=b"[" + b" " * (5 * 1024 * 1024) + b"]",
                                headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
            moved = httpx.get(f"http://127.0.0.1:{plain}/v1/dlr/kannel?token={GATEWAY_TOKEN}")
        finally:
            proc.terminate()
            proc.wait(30)
    assert health.status_code == 200
    # Through to serve: unknown, answered 200 so that Kannel does not send it again.
    assert report.json()["reason"] == "unknown_message"
    assert big.status_code == 413  # stopped by nginx, as serve would
    assert moved.status_code == 308 and GATEWAY_TOKEN not in moved.headers["location"]
    log = (tmp_path / "smscredits.access.log").read_text()
    assert "GET /v1/dlr/kannel HTTP/1.1\" 200" in log
    assert GATEWAY_TOKEN not in log and "token" not in log
    assert GATEWAY_TOKEN not in server.log_text()


UNIT = CONTRIB / "systemd" / "smscredits-serve.service"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for directive in ("User=", "EnvironmentFile=", "Restart=on-failure", "KillSignal=SIGTERM",
                      "TimeoutStopSec=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "ReadWritePaths=", "PrivateTmp=yes"):
        assert re.search(rf"^{re.escape(directive)}", text, flags=re.M), directive
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # ExecStart names the installed binary, which verify requires: here, one that exists.
    exec_start = re.search(r"^ExecStart=(\S+)", text, flags=re.M)
    assert exec_start
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(exec_start.group(1), shutil.which("true") or "/bin/true"))
    done = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True,
                          text=True, timeout=60)
    about_it = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not about_it, done.stdout + done.stderr
