"""The journal's account index, by block of event ids.

An index led by the user (``events(user_id, id)``) takes every charge's entry to a random
page of a B-tree that grows with the whole journal: on a journal of millions of events a
batch of charges dirties about one index page per charge, which the commit writes and the
checkpoint writes again. The index is led instead by the block of the event id
(``id >> BITS``, 32 768 events a block): new entries land in the newest block only, whose
pages stay few and cached however long the journal grows, and a user's events are still
found by index seeks — one per block, newest block first.

Both ``storage.queries`` (SQLAlchemy) and ``storage.lite`` (stdlib ``sqlite3``) use this, so
it imports neither. An index on an expression serves a query only where the query spells
the same expression, hence ``EXPR``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

Row = TypeVar("Row")

BITS = 15  # the migrations build the index with this number: changing it takes a new one
EXPR = f"(events.id >> {BITS})"  # as ix_events_block_user_id is built
INDEX_EXPR = f"(id >> {BITS})"


def of(event_id: int) -> int:
    """The block an event id falls in."""
    return event_id >> BITS


def top(newest: int | None, before: int | None = None) -> int:
    """The newest block to search, given the newest event id and the page's ``before``;
    -1 when no event can match."""
    if newest is None:
        return -1
    if before is not None:
        newest = min(newest, before - 1)
    return of(newest) if newest > 0 else -1


def newest_first(top: int, *, first: int = 1, most: int = 256) -> Iterator[list[int]]:
    """The blocks from ``top`` down to 0, in groups that double in size up to ``most``.

    A page of a busy user's log is found in the newest block or two; a quiet user's takes
    a few statements more, not one per block.
    """
    hi, width = top, first
    while hi >= 0:
        lo = max(0, hi - width + 1)
        yield list(range(hi, lo - 1, -1))
        hi = lo - 1
        width = min(width * 2, most)


def within(blocks: list[int]) -> str:
    """The SQL condition "the event is in one of these blocks", the numbers written inline:
    they are ints made here, and inline they cost no bound parameters (SQLite allows at
    most 32 766 per statement)."""
    return f"{EXPR} IN ({', '.join(str(int(b)) for b in blocks)})"


def newest_page(newest: int | None, before: int | None, limit: int,
                fetch: Callable[[str, int], list[Row]]) -> list[Row]:
    """Up to ``limit`` of one user's rows, newest first, below ``before``: ``fetch(condition,
    n)`` gives the newest ``n`` matching rows within the blocks that ``condition`` names.
    Groups are disjoint and taken newest first, so their rows join up in order."""
    found: list[Row] = []
    for group in newest_first(top(newest, before)):
        found += fetch(within(group), limit - len(found))
        if len(found) >= limit:
            break
    return found


def up_to(top: int) -> str:
    """The condition "in any block up to ``top``": every event of a user, by index seeks."""
    return within(list(range(top + 1)))
