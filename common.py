"""The app's one shared cache object, cachekit's extension for it, and its rate limiter.

Import them anywhere: ``from common import cache``. All are bound to an app
in its factory (see ``app.py``): ``cache.init_app(app)``, then
``kit.init_app(app)``, which checks the backend and refuses, at start-up, a
setup that would lose state, then ``limiter.init_app(app)``, which counts in
that same cache (``RATELIMIT_STORAGE_URI = "cachekit://"``). Which backend is
used is configuration (``CACHE_TYPE``), switched per deployment.
"""

from flask_caching import Cache
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from cachekit import CacheKit

cache = Cache()
kit = CacheKit(cache)
limiter = Limiter(get_remote_address)
