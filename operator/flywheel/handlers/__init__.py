"""Kopf handlers, one resource per module. Importing this package registers them.

Every handler is ``async def``, index functions and admission checks included, though most of
them never await: Kopf runs a synchronous handler in a worker thread (a thread hop and a task
per call), and index functions run for every watch event of their kind.

``flywheel.handlers.admission`` is imported only when admission webhooks are served
(``FLYWHEEL_WEBHOOK_MODE`` not off): Kopf refuses to run with webhook handlers and no server.
"""

from flywheel.handlers import (
    approval,
    catalogue,
    history,
    incident,
    intake,
    metrics,
    namespaces,
    retention,
    run,
)

__all__ = ["approval", "catalogue", "history", "incident", "intake", "metrics", "namespaces", "retention", "run"]
