"""Deploying the worker: the image's environment built the way deploy/Dockerfile builds it (no
container engine needed: its uv steps run here), `agent-tasks worker --check` from it against the
real database and chat function, the wheel refusing the development stack, the systemd unit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.e2e.conftest import ChatFunction
from worker import stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
UNIT = ROOT / "deploy" / "agent-tasks-worker.service"
UV = ROOT / ".tools" / "uv" / "bin" / "uv"


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions per stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(" ".join(line.split()))
    return stages


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run the build stage of deploy/Dockerfile here: its COPY and `RUN uv ...` steps, with its ENV."""
    src, app = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("app")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    uv_pins = []
    for step in _stages()[0][1:]:
        op, _, rest = step.partition(" ")
        if op == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value.replace("/app", str(app))
        elif op == "COPY":
            *sources, dest = rest.split()
            for name in sources:
                target = src / dest / name if dest.endswith("/") else src / dest
                if (ROOT / name).is_dir():
                    shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(ROOT / name, target)
        elif op == "RUN" and rest.startswith("pip install"):
            uv_pins += re.findall(r"uv==([\d.]+)", rest)
        elif op == "RUN" and rest.startswith("uv "):
            subprocess.run([str(UV), *rest.split()[1:]], cwd=src, env=env, check=True, capture_output=True,
                           timeout=600)
        else:
            assert op in ("WORKDIR",), f"the test does not know the build step {step!r}"
    setup_pin = re.search(r"UV_VERSION=([\d.]+)", (ROOT / "scripts" / "setup.sh").read_text())
    assert setup_pin is not None and uv_pins == [setup_pin.group(1)]  # the image builds with the checkout's uv
    venv = Path(env["UV_PROJECT_ENVIRONMENT"])
    yield venv


def _worker_env(chat_function: ChatFunction, **extra: str) -> dict[str, str]:
    state = chat_function.state
    dbname = urlsplit(chat_function.db_url).path.lstrip("/")  # the URL may carry a query (sslmode)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SUPABASE_DB_URL")}
    env.update({"DATABASE_URL": stack.database_url(state, dbname, user=stack.WORKER_ROLE),
                "CHAT_URL": chat_function.url, "SUPABASE_SECRET_KEY": state.secret_key, **extra})
    return env


def test_image__the_package_is_installed_not_linked_and_without_dev_tools(image_venv: Path) -> None:
    site = next((image_venv / "lib").glob("python3.*/site-packages"))
    assert (site / "worker" / "cli.py").is_file()  # a wheel's copy, not an editable link to a checkout
    assert not (site / "pytest").exists() and not (site / "procrastinate").exists()
    assert not (image_venv / "bin" / "deno").exists()


def test_image_entrypoint__worker_check_passes(image_venv: Path, chat_function: ChatFunction,
                                               tmp_path: Path) -> None:
    proc = subprocess.run([image_venv / "bin" / "agent-tasks", "worker", "--check"], cwd=tmp_path,
                          env=_worker_env(chat_function), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["ok:"] * 4
    assert "role agent_worker" in lines[0]
    assert "migrations applied" in lines[1] and "session connection" in lines[2]
    assert "accepts the service credential" in lines[3]


def test_worker_check__a_wrong_secret_is_named(image_venv: Path, chat_function: ChatFunction,
                                               tmp_path: Path) -> None:
    proc = subprocess.run([image_venv / "bin" / "agent-tasks", "worker", "--check", "--json"], cwd=tmp_path,
                          env=_worker_env(chat_function, SUPABASE_SECRET_KEY="sb_secret_wrong"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: the chat function at {chat_function.url} refuses the service credential"
        " (HTTP 401 invalid_service_credential): set SUPABASE_SECRET_KEY to the project's secret key"]
    out = json.loads(proc.stdout)
    assert [(c["name"], c["ok"]) for c in out["checks"]] == [
        ("database", True), ("migrations", True), ("session", True), ("chat", False)]


def test_worker_check__a_database_without_the_migrations(chat_function: ChatFunction, tmp_path: Path) -> None:
    name = f"empty_{os.getpid()}"
    with psycopg.connect(stack.database_url(chat_function.state), autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        env = _worker_env(chat_function, DATABASE_URL=stack.database_url(chat_function.state, name))
        proc = subprocess.run([sys.executable, "-m", "worker", "worker", "--check"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        stack.drop_database(chat_function.state, name)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: migrations not applied: missing scheduler.")
    assert "scheduler.claim_executions" in line


@pytest.mark.parametrize("argv", [["stack", "up"], ["stack", "reset"], ["demo"]])
def test_wheel__refuses_the_development_stack_before_starting_anything(image_venv: Path, tmp_path: Path,
                                                                       argv: list[str]) -> None:
    site = next((image_venv / "lib").glob("python3.*/site-packages"))
    proc = subprocess.run([image_venv / "bin" / "agent-tasks", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert "the local stack needs a source checkout of agent-tasks" in line
    assert not (site / ".stack").exists()


def test_wheel__operator_commands_without_a_database_url_say_what_to_set(image_venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_DB_URL")}
    proc = subprocess.run([image_venv / "bin" / "agent-tasks", "tasks", "list", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["message"].startswith("no database: pass --database-url, set DATABASE_URL")


def test_image__runs_the_worker_unprivileged_with_a_health_check() -> None:
    final = _stages()[-1]
    assert any(re.fullmatch(r"USER (\d+)(:\d+)?", s) and not s.startswith("USER 0") for s in final)
    assert 'HEALTHCHECK --interval=60s --timeout=30s --start-period=10s --retries=3 CMD ["agent-tasks", "worker",' \
           ' "--check"]' in final
    assert final[-2:] == ['ENTRYPOINT ["agent-tasks"]', 'CMD ["worker"]']


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit__verifies(image_venv: Path, tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStartPre=/opt/agent-tasks/bin/agent-tasks worker --check" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/agent-tasks/bin/agent-tasks", str(image_venv / "bin" / "agent-tasks")))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
