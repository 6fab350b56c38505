"""Kopf handlers, one resource per module. Importing this package registers them.

``flywheel.handlers.admission`` is imported only when admission webhooks are served
(``FLYWHEEL_WEBHOOK_MODE`` not off): Kopf refuses to run with webhook handlers and no server.
"""

from flywheel.handlers import approval, history, incident, intake, metrics, run

__all__ = ["approval", "history", "incident", "intake", "metrics", "run"]
