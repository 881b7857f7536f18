"""cachekit on Redis, Redis Sentinel and Redis Cluster.

- :mod:`.strategy`: the operations (``RedisStrategy``);
- :mod:`.leases`: the locks (leases, fencing tokens, proof of a holder's death);
- :mod:`.scripts` and ``scripts/*.lua``: the server-side scripts;
- :mod:`.argv`: the commit script's arguments;
- :mod:`.server`: what the server says about eviction, persistence, version;
- :mod:`.translate`: redis-py's errors as cachekit's.
"""

from .strategy import RedisStrategy

__all__ = ["RedisStrategy"]
