"""gunicorn settings for the demo, with what each one means for shared state.

Used by ``make demo`` (``gunicorn -c gunicorn.conf.py app:app``). Every value
can be overridden on the command line or with GUNICORN_CMD_ARGS.
"""

import os

# Several worker processes: each has its own memory, so module globals and
# SimpleCache are per worker. State that all workers must see lives in the
# shared cache (FileSystemCache on one machine, Redis across machines), and
# every read-modify-write of it goes through cachekit.
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))

# Threads per worker (gthread when > 1): cachekit's locks keep threads apart
# too, so threads and processes can be mixed freely.
threads = int(os.environ.get("DEMO_THREADS", "1"))

bind = os.environ.get("DEMO_BIND", "127.0.0.1:8000")

# --preload imports the app once in the master, before forking. cachekit is
# safe with it, also with gevent workers (-k gevent): thread locks are made
# again in each child after gevent patched it, lock-file descriptors hold no
# lock across a fork, and redis-py opens fresh connections per worker.
# Per-process resources (database clients and the like) must still be created
# after the fork: use cachekit.resources.PerProcess for them.
preload_app = False

# Recycling workers (max_requests) and killing stuck ones (timeout) lose no
# update: a lock dies with its process (on Redis: at once on the same machine,
# after its lease, CACHEKIT_LEASE, from another); a write is all or nothing.
max_requests = 10000
max_requests_jitter = 1000
timeout = 30

# A graceful stop lets each worker flush its cachekit statistics.
graceful_timeout = 10
