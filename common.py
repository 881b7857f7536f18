"""The app's one shared cache object, and cachekit's extension for it.

Import them anywhere: ``from common import cache``. Both are bound to an app
in its factory (see ``app.py``): ``cache.init_app(app)``, then
``kit.init_app(app)``, which checks the backend and refuses, at start-up, a
setup that would lose state. Which backend is used is configuration
(``CACHE_TYPE``), switched per deployment.
"""

from flask_caching import Cache

from cachekit import CacheKit

cache = Cache()
kit = CacheKit(cache)
