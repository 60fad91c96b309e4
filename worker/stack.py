"""The local stack: the real parts of a Supabase project that run on a plain machine.

`up` installs what is missing (Debian's Postgres 15 with pg_cron, pgTAP,
wal2json and plpgsql_check; the Supabase CLI from npm), creates a cluster
for this checkout on a free port, applies `sql/local/bootstrap.sql` (what a
Supabase project already has) and then the migrations with the real
`supabase db push --db-url`, then serves the fake OpenAI-compatible model
(when no OPENAI_API_KEY is set) and the chat edge function under Deno, with
exactly the environment Supabase gives an edge function (`function_env`).
`status --json` tells scripts, tests and operators where everything is.
Every step is idempotent.

The stack's state (ports, keys, logs) lives in `.stack/` of the checkout. The
cluster runs as the `postgres` OS user when started as root, and that user
may not be able to enter the checkout (a clone under root's 0700 home): as
root, the cluster's folder is then `/var/lib/agent-tasks/<checkout>-<hash>/`
(one per checkout path, recorded in `.stack/cluster`); otherwise
`.stack/pg/`. `down --purge` and `reset` remove it.

This is development tooling: it needs the repository's files (migrations,
the chat function, the fake model), so it refuses to run from an installed
wheel, before starting anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from worker.errors import EXIT_USAGE, CliError

ROOT = Path(__file__).resolve().parents[1]
STACK_DIR = ROOT / ".stack"
# as root: one folder per checkout here, reachable by the postgres OS user
SYSTEM_STATE_DIR = Path("/var/lib/agent-tasks")
CLUSTER_RECORD = STACK_DIR / "cluster"


def _cluster_dir() -> Path:
    """Where this checkout's cluster lives (see the module docstring)."""
    in_checkout = STACK_DIR / "pg"
    if os.geteuid() != 0 or (in_checkout / "data" / "PG_VERSION").exists():
        return in_checkout  # non-root, or a cluster made there before: it works, keep it
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in ROOT.name)[:40]
    return SYSTEM_STATE_DIR / f"{name}-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


PG_DIR = _cluster_dir()
PGDATA = PG_DIR / "data"
PG_LOG = PG_DIR / "postgres.log"
LOG_DIR = STACK_DIR / "logs"
STATE_FILE = STACK_DIR / "state.json"
MIGRATIONS_DIR = ROOT / "supabase" / "migrations"
BOOTSTRAP_SQL = ROOT / "sql" / "local" / "bootstrap.sql"
CHAT_FUNCTION = ROOT / "supabase" / "functions" / "chat" / "index.ts"
FAKE_LLM = ROOT / "tests" / "fakes" / "openai_server.py"
TICKETS_MCP = ROOT / "worker" / "mcp_tickets.py"
# the operator's integration URL policy of a development stack (loopback + plain HTTP)
LOCAL_INTEGRATION_POLICY_SQL = ROOT / "sql" / "local" / "integration_policy.sql"
# the Supabase CLI, pinned in its package.json and installed next to it by `npm ci`
SUPABASE_CLI_DIR = ROOT / "scripts" / "supabase-cli"
SUPABASE_CLI = SUPABASE_CLI_DIR / "node_modules" / ".bin" / "supabase"

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_SHARE = Path("/usr/share/postgresql/15/extension")
PG_LIB = Path("/usr/lib/postgresql/15/lib")
APT_PACKAGES = [
    "postgresql-15",
    "postgresql-15-cron",
    "postgresql-15-pgtap",
    "postgresql-15-wal2json",
    "libtap-parser-sourcehandler-pgtap-perl",
    "postgresql-15-plpgsql-check",
]
TEMPLATE_DB = "agent_tasks_template"
MAIN_DB = "postgres"
WORKER_ROLE = "agent_worker"
READY_TIMEOUT_S = 60.0


class StackError(CliError):
    """A stack step failed; the message says what to do."""

    default_code = EXIT_USAGE


def in_checkout() -> bool:
    """True when the package runs from a source checkout (the stack needs its files)."""
    return (ROOT / "pyproject.toml").is_file() and MIGRATIONS_DIR.is_dir() and BOOTSTRAP_SQL.is_file()


def require_checkout() -> None:
    """Refuse, before anything starts, when installed from a wheel (no migrations to apply)."""
    if not in_checkout():
        raise StackError(
            f"the local stack needs a source checkout of agent-tasks ({ROOT} has no supabase/migrations):"
            " clone the repository and run `make up` there; a deployed worker needs only"
            " `agent-tasks worker` with DATABASE_URL")


def _log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


# --- installation -------------------------------------------------------------


def missing_packages() -> list[str]:
    """Debian packages the stack needs that are not installed."""
    checks = {
        "postgresql-15": PG_BIN / "postgres",
        "postgresql-15-cron": PG_SHARE / "pg_cron.control",
        "postgresql-15-pgtap": PG_SHARE / "pgtap.control",
        "postgresql-15-wal2json": PG_LIB / "wal2json.so",
        "libtap-parser-sourcehandler-pgtap-perl": Path("/usr/bin/pg_prove"),
        # `supabase db lint` runs plpgsql_check
        "postgresql-15-plpgsql-check": PG_SHARE / "plpgsql_check.control",
    }
    return [pkg for pkg, path in checks.items() if not path.exists()]


def ensure_packages() -> None:
    """Install the Debian packages when running as root; otherwise say what to install."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(
            "missing Debian packages: " + " ".join(missing)
            + "\ninstall them with: sudo apt-get install -y " + " ".join(missing)
        )
    _log("installing " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    still = missing_packages()
    if still:
        raise StackError("apt-get did not install: " + " ".join(still))


def _as_postgres(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: run its tools as the postgres OS user then (callers run
    them from / : that user may not be allowed into the working directory)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


# --- state ----------------------------------------------------------------------


@dataclass
class State:
    port: int
    password: str
    worker_password: str
    jwt_secret: str
    secret_key: str
    publishable_key: str = ""
    # the project's asymmetric signing key (ES256, PEM) and its key id: user
    # tokens are signed with it, as Supabase Auth signs them with new signing keys
    signing_key: str = ""
    signing_kid: str = ""
    chat_port: int | None = None
    chat_pid: int | None = None
    llm_port: int | None = None
    llm_pid: int | None = None
    llm_is_fake: bool = True
    # the tickets MCP server (worker/mcp_tickets.py) and its bearer token
    tickets_port: int | None = None
    tickets_pid: int | None = None
    tickets_token: str = ""
    tickets_digest: str = ""
    # CHAT_INTEGRATIONS_KEYS of the stack's chat function (JSON object of key id -> base64 key)
    integrations_keys: str = ""
    # digests of the code each running service was started from (see _stale)
    chat_digest: str = ""
    llm_digest: str = ""
    # each migration file's digest as the main database applied it (see changed_migrations)
    migration_digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls) -> State | None:
        if not STATE_FILE.exists():
            return None
        data = json.loads(STATE_FILE.read_text())
        state = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        if state.complete_keys():
            state.save()
        return state

    def complete_keys(self) -> bool:
        """Create the keys a stack made before they existed lacks; True when any was added."""
        added = False
        if not self.publishable_key:
            self.publishable_key = "sb_publishable_" + secrets.token_urlsafe(18)
            added = True
        if not self.signing_key:
            key = ec.generate_private_key(ec.SECP256R1())
            self.signing_key = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode()
            self.signing_kid = secrets.token_hex(8)
            added = True
        if not self.tickets_token:
            self.tickets_token = secrets.token_urlsafe(24)
            added = True
        if not self.integrations_keys:
            self.integrations_keys = json.dumps({"local1": base64.b64encode(secrets.token_bytes(32)).decode()})
            added = True
        return added

    def save(self) -> None:
        STACK_DIR.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps(self.__dict__, indent=2))
        STATE_FILE.chmod(0o600)


def free_port(preferred: int) -> int:
    """The preferred port if nothing listens there, else any free one."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as the servers bind (SO_REUSEADDR): closed connections in TIME_WAIT do not
            # make a port busy, only a listener does
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise StackError("no free port")


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (/proc/net/tcp and tcp6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is ADDR:PORT in hex; state 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listens(pid: int | None, port: int) -> bool:
    """Whether a process of the session `pid` leads (a service `_spawn` started, and any child
    of it) listens on `port`. An open port alone may be another checkout's service: two stacks
    starting at the same moment can both find a port free, and the one whose bind fails would
    otherwise take the other's service for its own (Linux /proc; elsewhere: the port is open)."""
    if not pid or not _pid_alive(pid):
        return False
    if not Path("/proc/net/tcp").exists():
        return port_open(port)
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not sockets:
        return False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) != pid:
                continue
            if any(os.readlink(fd) in sockets for fd in (proc / "fd").iterdir()):
                return True
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return False


def database_url(state: State, dbname: str = MAIN_DB, user: str = "postgres") -> str:
    """A connection string libpq and the Supabase CLI both accept (the local cluster has no TLS)."""
    password = state.password if user == "postgres" else state.worker_password
    return f"postgresql://{user}:{password}@127.0.0.1:{state.port}/{dbname}?sslmode=disable"


LEGACY_KEYS_IAT = 1_764_547_200  # 2025-12-01


def _sign(secret: str, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def sign_token(state: State, claims: dict[str, Any]) -> str:
    """A JWT signed with the project's current signing key (ES256, with its key id)."""
    return jwt.encode(claims, state.signing_key, algorithm="ES256", headers={"kid": state.signing_kid})


def jwks(state: State) -> dict[str, Any]:
    """The project's public key set, as Supabase Auth publishes it and SUPABASE_JWKS carries it."""
    private = serialization.load_pem_private_key(state.signing_key.encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    return {"keys": [{**public, "kid": state.signing_kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"]}]}


def api_keys(state: State) -> dict[str, str]:
    """The legacy anon and service_role JWTs of the local project (as `supabase status` shows them).

    Fixed claims, so the same key every time: the function compares the
    service-role key it was given with the one a caller sends.
    """
    base = {"iss": "supabase-local", "iat": LEGACY_KEYS_IAT, "exp": LEGACY_KEYS_IAT + 20 * 365 * 24 * 3600}
    return {
        "anon_key": _sign(state.jwt_secret, {**base, "role": "anon"}),
        "service_role_key": _sign(state.jwt_secret, {**base, "role": "service_role"}),
    }


def user_token(state: State, user_id: str, email: str | None = None, ttl_s: int = 3600) -> str:
    """An access token for a local user, signed like Supabase Auth signs them (ES256)."""
    now = int(time.time())
    return sign_token(state, {
        "iss": "supabase-local", "aud": "authenticated", "role": "authenticated",
        "sub": user_id, "email": email, "iat": now, "exp": now + ttl_s,
    })


# --- postgres -----------------------------------------------------------------------


def _pg_ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(PGDATA), *args]),
                          capture_output=True, text=True, cwd="/")


def pg_running() -> bool:
    return PGDATA.exists() and _pg_ctl("status").returncode == 0


def restart_postgres() -> None:
    """`pg_ctl restart -m fast` of this checkout's cluster (the chaos suite's database blip):
    every session is cut, the cluster is back on the same port when this returns."""
    res = _pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-l", str(PG_LOG))
    if res.returncode != 0:
        raise RuntimeError(f"pg_ctl restart failed: {res.stderr.strip() or res.stdout.strip()}")


def _init_cluster(state: State) -> None:
    if PG_DIR.is_relative_to(SYSTEM_STATE_DIR):
        SYSTEM_STATE_DIR.mkdir(mode=0o755, exist_ok=True)
    PG_DIR.mkdir(parents=True, exist_ok=True)
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    CLUSTER_RECORD.write_text(f"{PG_DIR}\n")
    if os.geteuid() == 0:
        shutil.chown(PG_DIR, "postgres", "postgres")
    pwfile = PG_DIR / "pwfile"
    pwfile.write_text(state.password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    pwfile.chmod(0o600)
    _log(f"initdb {PGDATA}")
    subprocess.run(_as_postgres([
        str(PG_BIN / "initdb"), "-D", str(PGDATA), "-U", "postgres", "--pwfile", str(pwfile),
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
    ]), check=True, stdout=subprocess.DEVNULL, cwd="/")
    pwfile.unlink()
    conf = f"""
# --- agent-tasks local stack ---
listen_addresses = '127.0.0.1'
port = {state.port}
unix_socket_directories = '{PG_DIR}'
max_connections = 400
shared_buffers = '256MB'
shared_preload_libraries = '{PRELOAD}'
cron.database_name = '{MAIN_DB}'
cron.use_background_workers = on
max_worker_processes = 32
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
timezone = 'UTC'
# a development stack: speed over durability (never use these settings in production)
fsync = off
synchronous_commit = off
full_page_writes = off
"""
    with (PGDATA / "postgresql.conf").open("a") as f:
        f.write(conf)


# pg_stat_statements is preloaded on Supabase too: `supabase inspect db` reads it
PRELOAD = "pg_cron,pg_stat_statements"


def _ensure_preload() -> bool:
    """Add pg_stat_statements to a cluster made before it was preloaded; True when the setting changed."""
    conf = PGDATA / "postgresql.conf"
    text = conf.read_text()
    if f"shared_preload_libraries = '{PRELOAD}'" in text:
        return False
    with conf.open("a") as f:
        f.write(f"shared_preload_libraries = '{PRELOAD}'\n")
    return True


def _start_postgres(state: State) -> None:
    res = _pg_ctl("start", "-w", "-t", "60", "-l", str(PG_LOG))
    if res.returncode != 0:
        log_tail = PG_LOG.read_text()[-2000:] if PG_LOG.exists() else ""
        raise StackError(f"postgres did not start:\n{res.stdout}{res.stderr}\n{log_tail}")


def connect(state: State, dbname: str = MAIN_DB, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url(state, dbname), autocommit=autocommit)


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def supabase_cli() -> str:
    """The pinned Supabase CLI (scripts/supabase-cli), installed with npm when missing."""
    if not SUPABASE_CLI.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise StackError("the Supabase CLI needs npm: install Node.js (apt-get install nodejs npm)")
        _log("installing the Supabase CLI (npm ci in scripts/supabase-cli)")
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(SUPABASE_CLI_DIR)],
                             capture_output=True, text=True)
        if res.returncode != 0 or not SUPABASE_CLI.exists():
            raise StackError(f"npm could not install the Supabase CLI:\n{res.stdout}{res.stderr}")
    return str(SUPABASE_CLI)


def run_supabase(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the Supabase CLI on this project (`--workdir` is the repository)."""
    res = subprocess.run([supabase_cli(), "--workdir", str(ROOT), *args], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, DO_NOT_TRACK="1"), stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise StackError(f"supabase {args[0]} {args[1] if len(args) > 1 else ''} failed:\n{res.stdout}{res.stderr}")
    return res


def migrations_digest() -> str:
    h = hashlib.sha256(BOOTSTRAP_SQL.read_bytes())
    for path in migration_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _applied_versions(state: State, dbname: str) -> set[str]:
    with connect(state, dbname) as conn:
        exists = conn.execute("select to_regclass('supabase_migrations.schema_migrations')").fetchone()
        if exists is None or exists[0] is None:
            return set()
        return {r[0] for r in conn.execute("select version from supabase_migrations.schema_migrations")}


def apply_migrations(state: State, dbname: str) -> list[str]:
    """Apply the bootstrap, then the migrations with `supabase db push`. Returns the files applied.

    The CLI applies each migration not yet recorded in
    `supabase_migrations.schema_migrations` and records it, exactly as on a
    Supabase project; it does not re-apply a migration that changed after it
    was applied (on this stack `reset` rebuilds the cluster; on a project,
    write a new migration).
    """
    with connect(state, dbname) as conn:
        conn.execute(BOOTSTRAP_SQL.read_text())  # idempotent by construction
    before = _applied_versions(state, dbname)
    try:
        # --include-all: on a development stack, a merged branch routinely brings a
        # migration older than the newest one applied; apply it rather than refuse
        run_supabase("db", "push", "--db-url", database_url(state, dbname), "--yes", "--include-all")
    except StackError as exc:
        if "not found in local migrations directory" in str(exc):
            # migrations were renamed or removed after this database applied them
            raise StackError(f"{exc}\non the local stack, `agent-tasks stack reset` rebuilds the cluster"
                             " from the current migrations (its data is lost)") from exc
        raise
    with connect(state, dbname) as conn:
        conn.execute(LOCAL_INTEGRATION_POLICY_SQL.read_text())
    after = _applied_versions(state, dbname)
    return [p.name for p in migration_files() if p.stem.partition("_")[0] in after - before]


def changed_migrations(recorded: dict[str, str], files: list[Path]) -> list[str]:
    """The migrations edited after this stack applied them; records the digest of the others.

    `supabase db push` applies each version once, so an edited migration (a
    branch that reflowed one before release) leaves the main database behind
    the files, silently. The first digest seen for a file is the applied one;
    a changed file keeps its old digest, so the warning repeats until `reset`.
    """
    changed = []
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        if recorded.setdefault(path.name, digest) != digest:
            changed.append(path.name)
    return changed


def _ensure_worker_role(state: State) -> None:
    with connect(state) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (WORKER_ROLE,)).fetchone()
        if not exists:
            conn.execute(f"create role {WORKER_ROLE} login")
        conn.execute(f"alter role {WORKER_ROLE} password '{state.worker_password}'")
        conn.execute(f"grant task_worker to {WORKER_ROLE}")


def ensure_template(state: State) -> str:
    """A template database with bootstrap + migrations, rebuilt when they change.

    An advisory lock serialises concurrent test sessions that find it stale.
    """
    digest = migrations_digest()
    with connect(state) as lock_conn:
        lock_conn.execute("select pg_advisory_lock(hashtext('agent_tasks_template'))")
        try:
            row = lock_conn.execute(
                "select shobj_description(oid, 'pg_database') from pg_database where datname = %s",
                (TEMPLATE_DB,)).fetchone()
            if row is not None and row[0] == digest:
                return TEMPLATE_DB
            if row is not None:
                lock_conn.execute(f"alter database {TEMPLATE_DB} is_template false")
                lock_conn.execute(f"drop database {TEMPLATE_DB} with (force)")
            lock_conn.execute(f"create database {TEMPLATE_DB} template template0")
            apply_migrations(state, TEMPLATE_DB)
            lock_conn.execute(f"comment on database {TEMPLATE_DB} is '{digest}'")
            lock_conn.execute(f"alter database {TEMPLATE_DB} is_template true")
            return TEMPLATE_DB
        finally:
            lock_conn.execute("select pg_advisory_unlock(hashtext('agent_tasks_template'))")


def create_database(state: State, name: str) -> str:
    """A fresh database copied from the template (tests use one per test or module)."""
    ensure_template(state)
    with connect(state) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}" template {TEMPLATE_DB}')
    return database_url(state, name)


def drop_database(state: State, name: str) -> None:
    with connect(state) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


# --- services -----------------------------------------------------------------------


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        # a service this process started and that exited is a zombie until reaped, and a
        # zombie still answers kill(0): reap it (waited 60 s for a service that died at once)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier command): its parent reaps it
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _spawn(name: str, cmd: list[str], env: dict[str, str]) -> int:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = (LOG_DIR / f"{name}.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    return proc.pid


def _wait_port(port: int, name: str, pid: int) -> None:
    """Until the service `pid` itself listens on `port` (not merely: something does)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if listens(pid, port):
            return
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    log = LOG_DIR / f"{name}.log"
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise StackError(f"{name} did not start on port {port}; log tail:\n{tail}")


# attempts at starting a service, each on a port found free just before
SERVE_ATTEMPTS = 3


def _serve(name: str, preferred: int, command: Callable[[int], tuple[list[str], dict[str, str]]]) -> tuple[int, int]:
    """Start service `name` on `preferred` when it is free, else on any free port, and return
    (port, pid) once it listens there itself. Another program can take the port between the
    check and the bind (another checkout's stack starting at the same moment): the service
    then exits, and it starts again on another port."""
    for attempt in range(SERVE_ATTEMPTS):
        port = free_port(preferred if attempt == 0 else 0)
        cmd, env = command(port)
        pid = _spawn(name, cmd, env)
        try:
            _wait_port(port, name, pid)
            return port, pid
        except StackError:
            _stop_pid(pid)
            if attempt == SERVE_ATTEMPTS - 1:
                raise
            _log(f"{name} could not listen on port {port}; trying another")
    raise AssertionError("unreachable")


def deno_binary() -> str:
    """The Deno executable of this environment (PyPI package `deno`, in uv.lock), else from PATH."""
    beside = Path(sys.executable).parent / "deno"
    found = str(beside) if beside.exists() else shutil.which("deno")
    if not found:
        raise StackError("deno not found: run `make setup` (it installs Deno into .venv/)")
    return found


def platform_env(state: State, db_url: str, supabase_url: str) -> dict[str, str]:
    """What Supabase injects into every edge function, in the same names and formats.

    The key lists are JSON objects of named keys and the key set is a JWKS,
    as on a hosted project; the legacy anon and service-role keys are the
    HS256 JWTs a project still has until they are disabled. Nothing else:
    no JWT secret (the platform gives none), no `SUPABASE_` name a user
    could not set either.
    """
    keys = api_keys(state)
    return {
        "SUPABASE_URL": supabase_url,
        "SUPABASE_DB_URL": db_url,
        "SUPABASE_PUBLISHABLE_KEYS": json.dumps({"default": state.publishable_key}),
        "SUPABASE_SECRET_KEYS": json.dumps({"default": state.secret_key}),
        "SUPABASE_JWKS": json.dumps(jwks(state)),
        "SUPABASE_ANON_KEY": keys["anon_key"],
        "SUPABASE_SERVICE_ROLE_KEY": keys["service_role_key"],
    }


def function_env(state: State, db_url: str, port: int, settings: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a served function: this process's, minus any `SUPABASE_`
    variable of the caller's shell, plus the platform's variables, `PORT` and the
    function's own settings (what a user sets with `supabase secrets set`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")}
    env.update(platform_env(state, db_url, f"http://127.0.0.1:{port}"))
    env["PORT"] = str(port)
    env.update(settings or {})
    return env


def chat_env(state: State) -> dict[str, str]:
    """The environment the stack's chat function gets, as `supabase functions serve` would give it."""
    assert state.chat_port is not None
    settings: dict[str, str] = {}
    if state.llm_is_fake and state.llm_port:
        settings["OPENAI_BASE_URL"] = f"http://127.0.0.1:{state.llm_port}/v1"
        settings["OPENAI_API_KEY"] = "fake-key"
    settings["CHAT_INTEGRATIONS_KEYS"] = state.integrations_keys
    return function_env(state, database_url(state), state.chat_port, settings)


def code_digest(folder: Path) -> str:
    """A digest of the source files under `folder`: a running service started from other code is stale.

    `stack up` is idempotent, but a service started before a `git pull` or a
    branch switch would otherwise keep serving the old code.
    """
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".ts", ".py", ".json"} and "node_modules" not in path.parts:
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _start_fake_llm(state: State) -> None:
    if os.environ.get("OPENAI_API_KEY"):
        state.llm_is_fake = False
        return
    state.llm_is_fake = True
    if not FAKE_LLM.exists():
        return
    digest = code_digest(FAKE_LLM.parent)
    if state.llm_port and listens(state.llm_pid, state.llm_port):
        if state.llm_digest == digest:
            return
        _log("the fake model's code changed: restarting it")
        _stop_pid(state.llm_pid)
    state.llm_digest = digest
    state.llm_port, state.llm_pid = _serve(
        "fake-llm", state.llm_port or 54329,
        lambda port: ([sys.executable, str(FAKE_LLM), "--port", str(port)], dict(os.environ)))
    _log(f"NO OPENAI_API_KEY: replies come from the local FAKE model at http://127.0.0.1:{state.llm_port}/v1")


def _start_tickets(state: State) -> None:
    """The demo's and the tests' MCP server (Streamable HTTP, bearer token)."""
    digest = code_digest(TICKETS_MCP.parent) if TICKETS_MCP.exists() else ""
    if state.tickets_port and listens(state.tickets_pid, state.tickets_port):
        if state.tickets_digest == digest:
            return
        _stop_pid(state.tickets_pid)
    state.tickets_digest = digest
    state.tickets_port, state.tickets_pid = _serve(
        "tickets-mcp", state.tickets_port or 54331,
        lambda port: ([sys.executable, "-m", "worker.mcp_tickets", "--port", str(port)],
                      {**os.environ, "TICKETS_MCP_TOKEN": state.tickets_token}))
    _log(f"tickets MCP server on http://127.0.0.1:{state.tickets_port}/mcp")


def tickets_url(state: State) -> str:
    return f"http://127.0.0.1:{state.tickets_port}/mcp"


def _start_chat(state: State) -> None:
    if not CHAT_FUNCTION.exists():
        return
    digest = code_digest(CHAT_FUNCTION.parents[1])
    if state.chat_port and listens(state.chat_pid, state.chat_port):
        if state.chat_digest == digest:
            return
        _log("the chat function's code changed: restarting it")
        _stop_pid(state.chat_pid)
    state.chat_digest = digest
    cmd = [deno_binary(), "run", "--allow-net", "--allow-env", "--allow-read",
           "--config", str(CHAT_FUNCTION.parent / "deno.json"), str(CHAT_FUNCTION)]

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        state.chat_port = port  # chat_env reads it (PORT)
        return cmd, chat_env(state)

    # the same port when it is free again: a running worker keeps its CHAT_URL
    state.chat_port, state.chat_pid = _serve("chat", state.chat_port or 54321, command)
    _log(f"chat function on http://127.0.0.1:{state.chat_port}/functions/v1/chat")


def _stop_pid(pid: int | None) -> None:
    if not _pid_alive(pid):
        return
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)
    if _pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)


# --- commands ---------------------------------------------------------------------------


def up(with_services: bool = True) -> State:
    """Start everything; a second call is a no-op."""
    require_checkout()
    ensure_packages()
    state = State.load()
    if state is None or not PGDATA.exists():
        if pg_running():  # a cluster whose state was deleted: stop it before replacing it
            _pg_ctl("stop", "-m", "fast", "-w")
        state = State(
            port=free_port(54322),
            password=secrets.token_urlsafe(18),
            worker_password=secrets.token_urlsafe(18),
            jwt_secret=secrets.token_urlsafe(32),
            secret_key="sb_secret_" + secrets.token_urlsafe(24),
        )
        state.complete_keys()
        if PGDATA.exists():
            shutil.rmtree(PGDATA)
        _init_cluster(state)
        state.save()
    if _ensure_preload() and pg_running():
        _log("restarting Postgres to preload pg_stat_statements")
        _pg_ctl("stop", "-m", "fast", "-w")
    if not pg_running():
        if port_open(state.port):
            raise StackError(f"port {state.port} is taken by another program; run `stack reset`")
        _start_postgres(state)
    applied = apply_migrations(state, MAIN_DB)
    for name in applied:
        _log(f"applied {name}")
    for name in changed_migrations(state.migration_digests, migration_files()):
        _log(f"warning: {name} changed after this stack applied it; the database runs the old text"
             " (`agent-tasks stack reset` rebuilds it from the current migrations, losing its data)")
    _ensure_worker_role(state)
    ensure_template(state)
    if with_services:
        _start_fake_llm(state)
        _start_tickets(state)
        _start_chat(state)
    state.save()
    return state


def down(purge: bool = False) -> None:
    """Stop the services and Postgres; data stays for the next `up` unless `purge`."""
    require_checkout()
    state = State.load()
    if state is not None:
        _stop_pid(state.chat_pid)
        _stop_pid(state.llm_pid)
        _stop_pid(state.tickets_pid)
        state.chat_pid = state.llm_pid = state.tickets_pid = None
        state.save()
    if pg_running():
        _pg_ctl("stop", "-m", "fast", "-w")
    if purge:
        for path in (PG_DIR, STACK_DIR):
            if path.exists():
                shutil.rmtree(path)


def reset() -> State:
    """Throw the cluster away and start a new one."""
    down(purge=True)
    return up()


def workers(state: State) -> list[dict[str, Any]]:
    try:
        with connect(state) as conn:
            rows = conn.execute(
                "select id, hostname, pid, concurrency, in_flight, started_at, last_seen_at"
                " from scheduler.workers order by started_at").fetchall()
    except psycopg.Error:
        return []
    keys = ["id", "hostname", "pid", "concurrency", "in_flight", "started_at", "last_seen_at"]
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in zip(keys, r, strict=True)}
            for r in rows]


def status() -> dict[str, Any]:
    """Where everything is, in the spirit of `supabase status -o json`."""
    state = State.load()
    if state is None:
        return {"running": False}
    running = pg_running()
    out: dict[str, Any] = {
        "running": running,
        "database_url": database_url(state),
        "worker_database_url": database_url(state, user=WORKER_ROLE),
        "db_port": state.port,
        "jwt_secret": state.jwt_secret,
        **api_keys(state),
        "publishable_key": state.publishable_key,
        "secret_key": state.secret_key,
        "jwks": jwks(state),
        "chat_url": (f"http://127.0.0.1:{state.chat_port}/functions/v1/chat"
                     if state.chat_port and _pid_alive(state.chat_pid) else None),
        "llm": ({"fake": True, "base_url": f"http://127.0.0.1:{state.llm_port}/v1"}
                if state.llm_is_fake and state.llm_port and _pid_alive(state.llm_pid)
                else {"fake": False, "base_url": os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")}),
        "tickets_mcp_url": tickets_url(state) if state.tickets_port and _pid_alive(state.tickets_pid) else None,
        "workers": workers(state) if running else [],
        "logs": str(LOG_DIR),
        "cluster": str(PG_DIR),
    }
    return out


def require_running() -> State:
    """The state of a running stack, or a clear error."""
    state = State.load()
    if state is None or not pg_running():
        raise StackError("the local stack is not running: start it with `make up` (agent-tasks stack up)")
    return state


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.stack ARGS` is `agent-tasks stack ARGS`."""
    from worker.cli import main as cli_main

    return cli_main(["stack", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
