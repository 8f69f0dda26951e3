#!/usr/bin/env python3
"""redis-py scenarios against sidecache, run by tests/redis_py.rs.

Runs the same scenarios with redis-py's default settings (RESP3 since
redis-py 8: `--protocol 3` passes no protocol at all, so that the default is
what is tested) or with `protocol=2` (`--protocol 2`). Prints one line per
scenario and a final `N passed, M failed`; exits 1 if any scenario failed,
2 if redis-py (>= 8) is missing.

    python3 tests/redis_py/scenarios.py --port SIDECACHE --redis-port REDIS --protocol 3

`--direct` skips the scenarios that only make sense through sidecache (the
cache, refused transactions), to check the scenarios themselves against
Redis: `--port REDIS --redis-port REDIS --direct`.

`--group NAME` (repeatable) runs only the scenarios of that group: `core`
(the default group) or `contention` (many threads racing, e.g. on one
WATCHed counter); without it, all groups run.
"""

import argparse
import os
import signal
import sys
import threading
import time
import traceback

try:
    import redis
except ImportError:
    print(
        "redis-py is not installed for {}: install it with "
        "`{} -m pip install 'redis>=8'`".format(sys.executable, sys.executable)
    )
    sys.exit(2)

if int(redis.__version__.split(".")[0]) < 8:
    print(
        "redis-py {} is too old (need >= 8, whose default is RESP3): "
        "`{} -m pip install 'redis>=8'`".format(redis.__version__, sys.executable)
    )
    sys.exit(2)

# How long one scenario may take (a client out of step with its server can
# otherwise wait on socket timeouts for minutes), and the whole run.
SCENARIO_TIMEOUT = 10
RUN_BUDGET = 40.0
# How long a write by another client may take to reach sidecache's cache.
PROPAGATION = 0.1
# How long sidecache may take to start caching.
SETTLE = 5.0

SCENARIOS = []
GROUPS = ("core", "contention")


def scenario(proxy_only=False, group="core"):
    assert group in GROUPS, group

    def register(fn):
        SCENARIOS.append((fn.__name__, fn, proxy_only, group))
        return fn

    return register


class Ctx:
    def __init__(self, args):
        self.args = args
        self.prefix = "redis-py:{}:{}:".format(args.protocol, os.getpid())
        self.n = 0
        # Talks to Redis itself, underneath sidecache.
        self.direct = redis.Redis(host="127.0.0.1", port=args.redis_port, socket_timeout=5)

    def key(self, name):
        self.n += 1
        return "{}{}:{}".format(self.prefix, name, self.n)

    def client(self, **kwargs):
        """A client of sidecache with redis-py's defaults, or protocol=2."""
        if self.args.protocol == 2:
            kwargs["protocol"] = 2
        return redis.Redis(host="127.0.0.1", port=self.args.port, socket_timeout=5, **kwargs)

    def get_calls(self):
        """How many GETs Redis has executed (a GET served by the cache does not count)."""
        stats = self.direct.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))


def raises_response_error(call, text, otherwise):
    """call() must raise a ResponseError containing text; otherwise names what did not."""
    try:
        call()
    except redis.ResponseError as e:
        if text not in str(e):
            raise AssertionError("ResponseError without {!r}: {}".format(text, e))
    else:
        raise AssertionError(otherwise)


def eq(got, want, what=""):
    if got != want or type(got) is not type(want):
        raise AssertionError(
            "{}expected {!r} ({}), got {!r} ({})".format(
                what + ": " if what else "", want, type(want).__name__, got, type(got).__name__
            )
        )


def wait_caching(ctx, r):
    """Waits until of two GETs of one key through `r`, at most one reaches Redis."""
    key = ctx.key("probe")
    ctx.direct.set(key, "probe")
    deadline = time.monotonic() + SETTLE
    while True:
        before = ctx.get_calls()
        eq(r.get(key), b"probe", "probe GET")
        eq(r.get(key), b"probe", "probe GET")
        reached = ctx.get_calls() - before
        if reached <= 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                "sidecache did not cache within {}s: {} of 2 GETs reached Redis".format(
                    SETTLE, reached
                )
            )
        time.sleep(0.02)


# --- scenarios ---------------------------------------------------------------


@scenario()
def protocol_in_use(ctx):
    r = ctx.client()
    hello = r.execute_command("HELLO")
    if isinstance(hello, list):  # RESP2: a flat list of key, value
        hello = dict(zip(hello[::2], hello[1::2]))
    eq(hello.get(b"proto"), ctx.args.protocol, "HELLO's proto")
    eq(hello.get(b"server"), b"redis", "HELLO's server")


@scenario()
def ping(ctx):
    r = ctx.client()
    eq(r.ping(), True)
    eq(r.ping(), True)


@scenario()
def echo(ctx):
    eq(ctx.client().echo("hello there"), b"hello there")
    eq(ctx.client(decode_responses=True).echo("héllo"), "héllo")


@scenario()
def set_get_bytes(ctx):
    r = ctx.client()
    k = ctx.key("bytes")
    value = b"\x00\xff\r\nbinary\x01"
    eq(r.set(k, value), True)
    eq(r.get(k), value)
    eq(r.get(k), value, "second GET")


@scenario()
def set_get_decoded(ctx):
    r = ctx.client(decode_responses=True)
    k = ctx.key("text")
    eq(r.set(k, "héllo wörld"), True)
    eq(r.get(k), "héllo wörld")
    eq(r.get(k), "héllo wörld", "second GET")
    eq(r.get(ctx.key("missing")), None)


@scenario()
def get_missing(ctx):
    r = ctx.client()
    k = ctx.key("missing")
    eq(r.get(k), None)
    eq(r.get(k), None, "second GET (a cached nil through sidecache)")


@scenario(proxy_only=True)
def cached_get_twice(ctx):
    r = ctx.client()
    wait_caching(ctx, r)
    for k, value in ((ctx.key("cached"), b"cached value"), (ctx.key("cached-missing"), None)):
        if value is not None:
            ctx.direct.set(k, value)
        eq(r.get(k), value, "first GET")
        before = ctx.get_calls()
        eq(r.get(k), value, "second GET")
        eq(ctx.get_calls() - before, 0, "GETs of {} that reached Redis".format(k))


@scenario()
def mset_mget(ctx):
    r = ctx.client()
    a, b, missing = ctx.key("a"), ctx.key("b"), ctx.key("missing")
    eq(r.mset({a: "1", b: b"two"}), True)
    eq(r.mget([a, missing, b]), [b"1", None, b"two"])
    eq(r.get(a), b"1")


@scenario()
def incr(ctx):
    r = ctx.client()
    k = ctx.key("counter")
    eq(r.incr(k), 1)
    eq(r.incrby(k, 5), 6)
    eq(r.decr(k), 5)
    eq(r.get(k), b"5")
    eq(r.incrbyfloat(k, 0.5), 5.5)
    eq(r.get(k), b"5.5")


@scenario()
def hset_hgetall(ctx):
    r = ctx.client()
    k = ctx.key("hash")
    eq(r.hset(k, mapping={"f1": "v1", "f2": "v2"}), 2)
    eq(r.hgetall(k), {b"f1": b"v1", b"f2": b"v2"})
    eq(r.hget(k, "f2"), b"v2")
    eq(r.hgetall(ctx.key("missing")), {})
    eq(ctx.client(decode_responses=True).hgetall(k), {"f1": "v1", "f2": "v2"})


@scenario()
def lpush_lrange(ctx):
    r = ctx.client()
    k = ctx.key("list")
    eq(r.lpush(k, "a", "b", "c"), 3)
    eq(r.lrange(k, 0, -1), [b"c", b"b", b"a"])
    eq(r.lrange(ctx.key("missing"), 0, -1), [])


@scenario()
def sadd_smembers(ctx):
    r = ctx.client()
    k = ctx.key("set")
    eq(r.sadd(k, "a", "b", "a"), 2)
    eq(r.smembers(k), {b"a", b"b"})
    eq(r.smembers(ctx.key("missing")), set())


@scenario()
def zadd_zrange_withscores(ctx):
    r = ctx.client()
    k = ctx.key("zset")
    eq(r.zadd(k, {"a": 1, "b": 2.5, "c": -0.25}), 3)
    eq(r.zrange(k, 0, -1, withscores=True), [(b"c", -0.25), (b"a", 1.0), (b"b", 2.5)])
    eq(r.zrange(k, 0, -1), [b"c", b"a", b"b"])
    eq(r.zscore(k, "b"), 2.5)
    eq(r.zscore(k, "nosuch"), None)


@scenario()
def expire_ttl(ctx):
    r = ctx.client()
    k = ctx.key("expiring")
    eq(r.set(k, "v"), True)
    eq(r.ttl(k), -1)
    eq(r.expire(k, 100), True)
    ttl = r.ttl(k)
    if not (isinstance(ttl, int) and 90 <= ttl <= 100):
        raise AssertionError("TTL after EXPIRE 100: {!r}".format(ttl))
    eq(r.persist(k), True)
    eq(r.ttl(k), -1)
    eq(r.ttl(ctx.key("missing")), -2)


@scenario()
def delete(ctx):
    r = ctx.client()
    a, b = ctx.key("del-a"), ctx.key("del-b")
    r.mset({a: "1", b: "2"})
    eq(r.get(a), b"1")  # cached through sidecache
    eq(r.delete(a, b, ctx.key("missing")), 2)
    eq(r.exists(a, b), 0)
    eq(r.get(a), None)
    eq(r.get(b), None)


@scenario()
def pipeline_mixed(ctx):
    r = ctx.client()
    k, h, lst, z, missing = (ctx.key(n) for n in ("str", "hash", "list", "zset", "missing"))
    p = r.pipeline(transaction=False)
    p.set(k, "v")
    p.get(k)
    p.get(missing)
    p.incr(k + ":n")
    p.hset(h, mapping={"f": "1"})
    p.hgetall(h)
    p.rpush(lst, "x", "y")
    p.lrange(lst, 0, -1)
    p.zadd(z, {"m": 1.5})
    p.zrange(z, 0, -1, withscores=True)
    p.ping()
    p.echo("e")
    p.get(k)
    eq(
        p.execute(),
        [
            True,
            b"v",
            None,
            1,
            1,
            {b"f": b"1"},
            2,
            [b"x", b"y"],
            1,
            [(b"m", 1.5)],
            True,
            b"e",
            b"v",
        ],
    )


@scenario()
def client_setname_getname(ctx):
    r = ctx.client(single_connection_client=True)
    try:
        eq(r.client_getname(), None, "name before CLIENT SETNAME")
        eq(r.client_setname("scenario-client"), True)
        # redis-py decodes client names whatever decode_responses says.
        eq(r.client_getname(), "scenario-client")
    finally:
        r.close()


@scenario(proxy_only=True)
def direct_write_seen_within_100ms(ctx):
    r = ctx.client()
    wait_caching(ctx, r)
    slowest = 0.0
    for i in range(10):
        k = ctx.key("direct")
        old, new = "old-{}".format(i).encode(), "new-{}".format(i).encode()
        ctx.direct.set(k, old)
        eq(r.get(k), old)
        before = ctx.get_calls()
        eq(r.get(k), old)
        eq(ctx.get_calls() - before, 0, "second GET of {} reaching Redis".format(k))
        ctx.direct.set(k, new)
        acked = time.monotonic()
        while True:
            started = time.monotonic()
            got = r.get(k)
            if got == new:
                slowest = max(slowest, started - acked)
                break
            eq(got, old, "GET while the direct write propagates")
            if started - acked > PROPAGATION:
                raise AssertionError(
                    "GET {} started {:.0f} ms after the direct write's ack still returned {!r}".format(
                        k, (started - acked) * 1000, got
                    )
                )
            time.sleep(0.002)
    print("    (slowest propagation {:.1f} ms)".format(slowest * 1000))


@scenario()
def read_your_writes(ctx):
    r = ctx.client()
    other = ctx.client()
    k = ctx.key("ryw")
    for i in range(50):
        v = str(i).encode()
        eq(r.set(k, v), True)
        eq(r.get(k), v, "own read after write {}".format(i))
        eq(other.get(k), v, "other client's read after write {}".format(i))
        eq(other.get(k), v, "other client's second read after write {}".format(i))
    eq(other.delete(k), 1)
    eq(r.get(k), None)


@scenario()
def transaction_pipeline(ctx):
    r = ctx.client()
    k = ctx.key("tx")
    p = r.pipeline(transaction=True)
    p.set(k, "in-transaction")
    p.get(k)
    eq(p.execute(), [True, b"in-transaction"])
    eq(ctx.direct.get(k), b"in-transaction")
    eq(r.ping(), True)


@scenario()
def pipeline_no_transaction(ctx):
    r = ctx.client()
    other = ctx.client()
    k, n, lst = ctx.key("plain"), ctx.key("n"), ctx.key("list")
    r.set(k, "before")
    eq(r.get(k), b"before")  # cached through sidecache
    p = r.pipeline(transaction=False)
    for i in range(500):
        p.set(k, str(i))
        p.get(k)
    p.rpush(lst, "a")
    p.incr(lst)  # WRONGTYPE: the commands around it still run
    p.incr(n)
    p.get(k)
    results = p.execute(raise_on_error=False)
    eq(len(results), 1004, "number of results")
    for i in range(500):
        eq(results[2 * i], True, "SET {}".format(i))
        eq(results[2 * i + 1], str(i).encode(), "GET after SET {}".format(i))
    eq(results[1000], 1)
    if not isinstance(results[1001], redis.ResponseError) or "WRONGTYPE" not in str(results[1001]):
        raise AssertionError("INCR of a list gave {!r}, not a WRONGTYPE error".format(results[1001]))
    eq(results[1002], 1)
    eq(results[1003], b"499")
    eq(other.get(k), b"499")
    eq(ctx.direct.get(k), b"499")
    # By default the first error is raised, after every command ran.
    p = r.pipeline(transaction=False)
    p.incr(lst)
    p.incr(n)
    raises_response_error(p.execute, "WRONGTYPE", "a pipeline with an INCR of a list raised nothing")
    eq(r.get(n), b"2")


@scenario()
def transaction_pipeline_mixed(ctx):
    r = ctx.client()
    other = ctx.client()
    k, n, h, lst, s, z, missing = (
        ctx.key(name) for name in ("str", "n", "hash", "list", "set", "zset", "missing")
    )
    r.set(k, "before")
    eq(r.get(k), b"before")  # cached through sidecache
    eq(other.get(k), b"before")
    p = r.pipeline()  # transaction=True: MULTI ... EXEC
    p.get(k)
    p.set(k, "in-transaction")
    p.get(k)
    p.incr(n)
    p.incrby(n, 4)
    p.hset(h, mapping={"f": "1", "g": "2"})
    p.hgetall(h)
    p.rpush(lst, "x", "y")
    p.lrange(lst, 0, -1)
    p.sadd(s, "a", "b")
    p.smembers(s)
    p.zadd(z, {"m": 1.5, "n": -2})
    p.zrange(z, 0, -1, withscores=True)
    p.zscore(z, "m")
    p.get(missing)
    p.delete(missing)
    p.ping()
    eq(
        p.execute(),
        [
            b"before",
            True,
            b"in-transaction",
            1,
            5,
            2,
            {b"f": b"1", b"g": b"2"},
            2,
            [b"x", b"y"],
            2,
            {b"a", b"b"},
            2,
            [(b"n", -2.0), (b"m", 1.5)],
            1.5,
            None,
            0,
            True,
        ],
    )
    eq(r.get(k), b"in-transaction", "own GET after EXEC")
    eq(other.get(k), b"in-transaction", "another client's GET after EXEC")
    # A run-time error: the transaction's other commands still run.
    p = r.pipeline()
    p.set(n, "10")
    p.lpush(k, "x")
    p.get(n)
    results = p.execute(raise_on_error=False)
    eq(results[0], True)
    if not isinstance(results[1], redis.ResponseError) or "WRONGTYPE" not in str(results[1]):
        raise AssertionError("LPUSH to a string gave {!r}, not a WRONGTYPE error".format(results[1]))
    eq(results[2], b"10")
    p = r.pipeline()
    p.incr(n)
    p.lpush(k, "x")
    raises_response_error(p.execute, "WRONGTYPE", "a transaction with an LPUSH to a string raised nothing")
    eq(r.get(n), b"11")
    # A queue-time error: nothing runs (EXECABORT).
    p = r.pipeline()
    p.set(k, "never")
    p.execute_command("NOSUCHCOMMAND", k)
    raises_response_error(p.execute, "unknown command", "a transaction with an unknown command raised nothing")
    eq(r.get(k), b"in-transaction")
    eq(ctx.direct.get(k), b"in-transaction")
    eq(r.ping(), True)


@scenario()
def watch_touched_and_untouched(ctx):
    r = ctx.client()
    k = ctx.key("watched")
    eq(r.set(k, "1"), True)
    eq(r.get(k), b"1")  # cached through sidecache
    with r.pipeline() as p:
        p.watch(k)
        eq(p.get(k), b"1")
        ctx.direct.set(k, "2")
        p.multi()
        p.set(k, "3")
        try:
            result = p.execute()
        except redis.WatchError:
            pass
        else:
            raise AssertionError("EXEC ran although the watched key changed: {!r}".format(result))
    eq(r.get(k), b"2")
    with r.pipeline() as p:
        p.watch(k)
        v = p.get(k)
        p.multi()
        p.set(k, int(v) + 1)
        eq(p.execute(), [True])
    eq(r.get(k), b"3")
    with r.pipeline() as p:
        p.watch(k)
        p.unwatch()
        ctx.direct.set(k, "10")
        p.multi()
        p.incr(k)
        eq(p.execute(), [11])
    eq(r.get(k), b"11")
    eq(r.ping(), True)


def pubsub_msg(type_, channel, data, pattern=None):
    """A message as redis-py's PubSub.get_message() returns it."""
    return {"type": type_, "pattern": pattern, "channel": channel, "data": data}


def next_message(p, what, timeout=2.0):
    """The next message get_message() returns (None, for a message it ignored or
    gave to a handler, does not count), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no pub/sub message within {}s, expected {}".format(timeout, what))
        message = p.get_message(timeout=left)
        if message is not None:
            return message


def expect_messages(p, wants):
    for i, want in enumerate(wants):
        eq(next_message(p, want), want, "pub/sub message {} of {}".format(i + 1, len(wants)))


def expect_no_message(p, wait=0.2):
    eq(p.get_message(timeout=wait), None, "a pub/sub message where none was due")


@scenario()
def pubsub_subscribe_publish_unsubscribe(ctx):
    r, pub = ctx.client(), ctx.client()
    ch1, ch2 = ctx.key("ch1").encode(), ctx.key("ch2").encode()
    base = ctx.key("pat").encode()
    pat, px, py, both = base + b".*", base + b".x", base + b".y", base + b".both"
    p = r.pubsub()
    p.subscribe(ch1, ch2)
    p.psubscribe(pat)
    expect_messages(
        p,
        [
            pubsub_msg("subscribe", ch1, 1),
            pubsub_msg("subscribe", ch2, 2),
            pubsub_msg("psubscribe", pat, 3),
        ],
    )
    expect_no_message(p)
    # Publishers through sidecache and to Redis itself, in one order.
    eq(pub.publish(ch1, "a"), 1, "PUBLISH through the client")
    eq(pub.publish(px, "b"), 1, "PUBLISH matching the pattern")
    eq(ctx.direct.publish(ch2, "c"), 1, "PUBLISH to Redis itself")
    eq(ctx.direct.publish(py, "d"), 1, "PUBLISH to Redis itself matching the pattern")
    wants = [
        pubsub_msg("message", ch1, b"a"),
        pubsub_msg("pmessage", px, b"b", pat),
        pubsub_msg("message", ch2, b"c"),
        pubsub_msg("pmessage", py, b"d", pat),
    ]
    for i in range(40):
        publisher = pub if i % 3 else ctx.direct
        channel = (ch1, ch2, px, py)[i % 4]
        eq(publisher.publish(channel, str(i)), 1, "PUBLISH {}".format(i))
        wants.append(
            pubsub_msg("pmessage", channel, str(i).encode(), pat)
            if channel in (px, py)
            else pubsub_msg("message", channel, str(i).encode())
        )
    expect_messages(p, wants)
    # A channel that is subscribed and matches the pattern: two messages.
    p.subscribe(both)
    expect_messages(p, [pubsub_msg("subscribe", both, 4)])
    eq(pub.publish(both, "e"), 2, "PUBLISH to a channel subscribed and matching the pattern")
    expect_messages(p, [pubsub_msg("message", both, b"e"), pubsub_msg("pmessage", both, b"e", pat)])
    # A second subscriber of ch2.
    q = ctx.client().pubsub()
    q.subscribe(ch2)
    expect_messages(q, [pubsub_msg("subscribe", ch2, 1)])
    eq(pub.publish(ch2, "f"), 2, "PUBLISH to a channel with two subscribers")
    expect_messages(p, [pubsub_msg("message", ch2, b"f")])
    expect_messages(q, [pubsub_msg("message", ch2, b"f")])
    q.unsubscribe(ch2)
    expect_messages(q, [pubsub_msg("unsubscribe", ch2, 0)])
    q.close()
    # Unsubscribed from ch1: a PUBLISH to it reaches no one.
    p.unsubscribe(ch1)
    expect_messages(p, [pubsub_msg("unsubscribe", ch1, 3)])
    eq(pub.publish(ch1, "lost"), 0, "PUBLISH to an unsubscribed channel")
    eq(ctx.direct.publish(ch1, "lost"), 0, "PUBLISH to Redis to an unsubscribed channel")
    eq(pub.publish(ch2, "kept"), 1)
    expect_messages(p, [pubsub_msg("message", ch2, b"kept")])
    p.punsubscribe()
    expect_messages(p, [pubsub_msg("punsubscribe", pat, 2)])
    eq(pub.publish(px, "lost"), 0, "PUBLISH matching an unsubscribed pattern")
    eq(pub.publish(both, "g"), 1)
    expect_messages(p, [pubsub_msg("message", both, b"g")])
    # UNSUBSCRIBE without channels: one acknowledgement each, in no set order.
    p.unsubscribe()
    last = [next_message(p, "unsubscribe"), next_message(p, "unsubscribe")]
    eq([m["type"] for m in last], ["unsubscribe", "unsubscribe"])
    eq(sorted(m["channel"] for m in last), sorted([ch2, both]), "unsubscribed channels")
    eq([m["data"] for m in last], [1, 0], "subscription counts")
    expect_no_message(p)
    p.close()
    # Redis (and sidecache) may take a moment to see the connection close.
    deadline = time.monotonic() + 1.0
    while pub.publish(ch2, "nobody") != 0:
        if time.monotonic() > deadline:
            raise AssertionError("PUBLISH still reaches a subscriber 1 s after it closed")
        time.sleep(0.01)


@scenario()
def pubsub_ignore_subscribe_messages_and_handlers(ctx):
    r, pub = ctx.client(), ctx.client()
    ch = ctx.key("ignored").encode()
    p = r.pubsub(ignore_subscribe_messages=True)
    p.subscribe(ch)
    # A PING's pong is never ignored: it comes after the (ignored) acknowledgement.
    p.ping("ready")
    expect_messages(p, [pubsub_msg("pong", None, b"ready")])
    eq(pub.publish(ch, "x"), 1)
    eq(ctx.direct.publish(ch, "y"), 1)
    expect_messages(p, [pubsub_msg("message", ch, b"x"), pubsub_msg("message", ch, b"y")])
    p.unsubscribe()
    expect_no_message(p)
    p.close()

    # Handlers: get_message() calls them and returns None.
    hch = ctx.key("handled").encode()
    hbase = ctx.key("hpat").encode()
    hpat, hpx = hbase + b".*", hbase + b".x"
    got = []
    p = r.pubsub()
    p.subscribe(**{hch.decode(): got.append})
    p.psubscribe(**{hpat.decode(): got.append})
    expect_messages(p, [pubsub_msg("subscribe", hch, 1), pubsub_msg("psubscribe", hpat, 2)])
    eq(pub.publish(hch, "h1"), 1)
    eq(ctx.direct.publish(hpx, "h2"), 1)
    eq(pub.publish(hch, "h3"), 1)
    deadline = time.monotonic() + 2.0
    while len(got) < 3 and time.monotonic() < deadline:
        eq(p.get_message(timeout=0.2), None, "get_message() with a handler")
    eq(
        got,
        [
            pubsub_msg("message", hch, b"h1"),
            pubsub_msg("pmessage", hpx, b"h2", hpat),
            pubsub_msg("message", hch, b"h3"),
        ],
        "messages given to the handlers",
    )
    p.close()

    # run_in_thread: a thread calls the handler for each message.
    tch = ctx.key("threaded").encode()
    collected = []
    p = r.pubsub()
    p.subscribe(**{tch.decode(): collected.append})
    expect_messages(p, [pubsub_msg("subscribe", tch, 1)])
    thread = p.run_in_thread(sleep_time=0.01, daemon=True)
    try:
        for i in range(100):
            eq((pub if i % 2 else ctx.direct).publish(tch, str(i)), 1, "PUBLISH {}".format(i))
        deadline = time.monotonic() + 5.0
        while len(collected) < 100 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
    finally:
        thread.stop()
        thread.join(2.0)
    eq(thread.is_alive(), False, "the pub/sub thread still running after stop()")
    eq(
        collected,
        [pubsub_msg("message", tch, str(i).encode()) for i in range(100)],
        "messages the thread's handler collected",
    )


@scenario()
def pubsub_message_before_a_later_reply(ctx):
    # Redis queues a message for its subscribers before it answers the
    # PUBLISH, so a command the subscriber sends after the publisher heard
    # back is answered after the message.
    r, pub = ctx.client(), ctx.client()
    k = ctx.key("value")
    eq(r.set(k, "v"), True)
    eq(r.get(k), b"v")
    ch = ctx.key("ordered").encode()
    p = r.pubsub()
    p.subscribe(ch)
    expect_messages(p, [pubsub_msg("subscribe", ch, 1)])
    for i in range(300):
        eq(pub.publish(ch, str(i)), 1)
        if ctx.args.protocol == 3 and i % 2:
            p.execute_command("GET", k)
            reply = b"v"
        else:
            p.ping(str(i))
            reply = str(i).encode()
        expect_messages(
            p,
            [pubsub_msg("message", ch, str(i).encode()), pubsub_msg("pong", None, reply)],
        )
    p.close()


@scenario()
def pubsub_ping_and_commands_while_subscribed(ctx):
    r, pub = ctx.client(), ctx.client()
    k = ctx.key("value")
    eq(r.set(k, "v"), True)
    eq(r.get(k), b"v")  # cached through sidecache
    ch = ctx.key("pinged").encode()
    p = r.pubsub()
    p.subscribe(ch)
    expect_messages(p, [pubsub_msg("subscribe", ch, 1)])
    p.ping()
    expect_messages(p, [pubsub_msg("pong", None, b"")])
    p.ping("hello")
    expect_messages(p, [pubsub_msg("pong", None, b"hello")])
    eq(pub.publish(ch, "m1"), 1)
    expect_messages(p, [pubsub_msg("message", ch, b"m1")])
    p.ping("after m1")
    expect_messages(p, [pubsub_msg("pong", None, b"after m1")])
    if ctx.args.protocol == 3:
        # RESP3 allows any command while subscribed. redis-py's PubSub sends it
        # and hands its reply to get_message(), which calls any bulk reply a pong.
        p.execute_command("GET", k)
        expect_messages(p, [pubsub_msg("pong", None, b"v")])
        eq(pub.publish(ch, "m2"), 1)
        expect_messages(p, [pubsub_msg("message", ch, b"m2")])
        p.execute_command("GET", k)
        expect_messages(p, [pubsub_msg("pong", None, b"v")])
        p.execute_command("SET", k, "w")
        expect_messages(p, [pubsub_msg("pong", None, b"OK")])
        eq(ctx.direct.get(k), b"w")
        p.execute_command("GET", k)
        expect_messages(p, [pubsub_msg("pong", None, b"w")])
        eq(r.get(k), b"w", "another connection's GET after the subscribed client's SET")
        eq(pub.publish(ch, "m3"), 1)
        expect_messages(p, [pubsub_msg("message", ch, b"m3")])
    p.unsubscribe(ch)
    expect_messages(p, [pubsub_msg("unsubscribe", ch, 0)])
    p.close()
    eq(r.get(k), b"w" if ctx.args.protocol == 3 else b"v")


@scenario()
def blpop_worker(ctx):
    worker_r, producer, other = ctx.client(), ctx.client(), ctx.client()
    jobs, k = ctx.key("jobs"), ctx.key("meanwhile")
    n_jobs = 50
    got, errors, timeouts = [], [], [0]

    def worker():
        try:
            while len(got) < n_jobs:
                item = worker_r.blpop(jobs, timeout=2)
                if item is None:
                    timeouts[0] += 1
                    if timeouts[0] > 2:
                        raise AssertionError("BLPOP timed out 3 times with {} jobs".format(len(got)))
                    continue
                got.append(item)
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            errors.append("{}: {}".format(type(e).__name__, e))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    # Wait until Redis has a client blocked in BLPOP: the worker (or its pinned connection).
    deadline = time.monotonic() + 2.0
    while not any(c["cmd"] == "blpop" and "b" in c["flags"] for c in ctx.direct.client_list()):
        if time.monotonic() > deadline:
            raise AssertionError("no client blocked in BLPOP in Redis's CLIENT LIST after 2s")
        time.sleep(0.01)
    # Other clients are served while the worker blocks (its BLPOP waits up to 2 s).
    started = time.monotonic()
    for i in range(20):
        eq(other.set(k, i), True)
        eq(other.get(k), str(i).encode())
        eq(other.get(k), str(i).encode(), "second GET")
    took = time.monotonic() - started
    if took > 1.0:
        raise AssertionError("60 commands of another client took {:.2f}s while a BLPOP blocked".format(took))
    eq(got, [], "jobs before any was pushed")
    for i in range(n_jobs):
        length = producer.rpush(jobs, "job-{}".format(i))
        if not (isinstance(length, int) and 1 <= length <= i + 1):
            raise AssertionError("RPUSH of job {} replied {!r}".format(i, length))
        if i % 10 == 0:
            eq(other.set(k, "during-{}".format(i)), True)
            eq(other.get(k), "during-{}".format(i).encode())
    thread.join(5.0)
    eq(thread.is_alive(), False, "worker still running after 5 s")
    eq(errors, [], "worker errors")
    eq(got, [(jobs.encode(), "job-{}".format(i).encode()) for i in range(n_jobs)], "jobs the worker got")
    eq(ctx.direct.llen(jobs), 0, "jobs left")
    started = time.monotonic()
    eq(worker_r.blpop(jobs, timeout=1), None, "BLPOP on an empty list timing out")
    took = time.monotonic() - started
    if not 0.9 <= took < 3.0:
        raise AssertionError("BLPOP with timeout 1 returned after {:.2f}s".format(took))
    eq(other.get(k), "during-{}".format(n_jobs - 10).encode())
    if timeouts[0]:
        print("    ({} BLPOP timeouts in the worker)".format(timeouts[0]))


@scenario(group="contention")
def watch_retry_counter(ctx):
    """20 threads, each with its own client, add 1 to a counter 50 times by
    WATCH, GET, MULTI, SET, EXEC, retried on WatchError (r.transaction)."""
    threads_n, increments = 20, 50
    k = ctx.key("counter")
    lock = threading.Lock()
    stop = threading.Event()
    errors = []
    retries = [0]

    def worker():
        r = ctx.client()
        try:
            for _ in range(increments):
                if stop.is_set():
                    return
                attempts = [0]

                def add_one(pipe):
                    attempts[0] += 1
                    v = pipe.get(k)
                    pipe.multi()
                    pipe.set(k, int(v or 0) + 1)

                eq(r.transaction(add_one, k), [True], "EXEC's result")
                with lock:
                    retries[0] += attempts[0] - 1
        except Exception as e:  # noqa: BLE001 - reported by the scenario
            with lock:
                errors.append("{}: {}".format(type(e).__name__, e))
        finally:
            r.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(threads_n)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        stop.set()
    if errors:
        raise AssertionError("{} of {} threads failed: {}".format(len(errors), threads_n, errors))
    eq(ctx.direct.get(k), str(threads_n * increments).encode(), "the counter in Redis")
    eq(ctx.client().get(k), str(threads_n * increments).encode(), "the counter read back")
    print("    ({} WATCH retries)".format(retries[0]))


class ScenarioTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise ScenarioTimeout("scenario took more than {}s".format(SCENARIO_TIMEOUT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True, help="sidecache's port")
    ap.add_argument("--redis-port", type=int, required=True, help="Redis's own port")
    ap.add_argument("--protocol", type=int, choices=(2, 3), required=True)
    ap.add_argument("--direct", action="store_true", help="--port is Redis itself")
    ap.add_argument(
        "--group",
        action="append",
        choices=GROUPS,
        help="run only this group's scenarios (repeatable; default: all groups)",
    )
    args = ap.parse_args()
    groups = set(args.group or GROUPS)
    # Each line out at once, also into a file: a run killed half way still shows where.
    sys.stdout.reconfigure(line_buffering=True)

    ctx = Ctx(args)
    print(
        "redis-py {} ({}), port {}, {}, groups {}".format(
            redis.__version__,
            "protocol=2" if args.protocol == 2 else "default protocol",
            args.port,
            "direct to Redis" if args.direct else "through sidecache",
            ", ".join(g for g in GROUPS if g in groups),
        )
    )
    passed = failed = 0
    run_started = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    for name, fn, proxy_only, group in SCENARIOS:
        if group not in groups:
            continue
        if proxy_only and args.direct:
            print("skip {} (needs sidecache)".format(name))
            continue
        started = time.monotonic()
        if started - run_started > RUN_BUDGET:
            failed += 1
            print("FAIL {}: not run, the run took more than {:.0f}s".format(name, RUN_BUDGET))
            continue
        signal.alarm(SCENARIO_TIMEOUT)
        try:
            try:
                fn(ctx)
            finally:
                signal.alarm(0)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failed += 1
            print("FAIL {}: {}: {}".format(name, type(e).__name__, e))
            for line in traceback.format_exc().rstrip().splitlines():
                print("    " + line)
        else:
            passed += 1
            print("ok   {} ({:.0f} ms)".format(name, (time.monotonic() - started) * 1000))
    print("{} passed, {} failed".format(passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
