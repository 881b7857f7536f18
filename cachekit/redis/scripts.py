"""The Lua scripts of ``scripts/*.lua``, registered with redis-py.

Each script's contract (KEYS, ARGV, reply) is stated at its top; ``lib.lua``
(lease parsing, the server clock, storing with a TTL) is prepended to every
one. redis-py's ``register_script`` calls a script by its SHA1 and loads it
again when the server answers NOSCRIPT (after a restart or a SCRIPT FLUSH).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any, Final

NAMES: Final = (
    "acquire",
    "renew",
    "release",
    "held",
    "holder",
    "incr_expire",
    "compare_and_set",
    "commit",
    "limit_fixed",
    "limit_moving",
    "limit_sliding",
)


@cache
def source(name: str) -> str:
    """The full source of script ``name``: ``lib.lua`` followed by ``<name>.lua``."""
    folder = files(__package__) / "scripts"
    return (folder / "lib.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


class Scripts:
    """Every cachekit script, registered on one client: ``scripts.acquire(keys, args)``."""

    def __init__(self, client: Any) -> None:
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    acquire: Any
    renew: Any
    release: Any
    held: Any
    holder: Any
    incr_expire: Any
    compare_and_set: Any
    commit: Any
    limit_fixed: Any
    limit_moving: Any
    limit_sliding: Any
