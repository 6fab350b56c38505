"""Metrics for Prometheus and the JSON statistics endpoints.

A timer (:class:`flywheel.metrics.runtime.MetricsRuntime`) computes an immutable
:class:`~flywheel.metrics.snapshot.MetricsSnapshot` from the history database, Redis and the
resources the operator watches; scrapes (:mod:`flywheel.metrics.collector`,
:mod:`flywheel.metrics.server`) only read the latest snapshot and never query anything.
Funnel stalls found in a snapshot are announced by :mod:`flywheel.metrics.notifier`.
"""
