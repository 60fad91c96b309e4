"""The CLI describes itself: a version, help for every command and option, every worker setting
with its default; and it starts without loading the development tooling."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys

import pytest

from worker import cli
from worker.config import Settings


def _walk(parser: argparse.ArgumentParser, path: str = "agent-tasks"
          ) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_walk(sub, f"{path} {name}"))
    return found


def test_version__is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"agent-tasks {importlib.metadata.version('agent-tasks')}"


def test_help__every_command_and_option_says_what_it_does() -> None:
    undocumented = []
    commands = _walk(cli.build_parser())
    assert len(commands) >= 20  # agent-tasks, worker, stack (+4), demo, tasks (+5), executions (+4), queue (+1)
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                undocumented += [f"{path} {choice.dest}" for choice in action._choices_actions if not choice.help]
            elif not action.help:
                undocumented.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert undocumented == []


def test_stack_help__names_its_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["stack", "--help"])
    out = capsys.readouterr().out
    assert "stack_args" not in out
    for action in ("up", "down", "status", "reset"):
        assert f"\n    {action} " in out


def test_worker_help__lists_every_setting_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(cli.SETTING_HELP) == set(Settings.model_fields)
    with pytest.raises(SystemExit):
        cli.main(["worker", "--help"])
    out = capsys.readouterr().out
    assert "--check" in out
    for name, field in Settings.model_fields.items():
        default = cli.SETTING_DEFAULT_TEXT.get(name, str(field.default).lower() if isinstance(field.default, bool)
                                               else str(field.default))
        env = name.upper()
        lines = [line for line in out.splitlines() if line.split()[:1] == [env] or f"or {env} (" in line]
        assert len(lines) == 1 and lines[0].endswith(f"(default: {default})"), name
        assert cli.SETTING_HELP[name] in out
    assert "DATABASE_URL or SUPABASE_DB_URL (default: -)" in out
    assert "WORKER_CONCURRENCY (default: 32)" in out


@pytest.mark.parametrize("argv", [["--help"], ["tasks", "list", "--help"], ["worker", "--help"],
                                  ["queue", "stats", "--help"]])
def test_runtime_commands__do_not_import_the_development_tooling(argv: list[str]) -> None:
    code = (f"import sys\nfrom worker import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m in ('worker.stack', 'worker.demo')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
