"""The real Supabase CLI (scripts/supabase-cli, pinned) against this repository and the local stack.

The README's deploy section is fed to the CLI command by command, with the
CLI's management API pointed at a closed local port (a `--profile` file), so
nothing leaves the machine: every command must be one the CLI accepts, and
`supabase secrets set` must not skip any name. The stack's own URLs must be
ones the CLI takes, and every `supabase inspect db` report must work on the
local cluster.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from worker import stack

pytestmark = pytest.mark.integration

README = stack.ROOT / "README.md"
DEPLOY_HEADING = "## Deploying next to a real Supabase project"
PROJECT_REF = "abcdefghijklmnopqrst"  # the shape of a ref: 20 lower-case letters
# what the CLI prints when it does not know a command or flag, skips a secret or meets an old config
REFUSALS = re.compile(r"Unrecognized flag|unknown flag|Did you mean|unknown command|Unknown command|"
                      r"skipping|deprecated", re.IGNORECASE)
# how a command that was accepted fails when the API is a closed port and nothing is linked
OFFLINE = re.compile(r"TransportError|Transport error|connection refused|Cannot find project ref")


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment and profile that send the CLI's API calls to a closed local port."""
    home = tmp_path_factory.mktemp("cli-home")
    port = stack.free_port(0)  # free now, and nothing listens there
    profile = home / "closed-port.yaml"
    profile.write_text(f"name: closed-port\napi_url: http://127.0.0.1:{port}\n"
                       f"dashboard_url: http://127.0.0.1:{port}\ndocs_url: http://127.0.0.1:{port}\n"
                       "project_host: localhost\n")
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", "SUPABASE_ACCESS_TOKEN": "sbp_" + "0" * 40,
            "DO_NOT_TRACK": "1", "PROFILE": str(profile)}


def run_cli(args: list[str], env: dict[str, str], cwd: Path = stack.ROOT) -> subprocess.CompletedProcess[str]:
    cmd = [stack.supabase_cli(), "--workdir", str(stack.ROOT)]
    if "PROFILE" in env:
        cmd += ["--profile", env["PROFILE"]]
    return subprocess.run([*cmd, *args], env={k: v for k, v in env.items() if k != "PROFILE"}, cwd=cwd,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def deploy_commands() -> list[list[str]]:
    """The `supabase …` commands of the README's deploy section, placeholders filled in."""
    text = README.read_text()
    section = text[text.index(DEPLOY_HEADING):]
    section = section[:section.index("\n## ", len(DEPLOY_HEADING))]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the deploy section has no bash block"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line.startswith("supabase "):
            continue
        line = line.replace("<ref>", PROJECT_REF)
        line = re.sub(r"<[^>]+>", "placeholder", line)
        commands.append(shlex.split(line)[1:])
    return commands


def test_readme_deploy__every_supabase_command_is_accepted_by_the_cli(offline: dict[str, str]) -> None:
    commands = deploy_commands()
    assert [c[:2] for c in commands][:3] == [["link", "--project-ref"], ["db", "push"], ["functions", "deploy"]]
    assert any(c[:2] == ["secrets", "set"] for c in commands)
    for args in commands:
        # `link` cannot succeed against a closed port, so the later steps name the project themselves;
        # `db push` stays unlinked, so it stops before resolving any database host
        if args[0] != "link" and args[:2] != ["db", "push"]:
            args = [*args, "--project-ref", PROJECT_REF]
        res = run_cli(args, offline)
        out = res.stdout + res.stderr
        assert res.returncode != 0, f"supabase {shlex.join(args)} succeeded offline?\n{out}"
        assert not REFUSALS.search(out), f"supabase {shlex.join(args)}:\n{out}"
        assert OFFLINE.search(out), f"supabase {shlex.join(args)} failed for another reason:\n{out}"


def test_readme_deploy__secret_names_the_cli_skips_are_seen(offline: dict[str, str]) -> None:
    """The check above would notice a SUPABASE_ name: the CLI says it skips it."""
    res = run_cli(["secrets", "set", "SUPABASE_JWT_SECRET=x", "OPENAI_API_KEY=y", "--project-ref", PROJECT_REF],
                  offline)
    assert "Env name cannot start with SUPABASE_, skipping: SUPABASE_JWT_SECRET" in res.stdout + res.stderr


def test_status__the_database_url_is_one_the_cli_takes(stack_state: stack.State) -> None:
    url = stack.status()["database_url"]
    res = run_cli(["migration", "list", "--db-url", url], {"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert res.returncode == 0, res.stdout + res.stderr
    rows = re.findall(r"`(\d{14})`\s*\|\s*`(\d{14})?`", res.stdout)
    # every migration is recorded, as the CLI records it (the stack applies them with `db push`)
    assert rows == [(p.stem[:14], p.stem[:14]) for p in stack.migration_files()], res.stdout


def test_inspect__every_db_report_works_on_the_local_cluster(stack_state: stack.State) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    helptext = run_cli(["inspect", "db", "--help"], env).stdout
    reports = re.findall(r"^  ([a-z-]+)\s{2,}", helptext.split("SUBCOMMANDS", 1)[1].split("GLOBAL FLAGS")[0], re.M)
    assert {"outliers", "calls", "db-stats", "locks", "bloat"} <= set(reports), helptext
    url = stack.database_url(stack_state)
    for report in reports:
        res = run_cli(["inspect", "db", report, "--db-url", url], env)
        assert res.returncode == 0, f"inspect db {report}:\n{res.stdout}{res.stderr}"


def test_migrations__a_history_the_files_no_longer_match_says_how_to_rebuild(stack_state: stack.State) -> None:
    """A database that applied a migration which is gone (renamed, removed): the CLI refuses to push."""
    name = "t_drift_" + str(stack.free_port(0))
    stack.create_database(stack_state, name)
    try:
        with stack.connect(stack_state, name) as c:
            c.execute("insert into supabase_migrations.schema_migrations (version, name)"
                      " values ('20000101000000', 'gone')")
        with pytest.raises(stack.StackError, match=r"(?s)20000101000000.*agent-tasks stack reset"):
            stack.apply_migrations(stack_state, name)
    finally:
        stack.drop_database(stack_state, name)
