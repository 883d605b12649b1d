"""The tutorial as data: the steps `smscredits demo` runs (and the README shows)."""

from __future__ import annotations

# (caption, command arguments after `smscredits`)
STEPS: list[tuple[str, list[str]]] = [
    ("Add a user (a gateway account) with its time zone.",
     ["user", "add", "alice", "--tz", "Europe/Budapest"]),
    ("Give the user a credits power: from now on its messages are charged.",
     ["power", "create", "alice", "credits"]),
    ("Put prepaid credits on it.",
     ["credits", "add", "alice", "100", "--note", "invoice 2026-117"]),
    ("A negative amount subtracts.", ["credits", "add", "alice", "-5", "--note", "goodwill fix"]),
    ("Set spending limits per calendar day, ISO week and month (in the user's zone).",
     ["limits", "set", "alice", "--daily", "20", "--monthly", "400"]),
    ("Prices per message part: a default, a country, a longer prefix.",
     ["price", "set", "default", "1.5"]),
    ("", ["price", "set", "HU", "0.8"]),
    ("", ["price", "set", "+3630", "0.6"]),
    ("An automatic refill: cron runs `smscredits refill run`, which applies each due period "
     "exactly once.",
     ["refill", "schedule", "alice", "--every", "month", "--on", "1", "--top-up-to", "100"]),
    ("And one that fires inside the charge that takes the balance below a threshold.",
     ["refill", "schedule", "alice", "--when-below", "10", "--add", "50"]),
    ("", ["refill", "list", "alice"]),
    ("What would a message cost?",
     ["price", "quote", "--to", "+36301234567", "--text", "Your code is 4711 ✓"]),
    ("Charge messages as they are sent; an id makes a retry safe.",
     ["charge", "alice", "--to", "+36301234567", "--text", "Your code is 4711", "--id", "m-1"]),
    ("", ["charge", "alice", "--to", "+4915112345678", "--parts", "2", "--id", "m-2"]),
    ("", ["charge", "alice", "--to", "+36201234567", "--text", "Szia! Találkozunk?", "--id",
          "m-3"]),
    ("A retry of m-1 is not charged again.",
     ["charge", "alice", "--to", "+36301234567", "--text", "Your code is 4711", "--id", "m-1"]),
    ("Refund a message that was not delivered.", ["refund", "m-2", "--note", "not delivered"]),
    ("Where the limits stand.", ["limits", "show", "alice"]),
    ("The balance, the limits and the refill plans at a glance.",
     ["credits", "balance", "alice"]),
    ("Spend per day (or week, month, country).", ["usage", "alice", "--by", "country"]),
    ("The whole gateway: every user's spend of the last 7 days (or --by day, week, month, "
     "country), and every limit window, least left first.",
     ["usage", "--by", "user", "--since", "7d"]),
    ("", ["limits", "show"]),
    ("Users come and go: bob is added, renamed, moved to another zone (his open limit "
     "windows are recounted in it) and deleted; the journal keeps his events.",
     ["user", "add", "bob"]),
    ("", ["user", "rename", "bob", "robert"]),
    ("", ["user", "set-tz", "robert", "America/New_York"]),
    ("", ["user", "delete", "robert"]),
    ("The credit log: every change of the balance, newest first.", ["log", "alice"]),
    ("The event journal shows everything else too.", ["events", "alice", "--limit", "6"]),
    ("Scripts read JSON.", ["credits", "balance", "alice", "--json"]),
    ("Every balance and limit window recomputed from the journal.", ["verify"]),
]
