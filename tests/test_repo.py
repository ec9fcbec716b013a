"""Repository invariants: CI runs exactly the README's test command; configs and docs exist."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.strip().startswith("python3 -m venv .venv")]


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    test_cmd = [c for c in commands if "pytest" in c]
    assert len(test_cmd) == 1, commands
    assert f"bash -c '{test_cmd[0]}'" in (ROOT / ".ci" / "run").read_text()


def test_readme_run_command_is_the_default_job():
    run_cmd = [c for c in _readme_commands() if "ftbench run" in c]
    assert run_cmd and run_cmd[0].endswith("ftbench run --shots 0,1,5,20")


def test_ci_fails_on_no_tests():
    assert '"$rc" -eq 5' in (ROOT / ".ci" / "run").read_text()


def test_ci_runs_ruff_from_the_test_extra():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/ruff check ." in ci and ".venv/bin/ruff format --check ." in ci
    pyproject = (ROOT / "pyproject.toml").read_text()
    test_extra = next(line for line in pyproject.splitlines() if line.startswith("test = ["))
    assert '"ruff' in test_extra and "[tool.ruff]" in pyproject and "line-length = 120" in pyproject


def test_readme_fast_test_command():
    assert 'python -m pytest -q -m "not integration"' in (ROOT / "README.md").read_text()


def test_integration_modules_exist():
    from conftest import INTEGRATION_MODULES

    missing = sorted(m for m in INTEGRATION_MODULES if not (ROOT / "tests" / m).is_file())
    assert not missing, f"tests/conftest.py marks modules that do not exist: {missing}"
