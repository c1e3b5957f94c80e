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
