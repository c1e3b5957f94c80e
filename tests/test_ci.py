"""The checks CI runs are the ones the README promises."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_readme_test_command_verbatim():
    """A contributor who runs README's test command runs what CI runs."""
    readme = (ROOT / "README.rst").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    [command] = re.findall(
        r"^    (python3 -m venv \.venv && .*pytest.*)$", readme, re.M
    )
    assert "--durations=10" in command  # the slowest tests are always shown
    assert command in ci.splitlines()


def test_ci_enforces_lint_format_and_types():
    """Style and type errors fail CI before any test runs."""
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines()]
    checks = [
        ".venv-lint/bin/ruff check .",
        ".venv-lint/bin/ruff format --check .",
        ".venv-lint/bin/mypy pushd",
    ]
    tests = next(i for i, line in enumerate(lines) if "pytest" in line)
    for check in checks:
        assert lines.index(check) < tests, check
    assert "set -euo pipefail" in lines


def _attribute_uses(name: str, skip: set[str]) -> list[str]:
    import ast

    found = []
    for path in sorted((ROOT / "pushd").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in skip or relative.startswith("pushd/backends/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == name
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                found.append("%s:%d" % (relative, node.lineno))
    return found


def test_only_the_hub_talks_to_the_backend():
    """Transports and APIs ask the hub, so a backend that lacks a feature
    gets the hub's clear 501/start error instead of a crash somewhere else
    (the service only starts and stops it)."""
    uses = _attribute_uses("backend", {"pushd/hub.py", "pushd/queries.py"})
    assert all(u.startswith(("pushd/service.py:", "pushd/tap.py:")) for u in uses), uses


def test_only_the_session_touches_its_connection():
    """The hub and protocols reach a client through its Session, which owns
    per-client rules (limits, positions)."""
    assert _attribute_uses("conn", {"pushd/session.py"}) == []


def test_every_test_says_what_a_user_would_notice():
    """A failing test tells the reader what broke for users: every test
    (and every contract test in pushd.testing) has a docstring."""
    import ast

    paths = [*sorted((ROOT / "tests").glob("test_*.py")), ROOT / "pushd/testing.py"]
    missing = [
        "%s:%d %s" % (path.relative_to(ROOT), node.lineno, node.name)
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test")
        and not ast.get_docstring(node)
    ]
    assert missing == []


def test_tests_wait_for_conditions_not_time():
    """Tests wait for what they expect (bounded) instead of sleeping, so
    they are neither slow nor flaky on a busy machine."""
    import ast

    sleeps = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name == "sleep" or (
                name == "deferLater"
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value
            ):
                sleeps.append("%s:%d" % (path.relative_to(ROOT), node.lineno))
    # The one allowed: the bounded poll inside NodeClient.wait_for.
    assert sleeps == ["tests/test_browser_client.py:85"], sleeps
