"""The README's configuration table is the one the settings model generates."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import cli

pytestmark = pytest.mark.unit


def test_readme_configuration_table_matches_the_settings_model() -> None:
    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    documented = readme.split("<!-- config-reference:start -->\n", 1)[1].split("<!-- config-reference:end -->", 1)[0]
    generated = CliRunner().invoke(cli, ["config-reference"]).output
    assert documented == generated, "README configuration table is stale: paste `flywheel config-reference`"
