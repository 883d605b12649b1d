"""The HTTP API of ``smscredits serve``: a Starlette app over the charging core.

Every message a request carries goes through ``GroupCommit`` (``group``), which charges the
messages of concurrent requests in one transaction by the path of ``charge --file``: the same
results, reasons and replays (a retried request with the same message id gets its first
result). A request body is one JSON object (one message: its result, with an HTTP status by
its outcome) or an array of them (``{"results": [...]}``, 200, one result per item, in order).
Errors are ``{"error": {"code", "message"}}``; a message refused by the charge path answers
with its result beside the error. ``ERRORS`` below maps each code to its HTTP status.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from smscredits.charging import Charger, ChargeResult
from smscredits.charging.model import EXIT_FOR, ChargeRequest, MessageOp
from smscredits.charging.stream import quick_request, request_of
from smscredits.errors import BadInput, DatabaseError, Exit, SmsCreditsError
from smscredits.render import result_doc, result_json, to_json
from smscredits.serve import dlr
from smscredits.serve.auth import ADMIN, GATEWAY, Tokens, load_tokens
from smscredits.serve.group import GroupCommit
from smscredits.serve.metrics import Metrics

log = logging.getLogger("smscredits.serve")
access_log = logging.getLogger("smscredits.access")

# The HTTP status of each outcome: a message's by its exit code, the API's own by code.
STATUS_FOR_EXIT = {Exit.USAGE: 400, Exit.NOT_FOUND: 404, Exit.INSUFFICIENT: 402,
                   Exit.LIMIT: 402, Exit.CONFLICT: 409, Exit.DATABASE: 503,
                   Exit.FAILURE: 500}
ERRORS = {"bad_json": 400, "bad_input": 400, "unauthorized": 401, "forbidden": 403,
          "no_route": 404, "method_not_allowed": 405, "too_large": 413,
          "database_unavailable": 503, "internal": 500}
MAX_BODY = 4 * 1024 * 1024  # bytes: an array of 10 000 long messages
MAX_ITEMS = 10_000
SETTINGS_ENV = "SMSCREDITS_SERVE_SETTINGS"  # how ``serve --workers`` passes them on


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None,
                 result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or ERRORS.get(code, 400)
        self.result = result


@dataclass(frozen=True)
class Settings:
    """What ``serve`` was told: the database, the tokens file, the limits of a request."""

    db: str | None = None
    actor: str | None = None
    tokens_file: Path | None = None
    max_body: int = MAX_BODY
    max_items: int = MAX_ITEMS

    def to_json(self) -> str:
        return to_json({**self.__dict__, "tokens_file": None if self.tokens_file is None
                        else str(self.tokens_file)})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = orjson.loads(text)
        path = data.pop("tokens_file")
        return cls(**data, tokens_file=None if path is None else Path(path))


class Service:
    """One app's open database, group commit, tokens and metrics."""

    def __init__(self, settings: Settings) -> None:
        from smscredits.storage.engine import open_db

        self.settings = settings
        self.tokens: Tokens = load_tokens(settings.tokens_file)
        self.metrics = Metrics()
        self.db = open_db(settings.db, actor=settings.actor, create=False)
        self.group = GroupCommit(Charger(self.db), observe=self.metrics.batch)

    async def close(self) -> None:
        await self.group.close()
        self.db.dispose()


# -- requests -------------------------------------------------------------------------------


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _authorize(request: Request, role: str, *, query_token: bool = False) -> Service:
    """The service, if the request's token has ``role``."""
    service = _service(request)
    token = _bearer(request.headers.get("authorization"))
    if token is None and query_token:  # a gateway's report URL cannot carry a header
        token = request.query_params.get("token")
    _check_role(service, token, role)
    return service


def _bearer(header: str | None) -> str | None:
    return header[7:].strip() if header is not None and header[:7].lower() == "bearer " \
        else None


def _check_role(service: Service, token: str | None, role: str) -> str:
    """The role of the request's token; refused if it lacks ``role`` (an admin has every
    role)."""
    granted = service.tokens.role_of(token)
    if granted is None:
        raise ApiError("unauthorized", "a valid bearer token is required")
    if role == ADMIN and granted != ADMIN:
        raise ApiError("forbidden", "this token's role (gateway) may not do this")
    return granted


async def _body(request: Request, limit: int) -> Any:
    return _loads(await _read(request.receive, request.headers.get("content-length"), limit))


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError("bad_json", f"bad JSON: {e}") from None


async def _read(receive: Receive, length: str | None, limit: int) -> bytes:
    """A request's body, refused (413) beyond ``limit`` bytes, said or sent."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError("too_large", f"request body over {limit} bytes")
    parts, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError("bad_input", "the client went away before its request ended")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError("too_large", f"request body over {limit} bytes")
        parts.append(chunk)
        more = message.get("more_body", False)
    return b"".join(parts)


async def _report(request: Request, service: Service) -> dict[str, str]:
    """A delivery report's fields: its query, and a form body's over them."""
    body = b""
    if request.method == "POST":
        body = await _read(request.receive, request.headers.get("content-length"),
                           service.settings.max_body)
    return dlr.fields(dict(request.query_params), request.headers.get("content-type"), body)


def _item(data: Any, op: str, role: str, quick: bool) -> ChargeRequest | MessageOp:
    """The request of one object for ``op``'s endpoint; BadInput naming its fault.
    ``quick``: the object may take ``quick_request`` (its body has no escaped NUL)."""
    item = None
    if isinstance(data, dict):
        given = data.get("op", op)
        if given != op:
            raise BadInput(f"op {str(given)[:40]!r} sent to the {op} endpoint")
        if quick:
            item = quick_request(data, op)
        if item is None:
            item = request_of({**data, "op": op})
    else:
        item = request_of(data)
    if type(item) is MessageOp and role != ADMIN:
        item.refunds = False  # a refund is an admin's, as a void of a settled message too
    return item


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer: sent as bare ASGI messages on the message routes (``messages``), as a
    Starlette ``Response`` by the others."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", b"%d" % len(self.body))]
        if self.headers:
            headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    def response(self) -> Response:
        return Response(self.body, self.status, headers=self.headers,
                        media_type="application/json")


def _json(value: Any, status: int = 200) -> Response:
    return Answer(status, to_json(value).encode()).response()


def _answer(r: ChargeResult) -> Answer:
    """One message's result: 200 when done, else its error with the result beside it."""
    if r.exit_code == 0:
        return Answer(200, result_json(r).encode())
    status = STATUS_FOR_EXIT.get(EXIT_FOR.get(r.reason or "", Exit.FAILURE), 500)
    return _error(r.reason or "error", r.message or r.status, status, result_doc(r))


async def _run(service: Service, op: str, raw: bytes, role: str) -> Answer:
    """Charge (or act on) the message, or the array of them, of a request's body."""
    data = _loads(raw)
    quick = b"\\u0000" not in raw
    if isinstance(data, list):
        return await _run_array(service, op, data, role, quick)
    try:
        item = _item(data, op, role, quick)
    except BadInput as e:
        raise ApiError("bad_input", e.message) from None
    [r] = await service.group.run([item])
    service.metrics.results(op, [r])
    return _answer(r)


async def _run_array(service: Service, op: str, data: list[Any], role: str,
                     quick: bool) -> Answer:
    if len(data) > service.settings.max_items:
        raise ApiError("too_large", f"{len(data)} items: at most {service.settings.max_items}")
    parsed: list[ChargeRequest | MessageOp | ChargeResult] = []
    for number, value in enumerate(data):
        try:
            parsed.append(_item(value, op, role, quick))
        except BadInput as e:
            parsed.append(ChargeResult("error", None, None, None, reason="bad_input",
                                       message=f"item {number}: {e.message}"))
    items = [p for p in parsed if not isinstance(p, ChargeResult)]
    charged = iter(await service.group.run(items) if items else [])
    results = [p if isinstance(p, ChargeResult) else next(charged) for p in parsed]
    service.metrics.results(op, results)
    return Answer(200, f'{{"results":[{",".join(map(result_json, results))}]}}'.encode())


# The message routes, by path: the op and the role each needs.
MESSAGE_ROUTES = {"/v1/charge": ("charge", GATEWAY), "/v1/hold": ("hold", GATEWAY),
                  "/v1/settle": ("settle", GATEWAY), "/v1/void": ("void", GATEWAY),
                  "/v1/dlr": ("dlr", GATEWAY), "/v1/refund": ("refund", ADMIN)}


async def messages(scope: Scope, receive: Receive, send: Send) -> int:
    """``POST`` to a message route, as a bare ASGI app: the busiest routes, called straight
    from ``Observed`` without Starlette's request objects, responses and middleware (the
    router knows them too, so that another method is answered 405). Answers every request,
    a failure too; returns the HTTP status."""
    service: Service = scope["app"].state.service
    op, role = MESSAGE_ROUTES[scope["path"]]
    length = token = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = _bearer(value.decode("latin-1"))
        elif name == b"content-length":
            length = value.decode("latin-1")
    try:
        granted = _check_role(service, token, role)
        raw = await _read(receive, length, service.settings.max_body)
        answer = await _run(service, op, raw, granted)
    except ApiError as e:
        answer = _api_error_answer(e)
    except SmsCreditsError as e:
        answer = _core_error_answer(e)
    except Exception as e:  # unforeseen: answered without a traceback
        answer = _unexpected(scope, e)
    await answer.send(send)
    return answer.status


async def quote(request: Request) -> Response:
    service = _authorize(request, GATEWAY)
    data = await _body(request, service.settings.max_body)
    if not isinstance(data, dict) or not data.keys() <= {"to", "text", "parts", "user"}:
        raise ApiError("bad_input", "expected an object with to, text or parts, and user")
    user = data.get("user")
    try:  # checked as a charge's fields are; the user, if given, too
        req = request_of({**data, "user": user if user is not None else "-", "op": "charge"})
    except BadInput as e:
        raise ApiError("bad_input", e.message) from None
    assert isinstance(req, ChargeRequest)
    from smscredits import reads
    from smscredits.charging.model import parts_of

    return _json(await run_in_threadpool(
        reads.quote, service.db, req.to, parts_of(req), counted=req.text is not None,
        user=user))


def _path_user(request: Request) -> str:
    """The user a path names: one no database can hold (a NUL) is no user."""
    from smscredits import reads

    user: str = request.path_params["user"]
    if "\x00" in user:
        raise reads.unknown_user(user)
    return user


async def balance(request: Request) -> Response:
    service = _authorize(request, GATEWAY)
    from smscredits import reads
    from smscredits.render import plain

    user = _path_user(request)

    def read() -> dict[str, Any]:
        account: dict[str, Any] = plain(reads.get_account(service.db, user))
        account["limits"] = plain(reads.show_limits(service.db, user).windows)
        return account

    return _json(await run_in_threadpool(read))


async def events(request: Request) -> Response:
    service = _authorize(request, ADMIN)
    from smscredits import clock, journal, reads, validate

    query = request.query_params
    limit = _whole(query.get("limit", "50"), "limit", 1, 1000)
    before = None if "before" not in query else _whole(query["before"], "before", 1, 2**62)
    kinds = query.getlist("kind")
    for k in kinds:
        if k not in journal.KINDS:
            raise ApiError("bad_input", f"unknown kind {k[:40]!r}")
    since_at, until_at = validate.time_range(query.get("since"), query.get("until"),
                                             now=clock.now())
    rows = await run_in_threadpool(
        reads.query_events, service.db, _path_user(request),
        since=None if since_at is None else clock.to_us(since_at),
        until=None if until_at is None else clock.to_us(until_at),
        kinds=kinds, before=before, limit=limit + 1,
        credit_only=query.get("all") not in ("1", "true", "yes"))
    more = len(rows) > limit
    return _json({"events": rows[:limit], "next_before": rows[limit - 1].id if more else None})


def _whole(text: str, name: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ApiError("bad_input", f"bad {name} {text[:40]!r}: a whole number {low}-{high}")
    return int(text)


async def _acted_on(request: Request, as_op: Callable[[dict[str, str]], MessageOp]
                    ) -> ChargeResult:
    """What a gateway's delivery report did, its fields read by ``as_op``."""
    service = _authorize(request, GATEWAY, query_token=True)
    [r] = await service.group.run([as_op(await _report(request, service))])
    service.metrics.results("dlr", [r])
    return r


async def kannel_dlr(request: Request) -> Response:
    # Kannel retries a report until it gets 200 or 202: one that changes nothing (a
    # duplicate, an unknown message) would come back for nothing. The body says what it did.
    return _json(result_doc(await _acted_on(request, dlr.kannel)))


async def jasmin_dlr(request: Request) -> Response:
    await _acted_on(request, dlr.jasmin)
    # Jasmin resends a report until it reads exactly this; a report that changes nothing
    # (a duplicate, an unknown message) is answered too, or it would come back for ever.
    return Response("ACK/Jasmin", media_type="text/plain")


async def metrics(request: Request) -> Response:
    service = _authorize(request, GATEWAY)
    body, kind = service.metrics.render()
    return Response(body, media_type=kind)


async def healthz(request: Request) -> Response:
    service = _service(request)
    from sqlalchemy import text

    def ping() -> None:
        with service.db.read() as conn:
            conn.execute(text("SELECT 1"))

    await run_in_threadpool(ping)
    return _json({"status": "ok"})


# -- errors ----------------------------------------------------------------------------------


def _error(code: str, message: str, status: int, result: dict[str, Any] | None = None,
           headers: Mapping[str, str] | None = None) -> Answer:
    doc: dict[str, Any] = {"error": {"code": code, "message": message}}
    if result is not None:
        doc["result"] = result
    return Answer(status, to_json(doc).encode(), headers)


def _api_error_answer(e: ApiError) -> Answer:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return _error(e.code, e.message, e.status, e.result, headers)


def _core_error_answer(e: SmsCreditsError) -> Answer:
    if isinstance(e, DatabaseError):
        return _unavailable(e)
    return _error(e.code, e.message, STATUS_FOR_EXIT.get(e.exit_code, 500))


def _unavailable(e: DatabaseError) -> Answer:
    """A database failure: its one line (passwords masked) to the service's log; to the
    caller, no word of where the database is."""
    log.error("%s", e.message)
    return _error(e.code, "the database is unavailable: see the service's log", 503)


async def _api_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, ApiError)
    return _api_error_answer(e).response()


async def _core_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, SmsCreditsError)
    return _core_error_answer(e).response()


async def _http_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, HTTPException)
    code = {404: "no_route", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
    return _error(code, str(e.detail), e.status_code,
                  headers=e.headers).response()  # 405's Allow


async def _driver_error(request: Request, e: Exception) -> Response:
    return _unexpected(request.scope, e).response()


def _unexpected(scope: Scope, e: Exception) -> Answer:
    service: Service | None = getattr(scope["app"].state, "service", None)
    if isinstance(e, DBAPIError) and service is not None:
        from smscredits.storage.engine import explain

        return _unavailable(explain(e, service.db.url))
    log.error("internal error on %s %s: %s", scope["method"], scope["path"][:200],
              type(e).__name__)
    return _error("internal", "internal error: see the service's log", 500)


# -- the app ---------------------------------------------------------------------------------


def route_label(path: str) -> str:
    """A path as a metrics label: a user's name is not a label value."""
    if path.startswith("/v1/users/"):
        return "/v1/users/{user}/" + path.rsplit("/", 1)[-1]
    return path if path in _PATHS else "other"


class Observed:
    """Times every request for ``/metrics`` and writes the access log: method, path without
    its query (which may hold a token), status and milliseconds."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), 500
        service: Service | None = getattr(self.app.state, "service", None)
        scope["app"] = self.app
        try:
            # A message route's POST goes straight to its handler, which answers everything.
            if scope["method"] == "POST" and scope["path"] in MESSAGE_ROUTES:
                status = await messages(scope, receive, send)
            else:
                status = await self._routed(scope, receive, send)
        finally:
            seconds = time.perf_counter() - began
            path = scope["path"]
            if service is not None:
                service.metrics.request(route_label(path), status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                access_log.info('%s "%s %s" %d %.1fms', client[0], scope["method"],
                                path.encode("unicode_escape").decode()[:200], status,
                                seconds * 1000)

    async def _routed(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Starlette's answer to the request; its HTTP status."""
        status, status_sent = 500, False

        async def sent(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sent)
        except Exception as e:  # unforeseen: answered without a traceback, if still possible
            if status_sent:
                raise
            await _unexpected(scope, e).send(sent)
        return status


class _Asgi:
    """``messages`` as Starlette's router takes an ASGI app (a bare function it would call
    as a request handler)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await messages(scope, receive, send)


ROUTES = [
    *(Route(path, _Asgi(), methods=["POST"]) for path in MESSAGE_ROUTES),
    Route("/v1/quote", quote, methods=["POST"]),
    Route("/v1/users/{user}/balance", balance, methods=["GET"]),
    Route("/v1/users/{user}/events", events, methods=["GET"]),
    Route("/v1/dlr/kannel", kannel_dlr, methods=["GET", "POST"]),
    Route("/v1/dlr/jasmin", jasmin_dlr, methods=["GET", "POST"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
_PATHS = frozenset(r.path for r in ROUTES)


def create_app(settings: Settings) -> Observed:
    """The app; its lifespan opens the database (checked: an outdated schema fails the
    start) and, at shutdown, lets the queued messages commit before it closes."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.service = Service(settings)
        try:
            yield
        finally:
            await app.state.service.close()

    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={
        ApiError: _api_error, SmsCreditsError: _core_error, HTTPException: _http_error,
        DBAPIError: _driver_error})
    return Observed(app)


def from_environment() -> Observed:
    """The app of a worker process that ``serve --workers N`` started."""
    import os

    return create_app(Settings.from_json(os.environ[SETTINGS_ENV]))
