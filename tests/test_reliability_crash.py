"""Crash-safe saves: savers killed with SIGKILL at random moments lose nothing and leave nothing behind.

bench/killtest.py does the killing (200 kills for the README's figures); here it runs 30. It runs as its own
process because it forks the savers, and forking this test process (torch and its threads loaded) is unsafe.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill test forks savers and kills them with SIGKILL")
def test_savers_killed_at_random_moments_lose_nothing(tmp_path):
    report = tmp_path / "summary.json"
    run = subprocess.run([sys.executable, "-m", "bench.killtest", "--kills", "30", "--dir", str(tmp_path),
                          "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = json.loads(report.read_text())
    assert summary["files_lost_or_damaged"] == 0, summary["problems"]
    assert summary["stray_temporaries_after_next_save"] == 0, summary["problems"]
    assert run.returncode == 0, run.stderr
    assert summary["kills"] == 30
    # The kills landed inside saves (a temporary was being written) and after completed ones, so both the
    # "old file stays" and the "new file is whole" sides were exercised.
    assert summary["kills_mid_write"] > 0
    assert summary["saves_completed"] > 0 and summary["kills_after_replacing"] > 0
    assert summary["numbered_files_verified"] == summary["numbered_files"]
