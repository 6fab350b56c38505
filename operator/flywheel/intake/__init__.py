"""The Alertmanager intake: a webhook receiver, served by the operator, that opens Incidents.

``flywheel.intake.server`` is the HTTP side (authentication, limits, the report);
``flywheel.intake.recorder`` writes to the Kubernetes API with retries and
preconditions; the mapping itself is pure and lives in ``flywheel.domain.alerts``.
"""

from flywheel.intake.recorder import AlertRecorder, RecordOutcome, RetryPolicy
from flywheel.intake.server import (
    HEALTH_PATH,
    INTAKE_PATH,
    IntakeConfig,
    IntakeServer,
    build_app,
    intake_server,
    require_intake_token,
)

__all__ = [
    "HEALTH_PATH",
    "INTAKE_PATH",
    "AlertRecorder",
    "IntakeConfig",
    "IntakeServer",
    "RecordOutcome",
    "RetryPolicy",
    "build_app",
    "intake_server",
    "require_intake_token",
]
