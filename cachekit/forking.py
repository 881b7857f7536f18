"""Every at-fork hook of the package, registered with the interpreter in one place.

gunicorn's ``--preload`` master, its recycled workers and any ``os.fork``
copy a process with its threads gone and its locks in whatever state they
were. Each module that keeps per-process state registers what to do here
(:func:`at_fork`), and this module registers one hook of each kind with
:func:`os.register_at_fork`.

Order, as the interpreter's own: ``before`` hooks run in the reverse order
of registration, ``after_in_parent`` and ``after_in_child`` hooks in the
order of registration. So a module registered after another (one that
imports it) prepares for the fork first and is put right after it last.
Invariant: a hook never raises into the fork (one that fails is logged and
the others still run), and an ``after_in_child`` hook uses plain data only
(another thread of the parent may have held any lock at the fork).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

Hook = Callable[[], None]

_before: list[Hook] = []
_after_in_parent: list[Hook] = []
_after_in_child: list[Hook] = []


def at_fork(
    *,
    before: Hook | None = None,
    after_in_parent: Hook | None = None,
    after_in_child: Hook | None = None,
) -> None:
    """Run these around every fork of this process (see the module's docstring for order)."""
    if before is not None:
        _before.append(before)
    if after_in_parent is not None:
        _after_in_parent.append(after_in_parent)
    if after_in_child is not None:
        _after_in_child.append(after_in_child)


def _run(hooks: list[Hook]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception:  # a fork must go on: the hook's module is left to cope
            log.exception("cachekit: an at-fork hook failed")


os.register_at_fork(
    before=lambda: _run(_before[::-1]),
    after_in_parent=lambda: _run(_after_in_parent),
    after_in_child=lambda: _run(_after_in_child),
)
