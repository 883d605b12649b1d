"""The read queries, each written once as SQL text with named parameters.

Two runners execute them: ``storage.queries`` through SQLAlchemy's ``text()`` (every
database), and ``storage.lite`` through the stdlib ``sqlite3`` (read commands on an existing
SQLite file, whose cold start must not pay for importing SQLAlchemy). Both accept ``:name``
parameters, so the text is the same; this module imports neither. A query's dynamic part
(filters, keyset paging, limit) is built here, into one ``(sql, params)``; only ``IN`` lists
get generated placeholders.

A runner is ``run(sql, params) -> rows``, each row readable by column name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smscredits.storage import blocks

if TYPE_CHECKING:  # types only: this module is on the cold-start path of the read commands
    from collections.abc import Callable
    from typing import Protocol, TypeVar

    Params = dict[str, Any]
    Query = tuple[str, Params]
    # A term of a WHERE clause: its SQL and the parameters it names; None when not used.
    Term = tuple[str, Params] | None

    class Row(Protocol):
        def __getitem__(self, key: Any, /) -> Any: ...

    R = TypeVar("R", bound=Row)
    Run = Callable[[str, Params], list[R]]

USER = "SELECT users.* FROM users WHERE users.name = :name"
ACCOUNTS = ("SELECT powers.*, users.name, users.disabled, users.tz "
            "FROM powers JOIN users ON users.id = powers.user_id")
EVENTS = ("SELECT events.*, users.name "
          "FROM events LEFT OUTER JOIN users ON users.id = events.user_id")
NEWEST_EVENT = "SELECT max(events.id) AS newest FROM events"
PLANS = ("SELECT refill_plans.*, users.name, users.tz "
         "FROM refill_plans JOIN users ON users.id = refill_plans.user_id")


def _where(*terms: Term) -> Query:
    """`` WHERE a AND b`` of the terms used, in the order given, and their parameters."""
    used = [term for term in terms if term is not None]
    if not used:
        return "", {}
    return (" WHERE " + " AND ".join(sql for sql, _ in used),
            {name: value for _, params in used for name, value in params.items()})


def _equals(column: str, name: str, value: Any, op: str = "=") -> Term:
    """``column op :name``, or None when the value is None (no such filter)."""
    return None if value is None else (f"{column} {op} :{name}", {name: value})


def _in(column: str, name: str, values: list[Any]) -> Term:
    """``column IN (:name_0, :name_1...)``, or None for no values."""
    if not values:
        return None
    params = {f"{name}_{i}": value for i, value in enumerate(values)}
    return f"{column} IN ({', '.join(':' + key for key in params)})", params


# -- the queries ---------------------------------------------------------------------------


def user(name: str, *, lock: bool = False) -> Query:
    """The user of this name; ``lock`` (Postgres only) holds the row for the transaction."""
    return USER + (" FOR UPDATE" if lock else ""), {"name": name}


def accounts(user: str | None, kind: str | None) -> Query:
    """Powers with their user's name, disabled flag and zone; by user name, then kind."""
    where, params = _where(_equals("users.name", "user", user),
                           _equals("powers.kind", "kind", kind))
    return f"{ACCOUNTS}{where} ORDER BY users.name, powers.kind", params


def events(
    *,
    user_id: int | None,
    since: int | None,
    until: int | None,
    kinds: list[str] | None,
    before: int | None,
    credit_only: bool,
    limit: int,
    within: str | None = None,
) -> Query:
    """The newest ``limit`` events matching, with their user's name; ``within`` is a
    condition on the account index's blocks (``blocks.within``), numbers written inline."""
    where, params = _where(
        _equals("events.at", "since", since, ">="),
        _equals("events.at", "until", until, "<"),
        _in("events.kind", "kind", kinds or []),
        (CREDIT_LOG, {}) if credit_only else None,
        _equals("events.id", "before", before, "<"),
        _equals("events.user_id", "user_id", user_id),
        (within, {}) if within else None,
    )
    return f"{EVENTS}{where} ORDER BY events.id DESC LIMIT :limit", {**params, "limit": limit}


# The credit log: the events that changed a balance, and those that reserved credits or
# released them (a hold, a void, an expiry), which change what is available.
CREDIT_LOG = ("(events.amount IS NOT NULL OR events.kind IN "
              "('message.held', 'message.voided', 'message.expired'))")


def plans(*, user_id: int | None = None, all_: bool = True, plan_id: int | None = None,
          status: str | None = None, lock: bool = False) -> Query:
    """Refill plans with their user's name and zone, oldest first; the cancelled ones only
    with ``all_``. ``lock`` (Postgres only) holds the plans' rows, not their users'."""
    where, params = _where(
        None if all_ else ("refill_plans.status != 'cancelled'", {}),
        _equals("refill_plans.status", "status", status),
        _equals("refill_plans.id", "plan_id", plan_id),
        _equals("refill_plans.user_id", "user_id", user_id),
    )
    lock_clause = " FOR UPDATE OF refill_plans" if lock else ""
    return f"{PLANS}{where} ORDER BY refill_plans.id{lock_clause}", params


# -- run with a runner -----------------------------------------------------------------------


def newest_event(run: Run[R]) -> int | None:
    """The newest event's id; None when the journal is empty."""
    newest: int | None = run(NEWEST_EVENT, {})[0]["newest"]
    return newest


def event_rows(
    run: Run[R],
    *,
    user_id: int | None,
    since: int | None,
    until: int | None,
    kinds: list[str] | None,
    before: int | None,
    limit: int,
    credit_only: bool,
) -> list[R]:
    """Events with their user's name, newest first; one user's by the blocks of the account
    index, newest block first (``storage.blocks``)."""

    def fetch(within: str | None, n: int) -> list[R]:
        return run(*events(user_id=user_id, since=since, until=until, kinds=kinds,
                           before=before, credit_only=credit_only, limit=n, within=within))

    if user_id is None:
        return fetch(None, limit)
    return blocks.newest_page(newest_event(run), before, limit, fetch)
