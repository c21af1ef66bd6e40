"""A key's rate limits shared by every sidecar through Redis.

The buckets of :mod:`semcache.upstream.limits` (requests and tokens per minute, paced, paused
by a 429's ``Retry-After``) live in one Redis hash per key, and every change to them is one
server-side script run atomically on Redis's own clock: taking a request, settling its
tokens, giving them back, learning from the upstream's headers. So N sidecars together never
send more than the key allows, whatever their clocks say.

The router asks :meth:`SharedKeyLimiter.wait_time` often, to order its queue; that is answered
from the state the last script returned (no round trip). :meth:`try_reserve` is the
authoritative step: it takes the credit on Redis, or says how long to wait because another
sidecar took it first. While Redis is away, the key falls back to local buckets holding
``local_share`` of its limit (with N sidecars, 1/N keeps the sum under the limit).

The hash is named after a digest of the key's secret and its upstream's URL, so sidecars that
number their keys differently still share a key's buckets, and the secret never reaches Redis.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from semcache.shared.link import RedisLink, RedisUnavailableError
from semcache.upstream.limits import DEFAULT_BURST, Advice, KeyLimiter, Reservation

# One script for every operation, so the bucket arithmetic is written once. State fields:
# rl/ru/rn (requests: level, updated, next send), tl/tu/tn (tokens), rc/tc (capacities),
# pu (paused until). Times are Redis's clock in seconds. Returns {wait, requests headroom,
# tokens headroom, paused until - now}; wait is 0 when a "take" succeeded.
_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local amount = tonumber(ARGV[5])
local extra1 = tonumber(ARGV[6])
local extra2 = tonumber(ARGV[7])
local extra3 = tonumber(ARGV[8])
local extra4 = tonumber(ARGV[9])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HGETALL', key)
local st = {}
for i = 1, #s, 2 do st[s[i]] = tonumber(s[i + 1]) end
local function init(p, cap)
  if st[p .. 'c'] == nil then
    st[p .. 'c'] = cap; st[p .. 'l'] = cap; st[p .. 'u'] = now; st[p .. 'n'] = now
  end
end
if rpm > 0 then init('r', rpm) end
if tpm > 0 then init('t', tpm) end
st['pu'] = st['pu'] or 0
local function refill(p)
  local cap = st[p .. 'c']
  if now > st[p .. 'u'] then
    st[p .. 'l'] = math.min(cap, st[p .. 'l'] + (now - st[p .. 'u']) * cap / 60)
    st[p .. 'u'] = now
  end
end
local function wait(p, n)
  local cap = st[p .. 'c']
  if n > cap then return 1e9 end
  refill(p)
  local w = 0
  if st[p .. 'l'] < n then w = (n - st[p .. 'l']) / (cap / 60) end
  return math.max(w, st[p .. 'n'] - now, 0)
end
local function spend(p, n)
  refill(p)
  st[p .. 'l'] = st[p .. 'l'] - n
  st[p .. 'n'] = math.max(st[p .. 'n'], now) + n / (burst * st[p .. 'c'] / 60)
end
local function give_back(p, n)
  st[p .. 'l'] = math.min(st[p .. 'c'], st[p .. 'l'] + n)
  st[p .. 'n'] = math.max(now, st[p .. 'n'] - n / (burst * st[p .. 'c'] / 60))
end
local result_wait = 0
if op == 'take' then
  local w = math.max(st['pu'] - now, 0)
  if rpm > 0 then w = math.max(w, wait('r', 1)) end
  if tpm > 0 then w = math.max(w, wait('t', math.min(amount, st['tc']))) end
  if w <= 0 then
    if rpm > 0 then spend('r', 1) end
    if tpm > 0 then spend('t', math.min(amount, st['tc'])) end
  end
  result_wait = w
elseif op == 'settle' then
  if tpm > 0 then
    refill('t')
    if amount >= 0 then give_back('t', amount) else spend('t', -amount) end
  end
elseif op == 'release' then
  if rpm > 0 then refill('r'); give_back('r', 1) end
  if tpm > 0 then refill('t'); give_back('t', amount) end
elseif op == 'learn' then
  -- extra1/extra2: limit of requests/tokens (-1: unknown); extra3/extra4: remaining
  if rpm > 0 then
    refill('r')
    if extra1 > 0 and extra1 ~= st['rc'] then
      st['rc'] = extra1; st['rl'] = math.min(st['rl'], extra1)
    end
    if extra3 >= 0 then st['rl'] = math.min(st['rl'], extra3) end
  end
  if tpm > 0 then
    refill('t')
    if extra2 > 0 and extra2 ~= st['tc'] then
      st['tc'] = extra2; st['tl'] = math.min(st['tl'], extra2)
    end
    if extra4 >= 0 then st['tl'] = math.min(st['tl'], extra4) end
  end
  if amount > 0 then st['pu'] = math.max(st['pu'], now + amount) end
else
  if rpm > 0 then refill('r') end
  if tpm > 0 then refill('t') end
end
local flat = {}
for k, v in pairs(st) do table.insert(flat, k); table.insert(flat, tostring(v)) end
redis.call('HSET', key, unpack(flat))
redis.call('EXPIRE', key, 3600)
local rh = 1
local th = 1
if rpm > 0 then rh = st['rl'] / st['rc'] end
if tpm > 0 then th = st['tl'] / st['tc'] end
return {tostring(result_wait), tostring(rh), tostring(th), tostring(st['pu'] - now)}
"""


def bucket_name(secret: str, base_url: str) -> str:
    digest = hashlib.sha256(f"{base_url}\n{secret}".encode()).hexdigest()[:24]
    return f"semcache:limits:{digest}"


class SharedKeyLimiter(KeyLimiter):
    """A :class:`KeyLimiter` whose buckets are on Redis (see the module's text)."""

    def __init__(
        self,
        key_id: str,
        *,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float],
        link: RedisLink,
        name: str,
        local_share: float = 1.0,
        burst: float = DEFAULT_BURST,
    ) -> None:
        # The local buckets are the fallback, at ``local_share`` of the key's limit.
        super().__init__(
            key_id,
            rpm=None if rpm is None else rpm * local_share,
            tpm=None if tpm is None else tpm * local_share,
            clock=clock,
            burst=burst,
        )
        self._link = link
        self._name = name
        self._rpm = rpm or 0.0
        self._tpm = tpm or 0.0
        self._burst = burst
        self._script: Any = link.client.register_script(_SCRIPT)
        # The last state Redis gave: wait for a request as of ``_seen_at``, and headroom.
        self._shared_wait = 0.0
        self._shared_headroom = 1.0
        self._seen_at = -math.inf

    def _run(self, op: str, amount: float = 0.0, *extra: float) -> tuple[float, float] | None:
        """One atomic step on Redis; (wait, headroom), or None when Redis is away."""
        args = [op, self._rpm, self._tpm, self._burst, amount, *(list(extra) + [-1] * 4)[:4]]
        try:
            raw = self._link.call(lambda client: self._script(keys=[self._name], args=args))
        except RedisUnavailableError:
            return None
        wait, requests, tokens, paused = (float(v) for v in raw)
        headroom = -1.0 if paused > 0 else min(requests, tokens)
        self._shared_wait, self._shared_headroom = wait, headroom
        self._seen_at = time.monotonic()
        return wait, headroom

    def _shared(self) -> bool:
        return self._link.up

    def wait_time(self, tokens: int) -> float:
        if not self._shared():
            return super().wait_time(tokens)
        if time.monotonic() - self._seen_at > 1.0:
            self._run("peek")  # an old view: refresh it once a second at most
        if not self._shared():
            return super().wait_time(tokens)
        return max(0.0, self._shared_wait - (time.monotonic() - self._seen_at))

    def headroom(self) -> float:
        if not self._shared():
            return super().headroom()
        return self._shared_headroom

    def try_reserve(self, tokens: int) -> Reservation | None:
        if self._shared():
            taken = self._run("take", float(tokens))
            if taken is not None:
                wait, _ = taken
                if wait > 0:
                    return None  # another sidecar took it first; ``wait_time`` now says so
                return Reservation(self, tokens, shared=True)
        return super().try_reserve(tokens)

    def settle(self, reservation: Reservation, actual_tokens: int | None) -> None:
        if not reservation.shared:
            super().settle(reservation, actual_tokens)
        elif actual_tokens is not None and self._tpm:
            self._run("settle", float(reservation.tokens - actual_tokens))

    def release(self, reservation: Reservation) -> None:
        if not reservation.shared:
            super().release(reservation)
        else:
            self._run("release", float(reservation.tokens))

    def learn(self, headers: Mapping[str, str], status: int) -> None:
        super().learn(headers, status)  # the fallback learns too
        said = Advice.of(headers, status)
        numbers = [
            said.limits["requests"],
            said.limits["tokens"],
            said.remaining["requests"],
            said.remaining["tokens"],
        ]
        if said.pause_s is not None or any(v is not None for v in numbers):
            self._run("learn", said.pause_s or 0.0, *(-1.0 if v is None else v for v in numbers))
