"""Kopf handlers, one resource per module. Importing this package registers them."""

from flywheel.handlers import admission, approval, history, incident, intake, metrics, run

__all__ = ["admission", "approval", "history", "incident", "intake", "metrics", "run"]
