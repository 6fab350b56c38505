"""Kopf handlers, one resource per module. Importing this package registers them."""

from flywheel.handlers import history, incident, intake, metrics, run

__all__ = ["history", "incident", "intake", "metrics", "run"]
