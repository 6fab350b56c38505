"""The command line front door: subcommands listed, version, settings reference, usage errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flywheel import __version__
from flywheel.cli import cli

pytestmark = pytest.mark.unit


def test_help_lists_the_subcommands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "version", "crds", "dev", "config-reference"):
        assert f"  {command}" in result.output


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.output.strip() == f"flywheel {__version__}"


def test_dev_help_lists_up_down_status() -> None:
    result = CliRunner().invoke(cli, ["dev", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status"):
        assert f"  {command}" in result.output


def test_run_refuses_namespaces_together_with_all_namespaces() -> None:
    result = CliRunner().invoke(cli, ["run", "-n", "a", "--all-namespaces"])
    assert result.exit_code == 2
    assert "either --namespace or --all-namespaces" in result.output


def test_config_reference_documents_every_setting() -> None:
    from flywheel.settings import FlywheelSettings

    result = CliRunner().invoke(cli, ["config-reference"])
    assert result.exit_code == 0
    for name, field in FlywheelSettings.model_fields.items():
        assert f"`FLYWHEEL_{name.upper()}`" in result.output
        assert field.description, f"setting {name} has no description"
