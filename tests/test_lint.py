"""The conventions of DESIGN.md §6 hold on the package: ruff lint and format, mypy --strict."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_ruff_lint_and_format():
    lint = run("ruff", "check", "gateway")
    assert lint.returncode == 0, lint.stdout
    fmt = run("ruff", "format", "--check", "gateway")
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict():
    result = run("mypy", "--strict", "gateway")
    assert result.returncode == 0, result.stdout
