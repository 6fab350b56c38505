"""Kopf handlers, one resource per module. Importing this package registers them."""

from flywheel.handlers import incident

__all__ = ["incident"]
