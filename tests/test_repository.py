"""Files of the repository that must agree with the code."""

from pathlib import Path

from speechbrain_s4.voices import apt_install_command

ROOT = Path(__file__).resolve().parents[1]


def test_debian_packages_file_lists_every_voice_package():
    listed = (ROOT / "debian-packages.txt").read_text().split()
    expected = apt_install_command().split("--no-install-recommends")[1].split()
    assert listed == expected


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    blocks = readme.split("```bash")[1].split("```")[0].strip().splitlines()
    commands = [line for line in blocks if line and not line.startswith("#")]
    assert len(commands) == 2, "README's set-up is two commands"
    install, test = commands
    assert ci[-1] == test
    assert "pip install -e" in install and "speechbrain-s4 demo" in install
    # CI installs exactly as the README says (without running the demo)
    assert install.split(" && speechbrain-s4 demo")[0] in ci
