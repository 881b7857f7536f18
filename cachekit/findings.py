"""What a check of a cache setup finds: one :class:`Finding` per problem or warning, with its fix.

Each strategy reports its own (:meth:`cachekit.strategy.Strategy.diagnose`);
:mod:`cachekit.doctor` gathers them for ``flask cachekit doctor`` and
:class:`~cachekit.CacheKit`'s start-up checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PROBLEM: Final = "problem"
WARNING: Final = "warning"
#: What kind of problem a finding is: the configuration (refused at start-up), the server
#: not answering (logged at start-up: not configuration), or a per-process backend (warned
#: at start-up: right for one process, refused at first use under several workers).
CONFIGURATION: Final = "configuration"
UNREACHABLE: Final = "unreachable"
PER_PROCESS: Final = "per-process"


@dataclass(frozen=True)
class Finding:
    """One thing a check found: ``level`` PROBLEM (doctor exits 1) or WARNING."""

    level: str
    what: str
    fix: str
    kind: str = CONFIGURATION
