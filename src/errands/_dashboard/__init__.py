"""The web dashboard (``errands.dashboard(auth=...)``, ``errands dashboard``): an ASGI
app of server-rendered pages (Jinja2), a JSON API, and the buttons retry, cancel and
purge. Needs the ``dashboard`` extra (Jinja2)."""

from ._app import build
from ._guard import Auth, check_auth

__all__ = ["Auth", "build", "check_auth"]
