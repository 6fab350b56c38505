"""The lock files agree with pyproject.toml: what setup, CI and the image install is what we declare.

A dependency added to pyproject.toml without `make lock` would be missing from the hashed
install (pip refuses it), or a lock left behind a raised lower bound would install a version
pyproject.toml rules out.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.txt", ()), ("test.txt", ("test", "dev"))])
def test_every_declared_dependency_is_pinned_within_its_declared_range(lock: str, extras: tuple[str, ...]) -> None:
    pinned = pins(lock)
    problems = []
    for requirement in declared(*extras):
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: not in requirements/{lock}")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} in requirements/{lock} is outside {requirement}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_every_pin_is_hashed_and_the_runtime_lock_agrees_with_the_test_lock() -> None:
    for lock in ("runtime.txt", "test.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        for block in re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text)[1:]:
            assert "--hash=sha256:" in block, f"{block.splitlines()[0]} in requirements/{lock} has no hash"
    runtime, test = pins("runtime.txt"), pins("test.txt")
    assert {name: test.get(name) for name in runtime} == runtime
