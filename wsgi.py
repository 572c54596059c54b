"""The WSGI entry point of a checkout: `gunicorn wsgi:app`, or any WSGI server.

The app is built in webapp/wsgi.py, which an installed package carries too
(`gunicorn webapp.wsgi:app`); this module keeps the short name working here.
"""

from webapp.wsgi import app

__all__ = ["app"]
