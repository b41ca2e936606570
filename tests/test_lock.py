"""requirements.lock, what a validated deployment installs, still covers what
pyproject.toml asks for: every dependency (the test tools included, so that an
installation can be qualified by running this suite) pinned to a version its
range admits, each pin with its hashes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def locked() -> dict[str, str]:
    pins = {}
    lines = (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        match = PIN.match(line)
        if match:
            assert line.rstrip().endswith("\\") and "--hash=sha256:" in lines[number + 1], (
                f"{match.group(1)} is pinned without its hashes")
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [Requirement(text) for text in
            [*project["dependencies"], *extras["test"], *extras["postgres"]]]


def test_every_dependency_is_locked_within_its_range():
    pins = locked()
    problems = []
    for requirement in wanted():
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} is outside {requirement.specifier}")
    assert not problems, f"regenerate requirements.lock (README): {problems}"
