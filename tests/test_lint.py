"""The code follows the project's ruff configuration (pyproject.toml: Kedro starter rules, lines <= 120)."""

import shutil
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or f"{sys.executable} -m ruff"
    result = subprocess.run([*ruff.split(), "check", "src", "tests", "benchmarks", "--output-format", "concise"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
