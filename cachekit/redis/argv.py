"""The arguments of ``commit.lua``, built in one place (pinned by ``tests/test_redis_scripts.py``).

Layout, for ``n`` leases and the value keys after them::

    KEYS = lease_1 .. lease_n, value_1 .. value_m
    ARGV = n, token_1 .. token_n,
           then per value key: read, read_raw, op [, raw, ttl]

``read`` is ``'-'`` (nothing to check), ``'0'`` (it was missing) or ``'1'``
(it held ``read_raw``); ``op`` is ``'d'`` (delete) or ``'s'`` (set, followed by
the raw value and the ttl: ``''`` keep the key's TTL, ``'0'`` none, else ms).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Read:
    """What a transaction read of a key: ``present`` with ``raw``, or missing."""

    present: bool
    raw: bytes = b""


@dataclass(frozen=True)
class Write:
    """A key's new raw value and its ttl argument."""

    raw: bytes
    ttl: str


def encode_commit(
    fenced: Sequence[tuple[str, str]],
    values: Sequence[str],
    writes: Mapping[str, Write],
    deletes: Collection[str],
    read: Mapping[str, Read | None],
) -> tuple[list[str], list[str | bytes | int]]:
    """The KEYS and ARGV of a commit.

    ``fenced``: (lease key, token) pairs. ``values``: the value keys in order,
    as stored (with their prefix), each either in ``writes`` or in
    ``deletes``; ``read`` maps a value key to what was read of it (absent:
    nothing to check, ``None``: it was missing).
    """
    keys = [lease for lease, _ in fenced]
    args: list[str | bytes | int] = [len(fenced), *(token for _, token in fenced)]
    for key in values:
        keys.append(key)
        if key not in read:
            args += ["-", b""]
        else:
            seen = read[key]
            args += ["1", seen.raw] if seen is not None and seen.present else ["0", b""]
        write = writes.get(key)
        if write is not None:
            args += ["s", write.raw, write.ttl]
        elif key in deletes:
            args.append("d")
        else:
            raise ValueError(f"value key {key!r} is neither written nor deleted")
    return keys, args
