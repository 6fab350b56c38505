"""Flywheel: a Kubernetes operator that turns incidents into verified remediations."""

__version__ = "0.1.0"

__all__ = ["__version__"]
