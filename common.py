"""The app's one shared cache object. Import it anywhere: ``from common import cache``.

It is bound to an app with ``cache.init_app(app)`` (see ``app.py``); which
backend it uses is configuration (``CACHE_TYPE``), switched per deployment.
"""

from flask_caching import Cache

cache = Cache()
