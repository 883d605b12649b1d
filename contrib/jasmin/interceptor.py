"""Jasmin MT interceptor: hold (or charge) a message's credits in ``smscredits serve``.

Jasmin's interceptord runs this script for every MT message a filter matches, with the
message in ``routable`` (a ``RoutableSubmitSm``). The script asks ``smscredits serve``:

- the HTTP sender tagged the message ``sc-REF`` (``tags=sc-REF`` on ``/send``): POST
  ``/v1/hold`` ``{user, to, parts, id: REF}``; the message's ``dlr-url``
  (``.../v1/dlr/jasmin?ref=REF&token=...``) later settles or voids the hold;
- no such tag (an SMPP client's submit, or an HTTP sender without a reference): POST
  ``/v1/charge`` ``{user, to, parts}``: charged at once, as no report can settle it.

Answered 200: the message goes on (``smpp_status`` and ``http_status`` are left None, which is
Jasmin's accept). Refused: both statuses are set (see ``REFUSALS``), so an HTTP client gets
that status and an SMPP client that command_status. The service unreachable, slow (over
``TIMEOUT_S``) or failing: ``FAIL_OPEN`` decides. The script never raises: in Jasmin a raising
script is an HTTP 400 / ESME_RSYSERR with nothing but a line in interceptord's log.

It runs under both ways Jasmin has evaluated scripts: ``eval(code, {}, glo)`` (0.10.x, 0.11.0:
the script's top-level names are locals, invisible inside a ``def``) and ``eval(code, glo)``
(later): so it has no ``def``, ``lambda``, class or comprehension, and imports what it uses.
Standard library only. Install: ``contrib/jasmin/README.md``.
"""

import json
import os
import urllib.error
import urllib.request

# -- settings ------------------------------------------------------------------------------

SERVICE_URL = "http://127.0.0.1:8787"  # smscredits serve, as interceptord reaches it
TOKEN = os.environ.get("SMSCREDITS_SERVE_TOKEN", "")  # a gateway token (or write it here)
# interceptord runs one script at a time and Jasmin sets no timeout on it: every second spent
# here is a second every other message waits.
TIMEOUT_S = 2.0
# The service unreachable, slow or failing (5xx, a refused token): False refuses the message
# (HTTP 503, ESME_RSYSERR: the client may retry); True lets it through uncharged.
FAIL_OPEN = False
# Jasmin username -> smscredits user; a name not listed is the same in both.
USERS = {}  # e.g. {"shop01": "acme"}
REF_PREFIX = "sc-"  # the tag carrying the sender's message reference: sc-REF
HOLD_TTL = None  # e.g. "26h": a hold's time to live (Jasmin forgets a DLR after 24 h); None:
# the service's hold_ttl
# Jasmin runs MT interceptors for /rate queries too, which send nothing. Such a query is the
# only routable whose last PDU has no registered_delivery (/send always sets it, an SMPP
# submit_sm always carries it): True lets it through without holding or charging.
SKIP_RATE_QUERIES = True

# What a refusal answers, by the service's error code: (http_status, smpp_status).
# - No credit (402): ESME_RTHROTTLED (88). SMPP has no "no credit" status; clients treat 88
#   as "slow down, try again later", which is what a top-up or the next limit window allows
#   (Jasmin's own charging example uses ESME_RDELIVERYFAILURE, 254, which most clients take
#   as final: change the 88s below to 254 for that). The HTTP client gets 402.
# - The user unknown to smscredits, disabled, or without credits: 403 (as Jasmin's own
#   charging refusal) and ESME_RSUBMITFAIL (69).
# - No price for the destination: 412 (Jasmin's "no route") and ESME_RINVDSTADR (11); a
#   destination that is not a number: 400 and ESME_RINVDSTADR.
# - A reference reused for another user or cost (409 conflict), or a request the service refuses
#   as bad input: 409 / 400 and ESME_RSUBMITFAIL.
# Anything else is a failure of the service: see FAIL_OPEN and FAILURE.
REFUSALS = {
    "insufficient_credits": (402, 88),
    "daily_limit": (402, 88),
    "weekly_limit": (402, 88),
    "monthly_limit": (402, 88),
    "unknown_user": (403, 69),
    "user_disabled": (403, 69),
    "no_power": (403, 69),
    "no_price": (412, 11),
    "invalid_number": (400, 11),
    "conflict": (409, 69),
    "bad_input": (400, 69),
    "amount_out_of_range": (400, 69),
}
FAILURE = (503, 8)  # ESME_RSYSERR; never 200 or 0: Jasmin would answer 400, 520 or not send

# -- the message ---------------------------------------------------------------------------
# Every name below starts with sc_ so as not to touch Jasmin's own (routable, extra...).

sc_refusal = None  # (http_status, smpp_status) to set, or None to let the message through
try:
    sc_pdu = routable.pdu  # noqa: F821 (given by Jasmin)
    sc_parts = 1  # Jasmin has split a long message already: part 1 chains the others
    sc_last = sc_pdu
    while getattr(sc_last, "nextPdu", None) is not None:
        sc_parts += 1
        sc_last = sc_last.nextPdu
    sc_rate_query = SKIP_RATE_QUERIES and sc_last.params.get("registered_delivery") is None

    sc_to = sc_pdu.params.get("destination_addr") or b""
    if isinstance(sc_to, bytes):
        sc_to = sc_to.decode("ascii", "replace")
    sc_digits = ""
    for sc_char in str(sc_to):
        if sc_char in "0123456789":
            sc_digits += sc_char
    sc_name = routable.user.username  # noqa: F821
    if isinstance(sc_name, bytes):
        sc_name = sc_name.decode("utf-8", "replace")
    sc_body = {"user": USERS.get(sc_name, sc_name), "to": "+" + sc_digits,
               "parts": sc_parts}

    sc_ref = None
    for sc_tag in routable.getTags():  # noqa: F821
        if isinstance(sc_tag, bytes):
            sc_tag = sc_tag.decode("ascii", "replace")
        sc_tag = str(sc_tag)
        if sc_tag.startswith(REF_PREFIX) and len(sc_tag) > len(REF_PREFIX):
            sc_ref = sc_tag[len(REF_PREFIX):]
            break
    if sc_ref is not None:
        sc_body["id"] = sc_ref
        if HOLD_TTL:
            sc_body["ttl"] = HOLD_TTL

    if not sc_rate_query:
        sc_request = urllib.request.Request(
            SERVICE_URL.rstrip("/") + ("/v1/charge" if sc_ref is None else "/v1/hold"),
            data=json.dumps(sc_body).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "User-Agent": "smscredits-jasmin-interceptor"})
        if TOKEN:
            sc_request.add_header("Authorization", "Bearer " + TOKEN)
        # No proxy from the environment: the service is reached directly.
        sc_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        sc_code = None
        try:
            with sc_opener.open(sc_request, timeout=TIMEOUT_S) as sc_response:
                sc_response.read(65536)
                sc_status = sc_response.status
        except urllib.error.HTTPError as sc_error:
            sc_status = sc_error.code
            try:
                sc_code = json.loads(sc_error.read(65536))["error"]["code"]
            except Exception:
                sc_code = None
            sc_error.close()
        if sc_status != 200:
            sc_refusal = REFUSALS.get(sc_code) if 400 <= sc_status < 500 else None
            if sc_refusal is None and not FAIL_OPEN:
                sc_refusal = FAILURE
except Exception:  # unreachable, timed out, or anything unforeseen: never raise
    sc_refusal = None if FAIL_OPEN else FAILURE

if sc_refusal is not None:
    http_status, smpp_status = sc_refusal
