"""A request under a routing file (SPEC §11): the model's route, attempts, retries, failover.

`forward_routed` is `relay.forward` for a config with a routing file. The request's model picks
a route (service.config.routing.Routing, the one resolver); its candidates (the route's targets,
then its fallbacks' targets) are tried in order:

- **Retried** (the same target once more, after a jittered exponential backoff or the
  upstream's short `Retry-After`, then the next target): a failure to connect, a reset or close
  before the response head, a protocol failure, our own pool exhausted, and the statuses 429,
  500, 502, 503, 504 and 529. A timeout (no head within `headersSecs`) or a TLS failure goes to
  the next target at once: a silent upstream is not waited for twice. A `Retry-After`
  (seconds, HTTP date, `retry-after-ms`) longer than the route's `maxRetryAfterSecs` is not
  waited for: the next target is tried at once.
- **Never retried**, relayed to the client unchanged: every other status (400, 401, 403, 404,
  413, 422, content-policy refusals …) — except a 400 that says the context is too long
  (`context_length_exceeded`), which goes to the route's `contextWindowFallbacks` when it has
  some.
- **Bounded**: at most `maxAttempts` attempts per request over all candidates, and within
  `totalSecs` when set; when they run out, the last upstream answer is relayed as it is (or, if
  the last attempt got no answer, the router's error for that failure).
- **Commit point, streams**: a stream request is failed over until its first content event
  (service.proxy.holdback); the events before it are held back, and a stream that breaks, ends,
  errs in-band or stays silent (`firstContentSecs`, `idleSecs`) before it fails over like a
  failed attempt. Meanwhile the client sees heartbeats (the SSE head goes out at the heartbeat
  interval). From the first content on, a break ends the stream with an in-band error in the
  client's protocol, never a clean end, and never a switch to another provider.
- **Retry budget** (per worker): retries in flight stay under `budgetRatio` x the routed
  requests in flight (or `budgetMinRetries`); past it a request gets the answer it has.

Ejection and cooldowns (service.ejection, shared by the workers): an upstream ejected after
repeated failures, or cooling down after a 429 with `Retry-After`, is skipped; when its
ejection is over one request probes it. When every target is ejected, all are tried anyway;
when every one is cooling down, the answer is 503 `upstreams_unavailable` with `Retry-After`.

Every attempt is recorded on the request's state (upstream, outcome, seconds) for the
completion line and `upstream_attempts_total{upstream,outcome}`; each switch of upstream for
`fallbacks_total{from,to,reason}`; the answer carries `x-router-upstream` (who answered) and
`x-router-attempts`. Each target's upstream format decides its translation, so an Anthropic
client can fall back from an Anthropic upstream to an OpenAI-format one. The body is sent with
the target's model name, and the answer names the model that answered.

Audio uploads (multipart) are read whole under a routing file (an attempt that fails must be
able to send the body again) and routed by their model part. The stored-response routes of the
Responses API (no model) go to `Routing.stored_at` (relay.forward), without failover.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import functools
import math
import random
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sanic.response import HTTPResponse

from ..config.loader import LoadedConfig
from ..config.model import COUNTS_FOR, EMBEDDINGS, MULTIPART_ROUTES, ResolvedEndpoint
from ..config.routing import Candidate, Policy, Routing, Upstream
from ..context import RouterRequest
from ..ejection import PROBE_LEASE_SECS, Gate
from ..errors import (
    ModelNotFound,
    RateLimited,
    RouteNotAvailable,
    RouterError,
    ServiceUnavailable,
    StreamError,
    UpstreamProtocolError,
    UpstreamsUnavailable,
    UpstreamTimeout,
    status_outcome,
)
from ..ratelimit.bucket import Limit
from ..server.body import read_whole
from ..state import RequestState
from ..translate import Translator
from ..translate.responses import ResponsesTranslator
from . import headers as h
from .body import (
    INFLATED_CODINGS,
    content_coding,
    decoded,
    dump_json,
    exact_json,
    inflated,
    inflater,
    parse_json_object,
)
from .events import EventFramer, EventTooLarge, ask_for_usage
from .gemini import fit_body
from .holdback import CONTENT, ERROR, MAX_HELD_BYTES, MAX_HELD_EVENTS, classify
from .multipart import boundary_of, rewrite_body
from .outgoing import (
    USAGE_ROUTES,
    json_answer,
    local_estimate,
    outgoing_headers,
    translated_request,
)
from .passthrough import LargeAnswer, read_answer, relay_large_answer
from .sse import relay_stream, relay_unasked_stream, unasked_stream
from .upstream import map_exception, send, timeout_of

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
# The longest wait an upstream's Retry-After is believed for (a day): a cooldown is never
# shortened, so an absurd value would shut an upstream out until a restart.
MAX_RETRY_AFTER_SECS = 86400.0
# Failures after which the next target is tried at once, not the same one again.
NOT_AGAIN = frozenset({"tls_error", "timeout"})
# The most of a failed attempt's body that is read (to relay it, or to look for a context-length
# error); the rest is drained.
MAX_FAILED_BODY = 1 << 20
# How long after totalSecs its own timer fires: a connect timeout cut to the same time comes first.
DEADLINE_GRACE_SECS = 0.05
# The outcomes of an attempt (the `outcome` label of upstream_attempts_total): a closed set.
OUTCOMES: tuple[str, ...] = (
    "ok",
    "client_error",
    "rate_limited",
    "server_error",
    "connect_error",
    "io_error",
    "tls_error",
    "timeout",
    "connect_timeout",
    "protocol_error",
    "pool_exhausted",
    "stream_error",
)
# Why a request moved to another upstream (the `reason` label of fallbacks_total).
REASONS: tuple[str, ...] = ("rate_limited", "server_error", "error", "context_length")
ATTEMPTS_HEADER = "x-router-attempts"
UPSTREAM_HEADER = "x-router-upstream"


class LocalEstimate(Exception):
    """The attempts reached a target whose format has no token-counting endpoint: the request
    is answered from the router's estimate (`outgoing.local_estimate`)."""


# The providers' own reset headers (SPEC §11, "the provider variants"), read only when neither
# `retry-after-ms` nor `retry-after` is there: (reset header, its remaining-count header).
# OpenAI (and the providers that copy its headers) sends durations such as "1s", "6m0s",
# "20ms"; Anthropic sends RFC 3339 times. Only the reset of a limit that is exhausted (its
# remaining count "0") is a wait: these headers come on every answer, and a limit that is not
# exhausted resets whenever it refills completely (minutes, for a token limit), which says
# nothing about when to try again.
_OPENAI_RESETS = (
    ("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
)
_ANTHROPIC_RESETS = (
    ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-remaining"),
    ("anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-remaining"),
    ("anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-input-tokens-remaining"),
    ("anthropic-ratelimit-output-tokens-reset", "anthropic-ratelimit-output-tokens-remaining"),
)
_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
    r"(?:(\d+(?:\.\d+)?)ms)?"
)


def _duration_secs(raw: str) -> float | None:
    """An OpenAI-style duration ("1h2m3.5s", "6m0s", "20ms", "1s") in seconds; None when it is
    not one."""
    m = _DURATION.fullmatch(raw.strip())
    if m is None or not any(m.groups()):
        return None
    h, mins, secs, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + secs + ms / 1000


def _rfc3339_secs(raw: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(raw.strip())  # Python 3.11 reads a trailing "Z" itself
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp() - now


def _provider_reset_secs(headers: httpx.Headers, now: float) -> float | None:
    waits: list[float] = []  # the resets of the exhausted limits
    for pairs, anthropic in ((_OPENAI_RESETS, False), (_ANTHROPIC_RESETS, True)):
        for reset, remaining in pairs:
            raw = headers.get(reset)
            if raw is None or headers.get(remaining, "").strip() != "0":
                continue
            secs = _rfc3339_secs(raw, now) if anthropic else _duration_secs(raw)
            if secs is not None:
                waits.append(secs)
    return max(waits) if waits else None


def retry_after_secs(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The upstream's requested wait: `retry-after-ms`, else `retry-after` as seconds or an HTTP
    date, else the provider's own reset headers (OpenAI's `x-ratelimit-reset-*`, Anthropic's
    `anthropic-ratelimit-*-reset`); None when absent, unreadable or not finite; at most
    MAX_RETRY_AFTER_SECS."""
    at = time.time() if now is None else now
    ms = headers.get("retry-after-ms")
    secs: float | None = None
    if ms is not None:
        try:
            secs = float(ms) / 1000
        except ValueError:
            secs = None
    raw = headers.get("retry-after")
    if secs is None and raw is not None:
        raw = raw.strip()
        try:
            secs = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
                secs = when.timestamp() - at
            except (TypeError, ValueError, OverflowError):
                secs = None
    if secs is None and ms is None and raw is None:
        secs = _provider_reset_secs(headers, at)
    if secs is None or not math.isfinite(secs):
        return None
    return min(MAX_RETRY_AFTER_SECS, max(0.0, secs))


def is_context_length_error(status: int, body: bytes) -> bool:
    """A 400 whose error says the prompt does not fit the model's context window (OpenAI's
    `context_length_exceeded` code, Anthropic's and others' wording)."""
    if status != 400:
        return False
    low = body[:MAX_FAILED_BODY].lower()
    return any(
        s in low
        for s in (
            b"context_length_exceeded",
            b"maximum context length",
            b"prompt is too long",
            b"context window",
        )
    )


def _error_outcome(err: RouterError) -> str:
    if isinstance(err, ServiceUnavailable):
        return "pool_exhausted"
    return err.outcome or err.error_type or "io_error"


class RetryBudget:
    """Routed requests and retries in flight in this worker: a retry is allowed while the
    retries in flight stay under `ratio` x the requests in flight, or `min_retries`."""

    def __init__(self) -> None:
        self.active = 0
        self.retrying = 0

    def allows(self, ratio: float, min_retries: int) -> bool:
        return self.retrying < max(min_retries, ratio * self.active)


BUDGET = RetryBudget()


@dataclass(slots=True)
class Chosen:
    """The attempt whose answer the client gets, and how that answer is read."""

    upstream: Upstream
    translator: Translator | ResponsesTranslator | None
    strip_usage: bool
    failed_body: bytes | None  # a non-2xx answer's body, already read
    idle_secs: float | None = None  # the route's idleSecs: the most silence between events
    model: str = ""  # the model name sent upstream
    # A whole 2xx answer, read within its attempt (bytes, or a LargeAnswer's first part), and
    # when its head came (perf_counter)
    answer: bytes | LargeAnswer | None = None
    headed: float = 0.0


def upstream_credential(up: Upstream, client: str | None, own: str | None) -> Any:
    """What `up` gets: the operator's key, the client's own key (or the operator's when the
    client sent none), or the single-profile rule's credential (`client`: the client's key or
    DEFAULT_API_KEY)."""
    if up.credential == "operator":
        return up.operator_key
    if up.credential == "client-or-operator":
        return own or up.operator_key
    return client


async def _read_failed(resp: httpx.Response) -> bytes:
    parts: list[bytes] = []
    kept = 0
    try:
        async for chunk in resp.aiter_raw():
            if kept < MAX_FAILED_BODY:
                parts.append(chunk)
                kept += len(chunk)
    finally:
        await resp.aclose()
    return b"".join(parts)[:MAX_FAILED_BODY]


class _Attempts:
    """The attempts of one request: which candidate next, the waits, the record.

    The attempt state's starting values are class attributes: an instance gets its own only
    when an attempt changes one, so the usual request (answered at its first attempt) sets
    none of them."""

    started = False  # `_start` ran (the first `run`)
    context_used = False
    last: tuple[httpx.Response, Chosen] | None = None
    last_error: RouterError | None = None
    previous: Upstream | None = None
    attempt_started = 0.0  # perf_counter() when the last attempt with an answer was sent
    reason = "error"
    same_retries = 0
    skipped: tuple[Gate, ...] = ()
    pending: tuple[bool, float] | None = None  # (retry the same target, wait) to apply
    claim: str | None = None  # the upstream whose half-open probe this request claimed

    def __init__(
        self,
        request: RouterRequest,
        route: str,
        routing: Routing,
        model_route: Any,
        candidates: list[Candidate],
        payload: dict[str, Any],
        exact: bool,
        streaming: bool,
        body: bytes,
        sent_key: str | None,
        boundary: bytes | None = None,
    ) -> None:
        """`sent_key`: the credential the client sent (`headers.client_credential` without a
        default)."""
        self.request = request
        self.body: bytes = body
        self.boundary = boundary  # a multipart body's boundary; None: JSON
        self.fresh = True
        self.ctx = request.app.ctx
        self.state: RequestState = request.ctx.state
        self.route = route
        self.routing = routing
        self.model_route = model_route
        self.candidates = candidates
        self.payload = payload
        self.exact = exact
        self.streaming = streaming
        self.policy: Policy = routing.policy(model_route.match)
        self.model: str = payload["model"]
        self.deadline = (
            time.monotonic() + self.policy.total_secs if self.policy.total_secs else None
        )
        settings = self.ctx.settings
        self.own_key = sent_key  # the client's own, if it sent one
        self.client_key = sent_key or settings.default_api_key or None  # or DEFAULT_API_KEY
        if self.ctx.access is not None:  # shared deployment: the client's key is an access key
            self.client_key, self.own_key = settings.default_api_key, None

    def _timeout(self, up: Upstream) -> httpx.Timeout:
        """The upstream's timeouts with the route's connectSecs / headersSecs over them. The
        read timeout is not cut to totalSecs: it is also every body read's, and past the first
        content only idleSecs and the stream limits apply (`run` bounds the head instead)."""
        t = up.profile.timeouts
        p = self.policy
        connect = p.connect_secs or t.connect_secs
        read = p.headers_secs or t.read_secs
        if self.deadline is not None:  # an attempt never outlives the request's totalSecs
            left = max(0.01, self.deadline - time.monotonic())
            connect = round(min(connect, left), 2) or 0.01
        return timeout_of(connect, read, self.ctx.settings.upstream_pool_wait_secs)

    def left(self) -> float:
        """Seconds until totalSecs passes (a little after, so that an attempt's connect
        timeout, cut to the same time, fires first: it says nothing was sent)."""
        assert self.deadline is not None
        return max(0.01, self.deadline - time.monotonic()) + DEADLINE_GRACE_SECS

    def _build(self, cand: Candidate) -> tuple[httpx.Request, Chosen] | None:
        """The upstream request for `cand` (None: its upstream has no such endpoint)."""
        ep = cand.upstream.endpoints[self.route]
        if not ep.enabled:
            return None
        translator = None
        strip = False
        streaming = self.streaming and ep.stream_support
        if self.boundary is not None:  # multipart (audio): the model part rewritten, no more
            body, _ = rewrite_body(self.body, self.boundary, {self.model: cand.model})
            return self._request(cand, ep, body, None, False, False)
        # The first attempt uses the request's parsed body; a later one parses it again, so
        # that nothing an earlier attempt's translation or usage request changed carries over.
        payload = self.payload if self.fresh else parse_json_object(self.body, self.exact)
        self.fresh = False
        payload["model"] = cand.model
        if ep.translation != "none":
            translator, body = translated_request(self.route, ep, payload, self.exact)
            self.state.translation = ep.translation
            self.state.dropped = list(translator.dropped)
        else:
            if streaming and ep.request_usage and self.route in USAGE_ROUTES:
                strip = ask_for_usage(payload)
            fit_body(payload, ep)
            body = dump_json(payload, exact=self.exact)
            self.state.translation = "none"
        return self._request(cand, ep, body, translator, strip, streaming)

    def _request(
        self,
        cand: Candidate,
        ep: ResolvedEndpoint,
        body: bytes,
        translator: Translator | ResponsesTranslator | None,
        strip: bool,
        streaming: bool,
    ) -> tuple[httpx.Request, Chosen]:
        key = upstream_credential(cand.upstream, self.client_key, self.own_key)
        hdrs, query = outgoing_headers(
            self.request,
            ep,
            cand.upstream.profile,
            key,
            translator,
            streaming,
            None,
            self.state,
            self.ctx.access is None and cand.upstream.credential != "operator",
        )
        req = self.ctx.http.build_request(
            ep.method,
            h.build_url(ep.url, query),
            headers=hdrs,
            content=body,
            timeout=self._timeout(cand.upstream),
        )
        return req, Chosen(
            cand.upstream, translator, strip, None, self.policy.idle_secs, cand.model
        )

    def _backoff(self, retry: int) -> float:
        p = self.policy
        return random.uniform(0, min(p.backoff_max_secs, p.backoff_base_secs * (2**retry)))

    async def _wait(self, secs: float) -> bool:
        """Sleep `secs` unless that passes the deadline; False: no time left."""
        if self.deadline is not None and time.monotonic() + secs >= self.deadline:
            return False
        if secs > 0:
            await asyncio.sleep(secs)
        return True

    def _record(self, name: str, outcome: str, started: float, status: int | None = None) -> None:
        secs = round(time.perf_counter() - started, 4)
        self.state.attempts.append((name, outcome, secs, status))

    def _start(self) -> None:
        """The attempt state, set on the first `run`; kept so that a stream that fails before
        its first content resumes where the attempts stopped (`open_stream`)."""
        self.started = True
        self.queue = list(self.candidates)
        # Never leave a route with nothing: when every target is ejected, all are tried (but
        # those the upstream asked to wait, Retry-After); when every one is cooling down: 503.
        if len(self.queue) == 1:  # one upstream: tried whatever its ejection says (unless cooling)
            self.try_all = True
            return
        names = {c.upstream.name for c in self.queue}
        if len(names) == 1:
            self.try_all = True
            return
        ejections = self.ctx.ejections
        gates = [ejections.peek(n) for n in names]
        blocked = [g for g in gates if not g.allowed]
        self.try_all = len(blocked) == len(gates)
        if self.try_all and all(g.why == "cooling" for g in blocked):
            raise _unavailable(blocked, ejections.now())

    async def run(self) -> tuple[httpx.Response, Chosen]:
        """Try the candidates; the response the client gets (its head read) and how to read
        it. Raises the router's error when the last attempt got no answer at all."""
        try:
            return await self._run()
        except BaseException:
            self.let_go()  # the client left (cancelled) while its probe was in flight
            raise

    def let_go(self) -> None:
        """Release the probe this request claimed, if it has not reported: its client left
        (during the head wait, a whole answer's body, a stream before its first content), so
        another request may probe at once instead of after the claim's lease. After a report
        the release changes nothing (the slot was restored, or ejected again with no claim)."""
        if self.claim is not None:
            self.ctx.ejections.release_probe(self.claim)
            self.claim = None

    def _report(self, name: str, ok: bool) -> None:
        """An attempt at `name` succeeded or failed (outlier ejection); a probe has reported."""
        if ok:
            self.ctx.ejections.success(name, self.routing.outlier, self.try_all)
        else:
            self.ctx.ejections.failure(name, self.routing.outlier)
        if name == self.claim:
            self.claim = None

    def _probe_lease(self, up: Upstream) -> float:
        """How long a probe's claim holds: the longest its attempt may take before it reports
        (connect, the head, then a stream's first content or a whole answer's body within the
        read timeout; totalSecs bounds them all), and at least PROBE_LEASE_SECS. With a lease
        shorter than its attempt, a slow probe lost its claim and a second request probed the
        ejected upstream alongside it. A claim whose request ends unreported is released
        (`let_go`): the lease is for a worker that dies mid-probe."""
        t = up.profile.timeouts
        p = self.policy
        read = p.headers_secs or t.read_secs
        secs = (p.connect_secs or t.connect_secs) + read + (p.first_content_secs or read)
        if self.deadline is not None:
            secs = min(secs, self.deadline - time.monotonic() + DEADLINE_GRACE_SECS)
        return max(PROBE_LEASE_SECS, secs)

    async def _run(self) -> tuple[httpx.Response, Chosen]:
        if not self.started:
            self._start()
        ejections = self.ctx.ejections
        while self.queue:
            if self.pending is not None:
                retry_same, wait = self.pending
                self.pending = None
                if retry_same and len(self.state.attempts) < self.policy.max_attempts:
                    if await self._wait(wait):
                        self.same_retries += 1
                    else:  # the wait would pass totalSecs: the next target at once (SPEC §11)
                        self.queue.pop(0)
                        self.same_retries = 0
                        continue
                else:
                    self.queue.pop(0)
                    self.same_retries = 0
                    continue
            if self.queue[0].upstream.endpoints[self.route].local_estimate:
                # count_tokens reached an upstream of another format (SPEC §12): the router's
                # own estimate answers, as when such an upstream is the first target; it costs
                # no attempt.
                raise LocalEstimate()
            if len(self.state.attempts) >= self.policy.max_attempts:
                break
            if self.deadline is not None and time.monotonic() >= self.deadline:
                break  # totalSecs spent: the answer we have
            cand = self.queue[0]
            name = cand.upstream.name
            if self.same_retries == 0:  # a retry of the same target was decided already
                if self.try_all:
                    gate = ejections.peek(name)
                else:
                    gate = ejections.gate(name, self._probe_lease(cand.upstream))
                if not gate.allowed and (not self.try_all or gate.why == "cooling"):
                    self.skipped = (*self.skipped, gate)
                    self.queue.pop(0)
                    continue
                if gate.probe:
                    self.claim = name
            else:
                # Decided before its wait: not if the target was ejected meanwhile (its probe
                # failed), or began to cool down for longer than a wait this request would take
                # (another request's longer Retry-After). A cooldown that ends soon (this
                # request's own, measured a moment later, or shared through Redis) is waited out.
                gate = ejections.peek(name)
                if not gate.allowed and (gate.why == "cooling" or not self.try_all):
                    left = gate.until - ejections.now() if gate.why == "cooling" else math.inf
                    if left > self.policy.max_retry_after_secs or not await self._wait(left):
                        self.queue.pop(0)
                        self.same_retries = 0
                        continue
            retry = bool(self.state.attempts)
            if retry and not BUDGET.allows(
                self.policy.budget_ratio, self.policy.budget_min_retries
            ):
                self.let_go()
                break  # an outage must not multiply the load: the answer we have
            built = self._build(cand)
            if built is None:
                self.let_go()
                self.queue.pop(0)
                continue
            req, chosen = built
            if self.previous is not None and self.previous.name != name:
                self.state.fallbacks.append((self.previous.name, name, self.reason))
            self.previous = cand.upstream
            tracing = self.ctx.tracing
            if tracing is not None:
                tracing.start_attempt(
                    self.request,
                    req,
                    self.route,
                    # the provider: the shipped profile it is built on, else its own name
                    self.routing.spec.upstreams[name].profile or name,
                    chosen.model,
                    self.streaming,
                    len(self.state.attempts),
                    name,
                )
            started = time.perf_counter()
            try:
                if self.deadline is None:
                    resp = await (self._retry(req) if retry else send(self.ctx.http, req))
                else:  # under totalSecs the head must come within the time left
                    try:
                        async with asyncio.timeout(self.left()):
                            resp = await (self._retry(req) if retry else send(self.ctx.http, req))
                    except TimeoutError:
                        raise httpx.ReadTimeout("totalSecs passed before the head") from None
            except httpx.HTTPError as e:
                err = map_exception(e)
                if tracing is not None:
                    tracing.attempt_failed(self.request, err.error_type or "error")
                self._record(name, _error_outcome(err), started)
                if not isinstance(err, ServiceUnavailable):  # our own pool: not its fault
                    self._report(name, False)
                self._failed(err)
                continue
            status = resp.status_code
            self._record(name, status_outcome(status), started, status)
            self.attempt_started = started  # a stream's attempt runs on to its first content
            # A whole 2xx answer is the attempt's first content: read here, so that one whose
            # body breaks or stalls fails over like an answer that never came (the client has
            # had nothing yet), and counts as the failure it is.
            whole = not self.streaming and 200 <= status < 300 and not unasked_stream(resp)
            if status >= 500:
                self._report(name, False)
            elif status == 429:
                self.let_go()
            elif not (self.streaming and status < 300) and not whole:
                # A stream's 2xx head is not yet a success: its first content is (open_stream)
                self._report(name, True)
            if whole:
                broken = await self._read_whole(resp, chosen)
                if broken is not None:
                    self._broken(name, status, started, broken, True)
                    continue
                self._report(name, True)
            if status < 400:
                return resp, chosen
            earlier = self.last, self.last_error
            if status not in RETRIED_STATUSES:
                # Never retried. After an earlier attempt failed, a fallback's refusal (a 400
                # for a shape it does not take, a 401 for a key it does not know) is not the
                # client's answer: the earlier failure is, so it is never masked.
                try:
                    body = await _read_failed(resp) if status == 400 else None
                except httpx.HTTPError as e:  # its body broke: a failed attempt
                    self._broken(name, status, started, map_exception(e), True)
                    continue
                if body is not None and not self.context_used:
                    # inflated when compressed (the router asks for gzip/deflate on whole answers)
                    text = decoded(body, resp.headers.get("content-encoding"), MAX_FAILED_BODY)
                    if is_context_length_error(status, text or b""):
                        self.context_used = True
                        chosen.failed_body = body
                        self.last, self.last_error = (resp, chosen), None
                        self.queue = self.routing.context_plan(self.model_route, self.model)
                        self.reason = "context_length"
                        self.same_retries = 0
                        if self.queue:
                            if tracing is not None:
                                tracing.attempt_failed(self.request, "context_length", status)
                            continue
                        return resp, chosen
                if earlier != (None, None):
                    if body is None:
                        await resp.aclose()
                    if tracing is not None:  # not the answer: the earlier failure is
                        tracing.attempt_failed(self.request, status_outcome(status), status)
                    return self._earlier(*earlier)
                chosen.failed_body = body
                return resp, chosen
            try:
                body = await _read_failed(resp)
            except httpx.HTTPError as e:  # its body broke: no answer to relay
                self._broken(name, status, started, map_exception(e), status == 429)
                continue
            chosen.failed_body = body
            self.last, self.last_error = (resp, chosen), None
            self.reason = "rate_limited" if status == 429 else "server_error"
            if tracing is not None:
                tracing.attempt_failed(self.request, status_outcome(status), status)
            after = retry_after_secs(resp.headers)
            if after is not None:  # its cooldown, at most an ejection's longest time
                ejections.cool(name, min(after, self.routing.outlier.max_ejection_secs))
            if after is not None and after > self.policy.max_retry_after_secs:
                self.pending = (False, 0.0)  # too long: the next target at once
            else:
                wait = after if after is not None else self._backoff(self.same_retries)
                self.pending = (self.same_retries == 0, wait)
        if self.last is not None:
            return self.last
        if self.last_error is not None:
            raise self.last_error
        if self.skipped:  # nothing was tried: each target ejected, probed by another, cooling
            raise _unavailable(self.skipped, ejections.now())
        raise RouteNotAvailable()

    async def _read_whole(
        self, resp: httpx.Response, chosen: Chosen, passthrough: bool = True
    ) -> RouterError | None:
        """Read a whole answer into `chosen.answer` (a 2xx untranslated one past 16 MiB: its
        first part, service.proxy.passthrough relays the rest as it comes), within totalSecs;
        the router's error when its body broke or stalled."""
        chosen.headed = time.perf_counter()
        http = self.ctx.http
        passthrough = passthrough and chosen.translator is None
        try:
            if self.deadline is None:
                chosen.answer = await read_answer(http, resp, passthrough)
            else:
                async with asyncio.timeout(self.left()):
                    chosen.answer = await read_answer(http, resp, passthrough)
        except TimeoutError:
            await resp.aclose()
            return UpstreamTimeout()
        except httpx.HTTPError as e:
            return map_exception(e)
        return None

    @staticmethod
    def _earlier(
        last: tuple[httpx.Response, Chosen] | None, error: RouterError | None
    ) -> tuple[httpx.Response, Chosen]:
        if last is not None:
            return last
        assert error is not None
        raise error

    async def _retry(self, req: httpx.Request) -> httpx.Response:
        """Send a retry: it counts against the retry budget while it is in flight."""
        BUDGET.retrying += 1
        try:
            return await send(self.ctx.http, req)
        finally:
            BUDGET.retrying -= 1

    def _broken(
        self, name: str, status: int, started: float, err: RouterError, report: bool
    ) -> None:
        """The attempt's answer (its head `status`) broke off or stalled before its body's end:
        recorded as the failure `err`, reported to ejection unless it was already (`report`),
        and failed like an answer that never came."""
        outcome = _error_outcome(err)
        tracing = self.ctx.tracing
        if tracing is not None:
            tracing.attempt_failed(self.request, outcome, status)
        secs = round(time.perf_counter() - started, 4)
        self.state.attempts[-1] = (name, outcome, secs, status)
        if report:
            self._report(name, False)
        self._failed(err)

    def _failed(self, err: RouterError) -> None:
        """An attempt that got no (usable) answer: the same target once more, unless the
        failure says it would fail again or keep us waiting (NOT_AGAIN), then the next."""
        self.last_error, self.last, self.reason = err, None, "error"
        retry_same = self.same_retries == 0 and err.error_type not in NOT_AGAIN
        self.pending = (retry_same, self._backoff(self.same_retries) if retry_same else 0.0)

    async def open_stream(self) -> tuple[httpx.Response, Chosen]:
        """`run` for a stream: an upstream's 2xx stream is read up to its first content event
        (the events before it held back) and handed over only then, so that a stream that
        breaks, errs or stays silent before any content fails over like a failed attempt."""
        while True:
            resp, chosen = await self.run()
            name = chosen.upstream.name
            ok = 200 <= resp.status_code < 300
            ctype = resp.headers.get("content-type", "").lower()
            if not ok or not ctype.startswith("text/event-stream"):
                if ok:  # a whole answer to a stream request: a success as such
                    self._report(name, True)
                return resp, chosen
            ep = chosen.upstream.endpoints[self.route]
            try:
                ready = await self._until_content(resp, ep.format)
            except _BeforeContent as e:
                upstream, _, _, status = self.state.attempts[-1]
                if self.ctx.tracing is not None:
                    self.ctx.tracing.attempt_failed(self.request, e.outcome, status)
                # its time: to the failure, not to the head
                secs = round(time.perf_counter() - self.attempt_started, 4)
                self.state.attempts[-1] = (upstream, e.outcome, secs, status)
                self._report(name, False)
                self._failed(e.error)
                continue
            except BaseException:  # the client left before the first content
                self.let_go()
                raise
            self._report(name, True)  # its first content: the attempt succeeded
            return ready, chosen

    async def _until_content(self, resp: httpx.Response, upstream_format: str) -> httpx.Response:
        framer = EventFramer()
        # A stream the upstream compressed though asked for none: its events are looked for in
        # what it inflates to (the relay decodes it the same way: body.INFLATED_CODINGS); one in
        # any other coding cannot be read as events, and the next target is tried.
        coding = content_coding(resp.headers.get("content-encoding"))
        inflate = None
        if coding in INFLATED_CODINGS:
            inflate = inflater()
        elif coding:
            await resp.aclose()
            raise _BeforeContent("protocol_error", UpstreamProtocolError())
        chunks = resp.aiter_raw()
        read: list[bytes] = []
        held_bytes = held_events = 0
        limit = self.policy.first_content_secs
        deadline = None if limit is None else time.monotonic() + limit
        if self.deadline is not None:  # totalSecs bounds the wait for content too
            deadline = self.deadline if deadline is None else min(deadline, self.deadline)
        idle = self.policy.idle_secs or self.ctx.settings.stream_idle_secs
        try:
            while True:
                timeout = None if deadline is None else deadline - time.monotonic()
                if idle is not None:
                    timeout = idle if timeout is None else min(timeout, idle)
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), timeout)
                except StopAsyncIteration:
                    raise _BeforeContent("stream_error", StreamError()) from None
                except TimeoutError:
                    raise _BeforeContent("timeout", UpstreamTimeout()) from None
                except httpx.HTTPError as e:
                    err = map_exception(e)
                    raise _BeforeContent(_error_outcome(err), err) from None
                read.append(chunk)
                try:
                    if inflate is None:
                        events = framer.feed(chunk)
                    else:
                        events = [
                            e for piece in inflated(inflate, chunk) for e in framer.feed(piece)
                        ]
                except EventTooLarge:
                    break  # not ours to judge: relayed as it is
                except zlib.error:
                    raise _BeforeContent("stream_error", StreamError()) from None
                verdicts = [classify(upstream_format, ev) for ev in events]
                if ERROR in verdicts:
                    raise _BeforeContent("stream_error", StreamError())
                held_events += len(events)
                held_bytes += len(chunk)
                if CONTENT in verdicts or held_events > MAX_HELD_EVENTS:
                    break
                if held_bytes > MAX_HELD_BYTES:
                    break
        except BaseException:  # failed over, or the client left (cancelled): let go of it
            await resp.aclose()
            raise
        return httpx.Response(
            resp.status_code,
            headers=resp.headers,
            stream=_Replay(b"".join(read), chunks, resp),
            extensions=resp.extensions,
        )


class _BeforeContent(Exception):
    def __init__(self, outcome: str, error: RouterError) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.error = error


class _Replay(httpx.AsyncByteStream):
    """The bytes read before the commit point, then the rest of the upstream's stream.

    Over the h1 engine it also offers what the relay reads a plain stream with (service.proxy.
    sse): `receive(limit)` (no task per read) and `push(offer)` (fast path `stream`): the held
    bytes first, then the upstream body's own. An offer reaches the upstream body only once the
    held bytes were taken, so nothing it relays can pass them."""

    def __init__(self, head: bytes, rest: Any, resp: httpx.Response) -> None:
        self._head = head
        self._rest = rest
        self._resp = resp
        self._offer: Any = None  # set before the held bytes were taken: handed on with them
        inner: Any = resp.stream
        self._inner = inner
        self.receive: Any = None
        self.push: Any = None
        if hasattr(inner, "receive"):
            self.receive = self._receive
            if hasattr(inner, "push"):
                self.push = self._push
                self.take_now = inner.take_now
                self.fail = inner.fail

    async def _receive(self, limit: float) -> bytes | None:
        if self._head:
            head, self._head = self._head, b""
            if self._offer is not None:
                self._inner.push(self._offer)
                self._offer = None
            return head
        data: bytes | None = await self._inner.receive(limit)
        return data

    def _push(self, offer: Any) -> None:
        if self._head and offer is not None:
            self._offer = offer
            return
        self._offer = None
        self._inner.push(offer)

    async def __aiter__(self) -> Any:
        if self._head:
            yield self._head
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        await self._resp.aclose()


def _unavailable(gates: Sequence[Gate], now: float) -> UpstreamsUnavailable:
    """503 with Retry-After: the soonest end of the waits."""
    soonest = min(g.until for g in gates) - now
    return UpstreamsUnavailable(headers={"Retry-After": str(max(1, math.ceil(soonest)))})


def _plan(routing: Routing, payload: dict[str, Any]) -> tuple[Any, list[Candidate]]:
    model = payload.get("model")
    found = routing.plan(model) if isinstance(model, str) and model else None
    if found is None:
        raise ModelNotFound(
            f"No route for model {str(model)[:100]!r}" if model else "The request names no model"
        )
    return found


async def forward_routed(
    request: RouterRequest, route: str, cfg: LoadedConfig
) -> HTTPResponse | None:
    ctx = request.app.ctx
    routing = cfg.routing
    assert routing is not None
    state: RequestState = request.ctx.state
    sent_key = h.client_credential(request.headers, None)
    state.key_id = h.bucket_id(
        sent_key,
        ctx.settings.default_api_key,
        request.headers,
        request.args,
        ctx.access is not None,
    )
    boundary: bytes | None = None
    if route in MULTIPART_ROUTES:
        # Audio uploads: read whole under a routing file (the model part decides where the
        # body goes, and a failed attempt must be able to send it again); bounded by
        # API_ROUTER_MAX_BODY_BYTES like a JSON body.
        boundary = boundary_of(request.headers.get("content-type"))
        body = await read_whole(request)
        exact = False
        payload = {"model": rewrite_body(body, boundary, {})[1].model}
    else:
        if not request.body:
            await request.receive_body()
        body = request.body
        exact = exact_json(body)
        payload = parse_json_object(body, exact)
    model_route, candidates = _plan(routing, payload)
    state.model = payload["model"]
    face = cfg.endpoints[route]
    streaming = face.stream_support and payload.get("stream") is True
    state.stream = streaming

    # The resolver's route decides the bucket: a route with its own rateLimit has its own per
    # client key; else the file's (or the environment's) limit per client key and HTTP route.
    own = routing.limits.get(model_route.match)
    if own is not None:
        limit: Limit | None = own[0]
        bucket = f"{state.key_id}.{own[1]}"
    else:
        limit, bucket = cfg.limit(route, ctx.default_limit), state.key_id
    extra: dict[str, str] = {}
    if limit is not None:
        decision = await ctx.limiter.acquire(bucket, route, limit)
        if not decision.allowed:
            raise RateLimited(headers=decision.headers())
        extra = decision.headers()

    first_ep = candidates[0].upstream.endpoints[route]
    if first_ep.local_estimate:
        return local_estimate(route, payload, request.ctx.request_id)

    charge = None
    # Token counting uses no tokens and reports no usage: never charged.
    rule = (
        None
        if route in COUNTS_FOR
        else cfg.routed_token_rule(model_route.match, ctx.token_defaults)
    )
    if rule is not None:  # SPEC §13: per (client key, model route), before any attempt
        audio = boundary is not None
        charge = await ctx.tokens.reserve(
            state.key_id,
            rule,
            None if audio else payload,
            0 if audio else len(body),
            extra,
            route != EMBEDDINGS,  # no output tokens to reserve
        )
        if charge is not None:
            extra.update(charge.headers)

    attempts = _Attempts(
        request,
        route,
        routing,
        model_route,
        candidates,
        payload,
        exact,
        streaming,
        body,
        sent_key,
        boundary,
    )
    BUDGET.active += 1
    try:
        pending = (
            _relay_stream(request, attempts, face, extra, state)
            if streaming
            else _relay(request, attempts, face, extra)
        )
        if charge is None:
            return await pending
        return await ctx.tokens.charged(charge, state, pending)
    except RouterError as e:
        # The attempts ended in the router's own error (no upstream answer to relay): its
        # response says what was tried too (SPEC §11), and carries the limits' headers, as every
        # answer that passed them does. A copy: an error may be shared.
        err = copy.copy(e)
        ours = _router_headers(state, extra) if state.attempts else extra
        err.headers = {**ours, **e.headers}
        raise err from None
    finally:
        BUDGET.active -= 1


async def _relay(
    request: RouterRequest, attempts: _Attempts, face: Any, extra: dict[str, str]
) -> HTTPResponse | None:
    """A JSON request's attempts and its answer (a stream when the upstream answers with one:
    sse.unasked_stream)."""
    state: RequestState = request.ctx.state
    started = time.perf_counter()
    relayed = False
    try:
        try:
            resp, chosen = await attempts.run()
        except LocalEstimate:
            answer = local_estimate(attempts.route, attempts.payload, request.ctx.request_id)
            answer.headers[ATTEMPTS_HEADER] = str(len(state.attempts))  # no upstream answered
            return answer
        _answered(state, chosen, resp)
        if chosen.failed_body is not None:
            data = chosen.failed_body
        elif unasked_stream(resp):
            return await relay_unasked_stream(
                request,
                resp,
                face,
                extra,
                chosen.translator,
                started,
                [chosen],
                functools.partial(_router_headers, state, extra),
            )
        else:
            if chosen.answer is None:  # a 3xx (a 2xx was read within its attempt)
                broken = await attempts._read_whole(resp, chosen, passthrough=False)
                if broken is not None:
                    raise broken
            read, headed = chosen.answer, chosen.headed
            assert read is not None
            if isinstance(read, LargeAnswer):
                relayed = True  # its upstream time runs to its last byte: the relay's to set
                extra = _router_headers(state, extra)
                await relay_large_answer(request, resp, read, extra, started, headed)
                return None
            data = read
    finally:
        if not relayed:
            state.upstream_latency = time.perf_counter() - started
    return json_answer(
        resp,
        data,
        chosen.translator,
        _router_headers(state, extra),
        state,
        request.ctx.request_id,
    )


async def _relay_stream(
    request: RouterRequest,
    attempts: _Attempts,
    face: Any,
    extra: dict[str, str],
    state: RequestState,
) -> HTTPResponse | None:
    """A stream's attempts and relay. Its own function: the closures' cells (one per captured
    name) are made when a function starts, and a JSON request should not pay for them."""
    chosen_box: list[Chosen] = []

    async def opener() -> httpx.Response:
        resp, chosen = await attempts.open_stream()
        _answered(state, chosen, resp)
        chosen_box.append(chosen)
        if chosen.failed_body is not None:  # already read (raw): handed over as a new body
            # As a stream: `content=` would be read at once, and the relay reads the raw stream
            # (httpx.StreamConsumed: the client got a 500 for the upstream's 429/5xx/400).
            return httpx.Response(
                resp.status_code,
                headers=resp.headers,
                stream=httpx.ByteStream(chosen.failed_body),
            )
        return resp

    def headers_after() -> dict[str, str]:
        return _router_headers(state, extra)

    return await relay_stream(
        request, None, face, extra, opener=opener, chosen=chosen_box, head=headers_after
    )


def _answered(state: RequestState, chosen: Chosen, resp: httpx.Response) -> None:
    state.upstream = chosen.upstream.name
    state.upstream_status = resp.status_code
    state.upstream_model = chosen.model  # the `model` label of tokens_total: what was sent
    if resp.status_code == 429 or resp.status_code >= 500:
        state.error_type = "upstream_error"


def _router_headers(state: RequestState, extra: dict[str, str]) -> dict[str, str]:
    """`x-router-upstream`: the upstream that answered, else (the router's own error) the last
    one tried; `x-router-attempts`: how many attempts were sent."""
    out = dict(extra)
    upstream = state.upstream
    if upstream is None and state.attempts:
        upstream = state.attempts[-1][0]
    if upstream is not None:
        out[UPSTREAM_HEADER] = upstream
    out[ATTEMPTS_HEADER] = str(len(state.attempts))
    return out


Opener = Callable[[], Awaitable[httpx.Response]]
