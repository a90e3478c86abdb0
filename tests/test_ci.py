"""CI (.ci/run): the real script, run in a copy of the checkout's layout whose gimp3 tool and tests/run
record their calls and fail on demand (a sandbox that cannot be built, a failing suite)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RECORDING_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") ${GIMP3_SUITE:-} $*" >> "$CI_CALLS"
case " ${CI_FAIL:-} " in *" $(basename "$0"):$1:${GIMP3_SUITE:-} "*) exit 3 ;; esac
if [ "${1:-}" = console ]; then echo "GNU Image Manipulation Program version 3 (${GIMP3_SUITE:-})"; fi
"""


def run_ci(tmp_path: Path, fail: str = "") -> tuple[int, list[str]]:
    """Run .ci/run with ``fail`` naming calls that fail (e.g. 'gimp3:setup:sid run:-m:sid'); its exit status
    and the calls made, in order."""
    repo, tools = tmp_path / "main", tmp_path / "shared" / "tools"
    (repo / ".ci").mkdir(parents=True)
    (repo / "tests").mkdir()
    tools.mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", repo / ".ci" / "run")
    for tool in (tools / "gimp3", repo / "tests" / "run"):
        tool.write_text(RECORDING_TOOL)
        tool.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.touch()
    env = dict(os.environ, CI_CALLS=str(calls), CI_FAIL=fail)
    env.pop("GIMP3_SUITE", None)
    done = subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True,
                          timeout=60)
    return done.returncode, [line.strip() for line in calls.read_text().splitlines()]


def test_ci_runs_both_passes(tmp_path):
    status, calls = run_ci(tmp_path)
    assert status == 0, calls
    assert "run trixie" in calls and "run sid -m gimp" in calls
    assert calls.index("gimp3 trixie setup") < calls.index("run trixie")
    assert calls.index("gimp3 sid setup") < calls.index("run sid -m gimp")


@pytest.mark.parametrize("failing, other_pass", [
    ("gimp3:setup:sid", "run trixie"),
    ("gimp3:setup:trixie", "run sid -m gimp"),
    ("run::trixie", "run sid -m gimp"),
])
def test_one_pass_failing_leaves_the_other_pass_running(tmp_path, failing, other_pass):
    status, calls = run_ci(tmp_path, failing)
    assert status != 0, calls
    assert other_pass in calls, calls
