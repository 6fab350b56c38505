"""The rule catalogue reloaded from a file updated the way the kubelet updates a mounted ConfigMap.

The kubelet writes each version into a fresh ``..<timestamp>`` directory and swaps the
``..data`` symlink; ``rules.yaml`` is a symlink to ``..data/rules.yaml``. Scenario matrix:
- a valid new version is loaded (the next decision uses it), counted ``loaded``;
- a version with the same bytes is no new version; an unchanged file is not read again;
- a broken version (YAML error, schema error naming the rule and field, not UTF-8, the file
  gone) is refused: the old catalogue stays, counted ``refused`` and warned about once per
  broken version however many polls see it; a fixed version is loaded afterwards;
- a failing Warning Event does not stop the refusal.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.api.enums import ActionType
from flywheel.controllers.catalogue_reload import CatalogueReloader, LiveCatalogue, ReloadResult
from flywheel.domain.rules import load_catalogue
from flywheel.stores.catalogue_file import CatalogueFile, content_digest

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

V1 = """
- name: default
  action: {type: RolloutRestart}
  risk: medium
"""
V2 = """
- name: latency
  keywords: [latency]
  action: {type: Scale, params: {replicas: 3}}
  risk: low
- name: default
  action: {type: RolloutRestart}
  risk: medium
"""
NOT_YAML = "- name: default\n  action: {type: RolloutRestart\n"
SCHEMA_ERROR = """
- name: latency
  keywords: [latency]
  action: {type: Scale}
  risk: low
- name: default
  action: {type: RolloutRestart}
  risk: medium
"""


class ConfigMapVolume:
    """A directory laid out like a ConfigMap volume, updated like the kubelet's atomic writer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def write(self, content: bytes | str) -> None:
        self.generation += 1
        version_dir = self.root / f"..2025_03_01_12_00_{self.generation:02d}.000000001"
        version_dir.mkdir()
        (version_dir / "rules.yaml").write_bytes(content.encode() if isinstance(content, str) else content)
        staging = self.root / "..data_tmp"
        staging.symlink_to(version_dir.name)
        os.replace(staging, self.root / "..data")
        if not (self.root / "rules.yaml").is_symlink():
            (self.root / "rules.yaml").symlink_to("..data/rules.yaml")

    @property
    def path(self) -> Path:
        return self.root / "rules.yaml"


class RecordedWarnings:
    def __init__(self, failing: bool = False) -> None:
        self.messages: list[str] = []
        self.failing = failing

    async def refused(self, message: str) -> None:
        self.messages.append(message)
        if self.failing:
            raise RuntimeError("the API server is away")


def setup(tmp_path: Path, failing_warnings: bool = False) -> tuple[ConfigMapVolume, CatalogueReloader, RecordedWarnings]:
    volume = ConfigMapVolume(tmp_path)
    volume.write(V1)
    live = LiveCatalogue(load_catalogue(V1), content_digest(V1.encode()), T0)
    warnings = RecordedWarnings(failing=failing_warnings)
    reloader = CatalogueReloader(CatalogueFile(volume.path), live, warnings, clock=lambda: T0)
    return volume, reloader, warnings


def check(reloader: CatalogueReloader) -> ReloadResult | None:
    return asyncio.run(reloader.check())


def test_a_new_version_swapped_in_by_the_kubelet_is_loaded(tmp_path: Path) -> None:
    volume, reloader, warnings = setup(tmp_path)
    assert check(reloader) is None, "the version loaded at start-up"
    volume.write(V2)
    assert check(reloader) is ReloadResult.LOADED
    catalogue = reloader.live.current()
    assert [rule.name for rule in catalogue] == ["latency", "default"]
    assert catalogue.match(["HighLatency"]).rule.action.type is ActionType.SCALE
    assert reloader.live.version.digest == content_digest(V2.encode())
    assert check(reloader) is None
    assert reloader.reloads == {ReloadResult.LOADED: 1}
    assert warnings.messages == []


def test_going_back_to_the_version_in_force_ends_the_refusal(tmp_path: Path) -> None:
    volume, reloader, _ = setup(tmp_path)
    volume.write(NOT_YAML)
    assert check(reloader) is ReloadResult.REFUSED
    volume.write(V1)
    assert check(reloader) is None
    assert not reloader.refusing


def test_the_same_bytes_again_are_no_new_version(tmp_path: Path) -> None:
    volume, reloader, _ = setup(tmp_path)
    before = reloader.live.version
    volume.write(V1)
    assert check(reloader) is None
    assert reloader.live.version is before
    assert reloader.reloads == {}


@pytest.mark.parametrize(
    ("broken", "words"),
    [
        (NOT_YAML, "not valid YAML"),
        (SCHEMA_ERROR, "rules[0] (latency): action.params.replicas: Scale requires a replica count"),
        (b"\xff\xfe- name: x", "not UTF-8"),
        ("{}", "must be a YAML list of rules"),
    ],
)
def test_a_broken_version_is_refused_once_and_the_old_catalogue_kept(
    tmp_path: Path, broken: str | bytes, words: str
) -> None:
    volume, reloader, warnings = setup(tmp_path)
    kept = reloader.live.current()
    volume.write(broken)
    assert check(reloader) is ReloadResult.REFUSED
    assert reloader.live.current() is kept
    assert reloader.refusing
    for _ in range(3):
        assert check(reloader) is None, "warned once per broken version"
    volume.write(broken)  # re-applied unchanged: still the same broken version
    assert check(reloader) is None
    assert len(warnings.messages) == 1
    assert words in warnings.messages[0]
    assert str(volume.path) in warnings.messages[0]
    assert "stays in force" in warnings.messages[0]
    assert reloader.reloads == {ReloadResult.REFUSED: 1}

    volume.write(V2)
    assert check(reloader) is ReloadResult.LOADED
    assert [rule.name for rule in reloader.live.current()] == ["latency", "default"]
    assert reloader.reloads == {ReloadResult.REFUSED: 1, ReloadResult.LOADED: 1}
    assert not reloader.refusing


def test_a_second_broken_version_is_refused_too(tmp_path: Path) -> None:
    volume, reloader, warnings = setup(tmp_path)
    volume.write(NOT_YAML)
    volume.write(NOT_YAML + "# another edit\n")
    assert check(reloader) is ReloadResult.REFUSED
    volume.write(SCHEMA_ERROR)
    assert check(reloader) is ReloadResult.REFUSED
    assert len(warnings.messages) == 2


def test_a_vanished_file_is_refused_once_and_its_return_loaded(tmp_path: Path) -> None:
    volume, reloader, warnings = setup(tmp_path)
    kept = reloader.live.current()
    (volume.root / "..data").unlink()
    assert check(reloader) is ReloadResult.REFUSED
    assert check(reloader) is None
    assert "cannot be read" in warnings.messages[0]
    assert reloader.live.current() is kept
    volume.write(V2)
    assert check(reloader) is ReloadResult.LOADED


def test_a_failing_warning_event_does_not_stop_the_refusal(tmp_path: Path) -> None:
    volume, reloader, warnings = setup(tmp_path, failing_warnings=True)
    volume.write(NOT_YAML)
    assert check(reloader) is ReloadResult.REFUSED
    assert check(reloader) is None
    assert len(warnings.messages) == 1
