"""Kopf's restarts of inactive watch streams, counted (``flywheel.metrics.runtime.WatchRestartCounter``).

Kopf (``settings.watching.inactivity_timeout``) restarts a watch stream that brought no event
and no bookmark for too long, and logs it at DEBUG on its watching logger. Scenario matrix:
- the message Kopf logs is counted and exposed as flywheel_watch_restarts_total;
- other watching messages are not counted; DEBUG records are dropped unless the operator's
  level is DEBUG, records above DEBUG always pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from flywheel.metrics.runtime import KOPF_WATCH_LOGGER, WatchRestartCounter

pytestmark = pytest.mark.unit

KOPF_MESSAGE = "Watch-stream for incidents.v1alpha1.flywheel.dev in 'shop' is inactive, reconnecting."


@pytest.fixture()
def counter() -> Iterator[WatchRestartCounter]:
    installed = WatchRestartCounter(show_debug=False)
    installed.install()
    yield installed
    installed.uninstall()


def test_an_inactive_stream_restart_is_counted_and_exposed(counter: WatchRestartCounter) -> None:
    registry = CollectorRegistry()
    registry.register(counter)
    watching = logging.getLogger(KOPF_WATCH_LOGGER)
    watching.debug(KOPF_MESSAGE)
    watching.debug("Starting the watch-stream for incidents.v1alpha1.flywheel.dev in 'shop'.")
    assert counter.restarts == 1
    assert registry.get_sample_value("flywheel_watch_restarts_total") == 1


def test_debug_records_pass_only_at_debug_level() -> None:
    quiet, verbose = WatchRestartCounter(show_debug=False), WatchRestartCounter(show_debug=True)
    debug = logging.LogRecord(KOPF_WATCH_LOGGER, logging.DEBUG, __file__, 1, KOPF_MESSAGE, None, None)
    warning = logging.LogRecord(KOPF_WATCH_LOGGER, logging.WARNING, __file__, 1, "Ignoring an event", None, None)
    assert (quiet.filter(debug), verbose.filter(debug)) == (False, True)
    assert quiet.filter(warning) and verbose.filter(warning)
    assert (quiet.restarts, verbose.restarts) == (1, 1)
