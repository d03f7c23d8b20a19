"""Every Lua script's header agrees with its code, with errors.py and with the engine's call.

A header reads::

    -- name: one sentence on what the script guarantees
    -- KEYS[1] ...
    -- ARGV[i] name: type ...        (ARGV[n..] for repeated trailing lines)
    -- returns ...
    -- refuses NAME, NAME
    -- events type, type             (or "none")
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import pytest
from reference import line

from flashstock import errors
from flashstock.engine import Engine
from flashstock.errors import RefusalCode
from flashstock.keys import Keys
from flashstock.scripts import names
from flashstock.settings import Settings

LUA = resources.files("flashstock").joinpath("lua")
SCRIPTS = names()
EVENT_TYPES = {
    "reserved", "released", "expired", "extended", "committed", "fulfilled", "cancelled",
    "returned", "counted", "adjusted", "policy", "low_stock",
}  # fmt: skip


@dataclass
class Header:
    name: str
    sentence: str
    keys: dict[int, str] = field(default_factory=dict)
    argv: dict[int, tuple[str, str]] = field(default_factory=dict)  # i -> (name, type text)
    trailing: int | None = None  # n of "ARGV[n..]"
    returns: str = ""
    refuses: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


@dataclass
class Script:
    header: Header
    body: str  # the script's own text after the header
    includes: list[str]


def parse(name: str) -> Script:
    text = LUA.joinpath(f"{name}.lua").read_text()
    lines = text.splitlines()
    head = []
    for ln in lines:
        if not ln.startswith("-- "):
            break
        head.append(ln[3:])
    first = re.fullmatch(r"([a-z_]+): (.+)", head[0])
    assert first, f"{name}: first line must be '-- name: sentence'"
    h = Header(first[1], first[2])
    for ln in head[1:]:
        if m := re.fullmatch(r"KEYS\[(\d+)\] (.+)", ln):
            h.keys[int(m[1])] = m[2]
        elif m := re.fullmatch(r"ARGV\[(\d+)\] ([a-z_]+): (.+)", ln):
            h.argv[int(m[1])] = (m[2], m[3])
        elif m := re.fullmatch(r"ARGV\[(\d+)\.\.\] ([a-z_]+): (.+)", ln):
            h.trailing = int(m[1])
        elif ln.startswith("returns "):
            h.returns = ln[len("returns ") :]
        elif ln.startswith("refuses "):
            h.refuses = [x.strip() for x in ln[len("refuses ") :].split(",")]
        elif ln.startswith("events "):
            ev = ln[len("events ") :].strip()
            h.events = [] if ev == "none" else [x.strip() for x in ev.split(",")]
        else:
            raise AssertionError(f"{name}: unexpected header line {ln!r}")
    body = "\n".join(lines[len(head) :])
    includes = re.findall(r"^--@include (lib/[a-z_]+\.lua)$", body, re.M)
    return Script(h, body, includes)


@cache
def helpers() -> dict[str, str]:
    """Body text of every ``local function`` in lua/lib/, by name."""
    out: dict[str, str] = {}
    for lib in ("common", "orders", "keys"):
        text = LUA.joinpath("lib", f"{lib}.lua").read_text()
        parts = re.split(r"^local function ([a-z_]+)\(", text, flags=re.M)
        for fname, chunk in zip(parts[1::2], parts[2::2], strict=True):
            out[fname] = chunk
    return out


def calls(text: str) -> set[str]:
    return {f for f in helpers() if re.search(rf"\b{f}\(", text)}


def reachable(text: str) -> str:
    """``text`` plus the bodies of every library function it calls, transitively."""
    seen: set[str] = set()
    todo = list(calls(text))
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += calls(helpers()[f])
    return text + "\n".join(helpers()[f] for f in sorted(seen))


def refusals_used(s: Script) -> set[str]:
    """Codes a script can return: every ``R.NAME`` it or its helpers use, except in comparisons."""
    return set(re.findall(r"(?<![=~]= )\bR\.([A-Z_]+)", reachable(s.body)))


def events_written(s: Script) -> set[str]:
    """Event types a script can write: its own ``type = '…'`` and order events, and reaping."""
    own = set(re.findall(r"type = '([a-z_]+)'", s.body))
    own |= set(re.findall(r"order_event\('([a-z_]+)'", s.body))
    own |= set(re.findall(r"end_hold\([^)]*'([a-z_]+)'", s.body))
    if {"expire_rsv", "reap_sku"} & calls(s.body):
        own.add("expired")
    return own


@pytest.mark.parametrize("name", SCRIPTS)
def test_header_shape(name):
    s = parse(name)
    h = s.header
    assert h.name == name
    assert h.sentence.endswith(".") and len(h.sentence) > 20
    assert h.keys == {1: 'partition base "{prefix}:{pN}:"'}
    assert h.argv[1][0] == "retention_ms" and h.argv[1][1].startswith("int")
    assert sorted(h.argv) == list(range(1, len(h.argv) + 1)), "ARGV numbered without gaps"
    assert h.trailing in (None, len(h.argv) + 1)
    assert h.returns.startswith("{0, ")
    assert h.refuses, "every script lists what it refuses"
    assert "lib/keys.lua" in s.includes and "lib/common.lua" in s.includes


@pytest.mark.parametrize("name", SCRIPTS)
def test_refusals_match_the_code(name):
    s = parse(name)
    listed = set(s.header.refuses)
    assert listed <= set(RefusalCode.__members__), listed - set(RefusalCode.__members__)
    used = refusals_used(s)
    assert used <= listed, f"{name} can refuse {sorted(used - listed)} but does not list it"
    assert listed <= used, f"{name} lists {sorted(listed - used)} but never refuses with it"


@pytest.mark.parametrize("name", SCRIPTS)
def test_events_match_the_code(name):
    s = parse(name)
    listed = set(s.header.events)
    assert listed <= EVENT_TYPES
    written = events_written(s)
    assert written <= listed, f"{name} writes {sorted(written - listed)} but does not list it"
    # low_stock comes from lib's move() and is only possible where available can fall.
    assert listed - written <= {"low_stock"}, sorted(listed - written)
    if "low_stock" in listed:
        assert "move" in calls(s.body)


@pytest.mark.parametrize("name", SCRIPTS)
def test_int_arguments_are_converted_at_once(name):
    s = parse(name)
    for i, (arg, kind) in s.header.argv.items():
        if kind.startswith("int"):
            assert re.search(rf"(tonumber|posint)\(ARGV\[{i}\][,)]", s.body), f"ARGV[{i}] {arg}"


def test_lua_refusal_table_mirrors_refusal_code():
    text = LUA.joinpath("lib", "common.lua").read_text()
    block = re.search(r"local R = \{(.*?)\n\}", text, re.S)
    assert block
    table = {k: int(v) for k, v in re.findall(r"([A-Z_]+) = (-?\d+)", block[1])}
    assert table == {c.name: c.value for c in RefusalCode}


def test_every_refusal_code_has_an_exception():
    for code in RefusalCode:
        exc = errors.refusal(code, {"lines": [], "sku": "A"})
        assert isinstance(exc, errors.FlashstockError) and exc.status >= 400
    codes = [errors.refusal(c, {}).code for c in RefusalCode]
    assert len(set(codes)) == len(codes)


# -- the engine's calls agree with ARGV -------------------------------------------------------


class Recorder:
    """Stands in for the script registry: records what the engine passes, answers success."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[Any]]] = []

    async def call(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        self.calls.append((name, keys, args))
        return 0, b"0"


ENGINE_CALLS = [
    lambda e: e.reserve([line("A", 1)]),
    lambda e: e.reserve([line("A", 1), line("B", 2, "w")], reservation_id="r", customer_id="c"),
    lambda e: e.get_reservation("r"),
    lambda e: e.extend("r", 10),
    lambda e: e.release("r"),
    lambda e: e.commit("r", "o"),
    lambda e: e.get_order("o"),
    lambda e: e.fulfill("o"),
    lambda e: e.fulfill("o", [line("A", 1), line("B", 1, "w")], fulfillment_id="f"),
    lambda e: e.cancel("o"),
    lambda e: e.cancel("o", [line("A", 1)]),
    lambda e: e.return_items("o", [line("A", 1)], restock=True),
    lambda e: e.return_items("o", [line("A", 1), line("B", 1)], restock=False, return_id="t"),
    lambda e: e.get_stock("A"),
    lambda e: e.set_on_hand("A", "w", 3),
    lambda e: e.set_on_hand("A", "w", 3, safety_stock=1, adjustment_id="x"),
    lambda e: e.adjust("A", "w", -1, "damaged"),
    lambda e: e.set_item("A", {"backorder": "allow"}),
    lambda e: e.set_item("A", {}, locations=["w"], merge=True),
    lambda e: e.sweep(e.partitions[0]),
    lambda e: e.rebuild_stock(e.partitions[0], b"[]", b"[]"),
    lambda e: e.rebuild_orders(e.partitions[0], b"[]"),
    lambda e: e.rebuild_holds(e.partitions[0], b"[]"),
    lambda e: e.rebuild_ids(e.partitions[0], b"[]"),
]


async def recorded_calls():
    rec = Recorder()
    engine = Engine(None, Settings(key_prefix="hdr"), scripts=rec)  # type: ignore[arg-type]
    for call in ENGINE_CALLS:
        await call(engine)
    return engine, rec.calls


async def test_engine_passes_what_each_header_declares():
    engine, seen = await recorded_calls()
    assert {name for name, _, _ in seen} == set(SCRIPTS), "every script has an engine caller"
    for name, keys, args in seen:
        h = parse(name).header
        assert keys == [engine.partitions[0].base]
        assert len(keys) == len(h.keys)
        assert args[0] == engine.settings.retention_seconds * 1000
        fixed = len(h.argv)
        if h.trailing is None:
            assert len(args) == fixed, (name, args)
        else:
            assert len(args) >= fixed and (len(args) - fixed) % 3 == 0, (name, args)
        for i, (_, kind) in h.argv.items():
            if kind.startswith("int") and args[i - 1] != "":
                assert isinstance(args[i - 1], int) and not isinstance(args[i - 1], bool)


# -- lua/lib/keys.lua and flashstock/keys.py spell the same names -----------------------------

KEY_WRAPPER = """
local BASE = KEYS[1]
{keys_lua}
local out = {{}}
for i = 1, #ARGV, 2 do
  local a, b = ARGV[i], ARGV[i + 1]
  for _, k in ipairs({{ k_level(a, b), k_holds(a, b), k_item(a), k_locs(a), k_rsv(a),
      k_order(a), k_cust(a, b), k_idem('adj', a), k_idem('ful', b), k_cust_holds(a),
      k_rate_cust(a), k_rate_key(b), k_rate_item(a, b) }}) do
    out[#out + 1] = k
  end
end
out[#out + 1] = K_EXP
out[#out + 1] = K_SKUS
out[#out + 1] = K_EVENTS
return out
"""

NASTY = [
    "a", "a:b", "b:c", "{x}", "}{", "{", "}", "%", "%25", "%3A", "a%3Ab", ":", "::", "a b",
    "ü", "商品:1", "\U0001f600", "x" * 128, "{p0}", "%%7B", "[%]", "a.b*c?", "-", "'\"",
]  # fmt: skip


def python_names(k: Keys, pairs: list[tuple[str, str]]) -> list[str]:
    out = []
    for a, b in pairs:
        out += [k.level(a, b), k.holds(a, b), k.item(a), k.locations(a), k.reservation(a),
                k.order(a), k.customer(a, b), k.idempotency("adj", a), k.idempotency("ful", b),
                k.customer_holds(a), k.rate_customer(a), k.rate_key(b), k.rate_item(a, b)]  # fmt: skip
    return out + [k.expiries, k.skus, k.events]


async def test_lua_and_python_key_names_agree(real_engine):
    rnd = random.Random(1234)
    alphabet = ":{}%ab ü商"
    pairs = [(a, b) for a in NASTY for b in NASTY[:6]] + [
        ("".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 9))),
         "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 9))))
        for _ in range(300)
    ]  # fmt: skip
    keys_lua = LUA.joinpath("lib", "keys.lua").read_text()
    for partition in (0, 7):
        k = Keys("fst-x.y_z", partition)
        args = [x for pair in pairs for x in pair]
        got = await real_engine.redis.eval(KEY_WRAPPER.format(keys_lua=keys_lua), 1, k.base, *args)
        assert [g.decode() for g in got] == python_names(k, pairs)


def test_escaping_is_injective_and_keeps_the_hash_tag():
    from redis.crc import key_slot

    from flashstock.keys import esc

    rnd = random.Random(99)
    parts = set(NASTY) | {
        "".join(rnd.choice(":{}%3AaB7D") for _ in range(rnd.randint(1, 8))) for _ in range(3000)
    }
    escaped = {esc(p) for p in parts}
    assert len(escaped) == len(parts)
    assert not any(set(e) & set(":{}") for e in escaped)
    k = Keys("fs", 3)
    assert {key_slot(k.level(p, p).encode()) for p in parts} == {key_slot(b"p3")}
