"""The console entry point runs as a real subprocess."""

import subprocess
import sys

import speechbrain_s4


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "speechbrain_s4.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_version_prints_package_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"speechbrain-s4 {speechbrain_s4.__version__}"


def test_cli_help_lists_usage():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "usage: speechbrain-s4" in result.stdout


def test_cli_unknown_command_fails():
    result = run_cli("no-such-command")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr
