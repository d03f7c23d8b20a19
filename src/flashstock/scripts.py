"""Loads ``lua/`` once into a registry of scripts called by SHA.

A script may pull shared code in with a line ``--@include lib/NAME.lua``; the
line is replaced by that file's text when the script is loaded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

_INCLUDE = re.compile(r"^--@include (lib/[a-z_]+\.lua)$", re.M)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _read(rel: str) -> str:
    return resources.files("flashstock").joinpath("lua", rel).read_text()


def _expand(text: str) -> str:
    return _INCLUDE.sub(lambda m: _read(m.group(1)).rstrip("\n"), text)


@cache
def load(name: str) -> Script:
    source = _expand(_read(f"{name}.lua"))
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


def names() -> list[str]:
    root = resources.files("flashstock").joinpath("lua")
    return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".lua"))


class Scripts:
    """Calls scripts by SHA, loading a script's source only when Redis lacks it."""

    def __init__(self) -> None:
        self._scripts = {n: load(n) for n in names()}

    def __getitem__(self, name: str) -> Script:
        return self._scripts[name]

    async def call(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        s = self._scripts[name]
        try:
            return await client.evalsha(s.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(s.source, len(keys), *keys, *args)

    def call_sync(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        s = self._scripts[name]
        try:
            return client.evalsha(s.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(s.source, len(keys), *keys, *args)
