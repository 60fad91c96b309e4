"""First run anywhere: a fresh clone in a 0700 folder (root's home) gets its own environment and its
own stack, and touches nothing of another checkout's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker import stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def clone_checkout(dest: Path) -> None:
    """`git clone` of this repository, then this checkout's uncommitted files on top (so the test
    runs the code under test, not only the last commit)."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True, timeout=120)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def fresh_shell_env() -> dict[str, str]:
    """The environment of a new login shell: no virtual environment of this checkout on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "DATABASE_URL",
                                                              "SUPABASE_DB_URL")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


def test_clone_in_a_0700_home__gets_its_own_environment_and_stack(tmp_path: Path,
                                                                   stack_state: stack.State) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o700)  # like /root: the postgres OS user cannot enter it
    clone = home / "x"
    clone_checkout(clone)
    env = fresh_shell_env()

    setup = subprocess.run(["make", "-s", "setup"], cwd=clone, env=env, capture_output=True, text=True,
                           timeout=600)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    python, cli = clone / ".venv" / "bin" / "python", clone / ".venv" / "bin" / "agent-tasks"
    where = subprocess.run([python, "-c", "import worker; print(worker.__file__)"], cwd="/", env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == clone / "worker" / "__init__.py"  # the clone's code, not this checkout's
    assert Path(stack.__file__).parent == ROOT / "worker"  # and this checkout still runs its own

    cluster: str | None = None
    try:
        up = subprocess.run([cli, "stack", "up", "--db-only"], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=300)
        assert up.returncode == 0, up.stderr
        assert "could not change directory" not in up.stderr  # postgres' tools do not start in the clone
        info = json.loads(subprocess.run([cli, "stack", "status", "--json"], cwd=clone, env=env,
                                         capture_output=True, text=True, check=True).stdout)
        cluster = info["cluster"]
        assert info["running"] is True
        assert info["db_port"] != stack_state.port
        assert cluster != stack.status()["cluster"]
        if os.geteuid() == 0:
            assert not Path(cluster).is_relative_to(home)  # where the postgres OS user can reach it
            assert (clone / ".stack" / "cluster").read_text().strip() == cluster
        # the clone's CLI finds the clone's stack on its own
        listed = subprocess.run([cli, "tasks", "list", "--json"], cwd=clone, env=env, capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        # this checkout's stack is untouched (its services may have restarted meanwhile: compare the cluster)
        mine = stack.State.load()
        assert stack.pg_running() and mine is not None
        assert (mine.port, mine.password, mine.secret_key) == (stack_state.port, stack_state.password,
                                                               stack_state.secret_key)
    finally:
        down = subprocess.run([cli, "stack", "down", "--purge"], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert cluster is not None and not Path(cluster).exists()
    assert not (clone / ".stack").exists()
