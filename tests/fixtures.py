"""Shared fixtures: live server, Celery worker, two orgs, users and devices."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Corr3ct-horse-battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    auth = f"{user}:{db['PASSWORD']}" if db.get("PASSWORD") else user
    return (
        f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    # The servers and workers run the production settings module on the environment
    # siphera/settings_test.py set up (it sets only environment defaults, and takes the
    # pool away from the test process alone).
    env["DJANGO_SETTINGS_MODULE"] = "siphera.settings"
    env.update(DATABASE_URL=test_database_url(), PYTHONUNBUFFERED="1")
    env.update(extra)  # a test may point a process elsewhere (DATABASE_URL through a proxy)
    return env


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker):
    """Create this run's PostgreSQL test database (public schema migrated) for every test.

    pytest-django would only set up a database for tests marked `django_db`, and would
    wrap each in a transaction or flush tables after it; neither works with a server in
    another process and schemas per org, so the database is made once and dropped at the end.
    """
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        _disconnect_others()
        teardown_databases(config, verbosity=0)


def _disconnect_others() -> None:
    """End leftover sessions on the test database (a subprocess still shutting down, a
    thread's connection) so it can be dropped."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session", autouse=True)
def _database(django_db_setup, django_db_blocker):
    """The whole session may use the (real PostgreSQL) test database."""
    from django.conf import settings

    assert settings.DATABASES["default"]["NAME"].startswith("test_"), "not the test database"
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="session", autouse=True)
def media_root() -> Iterator[Path]:
    """This run's MEDIA_ROOT (blobs), named by siphera/settings_test.py before settings
    were read: the test process, servers and workers share it, tests can inspect what was
    stored, and runs never share files. Removed at the end."""
    from django.conf import settings

    path = Path(settings.MEDIA_ROOT)
    path.mkdir(parents=True, exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _audit_anchor_dir() -> Iterator[None]:
    """Remove this run's audit anchor files (siphera/settings_test.py names the directory
    per run, outside pytest's tmp dirs, so servers and workers share it) at the end."""
    yield
    from django.conf import settings

    shutil.rmtree(settings.AUDIT_ANCHOR_DIR, ignore_errors=True)


@dataclass
class LiveServer:
    port: int
    log_path: Path
    pid: int = 0  # the web process (one worker: it serves the requests itself)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not up after {timeout}s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def server(_database, tmp_path_factory) -> LiveServer:
    """uvicorn serving siphera.asgi:application (HTTP + WebSocket) on a free port."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "siphera.serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, log_path)
        yield LiveServer(port=port, log_path=log_path, pid=proc.pid)
    finally:
        stop_process(proc)


@contextlib.contextmanager
def server_with_env(log_path: Path, **env: str) -> Iterator[LiveServer]:
    """Another uvicorn serving the app, with extra environment variables (settings are
    read at start-up: e.g. rate limits low enough for a test to reach). It shares this
    run's database and Redis prefixes with `server`."""
    port = _free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "siphera.serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=child_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, log_path)
        yield LiveServer(port=port, log_path=log_path, pid=proc.pid)
    finally:
        stop_process(proc)


@pytest.fixture
def second_server(tmp_path) -> Iterator[LiveServer]:
    """Another web process on the same database and Redis, as a second `WEB_WORKERS`
    process would be, with the default once-a-second generation check (the suite lowers
    it to 0) and cached entries that would live for an hour: only a generation bump can
    make it drop them (siphera.generations)."""
    with server_with_env(
        tmp_path / "second.log",
        GENERATION_CACHE_MAX_AGE_SECONDS="3600",
        GENERATION_CHECK_SECONDS="1",
    ) as live:
        yield live


def eventually(check, *, within: float = 20.0) -> None:
    """`check()` becomes true, polled (generous for a loaded machine: the bound that
    matters, e.g. GENERATION_CHECK_SECONDS, is not this)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the change never reached the other process"
        time.sleep(0.2)


class RedisProcess:
    """redis-server on a spare port, no persistence: stop() is Redis gone, start() again
    is Redis back, empty (as after a crash of a cache-only Redis). Never the machine's."""

    def __init__(self, tmp_path: Path):
        self.port = _free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class PostgresCluster:
    """A PostgreSQL cluster of its own (initdb into `directory`, trust auth, a spare port),
    to stop and start under a server without touching the machine's. As root it runs as
    the `postgres` user (PostgreSQL refuses root), so `directory` must be reachable by it."""

    def __init__(self, directory: Path):
        self.bindir = Path(_pg_bindir())
        self.port = _free_port()
        self.data = directory / "data"
        self.log = directory / "server.log"
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"),
            *("-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
            "--no-locale",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{directory}'\nmax_connections = 100\n"
                "fsync = off\n"
            )

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120, cwd="/")

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), *("-D", str(self.data), "-l", str(self.log)), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no checkpoint, recovery at the next start."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


def _pg_bindir() -> str:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name.split(".")[0])
    )
    for bindir in reversed(candidates):
        if (bindir / "initdb").exists():
            return str(bindir)
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(initdb).resolve().parent)
    raise RuntimeError("PostgreSQL's initdb is not installed (scripts/ensure_services.sh)")


@pytest.fixture(scope="session")
def celery_worker(_database, tmp_path_factory):
    """A real Celery worker consuming this run's queue from Redis."""
    from django.conf import settings

    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = _start_worker(
        log_path, settings.CELERY_TASK_DEFAULT_QUEUE, ("--pool", "solo"), f"test-{os.getpid()}"
    )
    try:
        yield log_path
    finally:
        stop_process(proc)


@contextlib.contextmanager
def worker_with_env(log_path: Path, *, pool: tuple[str, ...] = ("--pool", "solo"), **env: str):
    """A Celery worker on a queue of its own (yielded), with extra environment variables
    (settings are read at start-up: e.g. a new key ring) and pool options; the session's
    worker keeps the run's queue and settings."""
    from django.conf import settings

    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-{uuid.uuid4().hex[:6]}"
    proc = _start_worker(
        log_path, queue, pool, f"w-{uuid.uuid4().hex[:6]}", CELERY_QUEUE=queue, **env
    )
    try:
        yield queue
    finally:
        stop_process(proc)


def _start_worker(log_path: Path, queue: str, pool, name: str, **env: str) -> subprocess.Popen:
    """Start `celery worker` on `queue` and wait until it is ready."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "siphera", "worker", *pool),
                *("--loglevel", "INFO", "-Q", queue, "--hostname", f"{name}@%h"),
                *("--without-gossip", "--without-mingle"),
            ],
            cwd=ROOT,
            env=child_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "ready." not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"celery worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)
    return proc


# --- orgs, users, devices -------------------------------------------------------------


def create_org(slug: str, *domains: str):
    from orgs.services import audit
    from orgs.services.orgs import check_create_org

    return check_create_org(
        slug=slug,
        name=slug.title(),
        domains=list(domains) or [f"{slug}.test"],
        actor=audit.Actor.system("tests"),
    )


@pytest.fixture(scope="session")
def org_a():
    return create_org("alpha", "alpha.test")


@pytest.fixture(scope="session")
def org_b():
    return create_org("bravo", "bravo.test")


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def make_user(org, username: str | None = None, *, role: str = "member", password: str = PASSWORD):
    from orgs.services import audit
    from orgs.services.users import check_create_user
    from siphera.tenancy import in_tenant

    return in_tenant(
        org,
        check_create_user,
        username=username or unique(),
        password=password,
        role=role,
        display_name="",
        email="",
        actor=audit.Actor.system("tests"),
    )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass
class DeviceKeys:
    """A client-side key set: the signing key stays here, only public halves are sent."""

    signing: SigningKey
    identity_key: bytes

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(signing=SigningKey.generate(), identity_key=os.urandom(32))

    def signed(self, key_id: int, key: bytes | None = None) -> dict:
        key = key or os.urandom(32)
        return {"id": key_id, "key": b64(key), "signature": b64(self.signing.sign(key).signature)}

    def registration(self, name: str = "laptop", one_time: int = 5) -> dict:
        return {
            "name": name,
            "identity_key": b64(self.identity_key),
            "signing_key": b64(bytes(self.signing.verify_key)),
            "signed_prekey": self.signed(1),
            "one_time_prekeys": [{"id": i, "key": b64(os.urandom(32))} for i in range(one_time)],
        }


class Api:
    """HTTP client for one org's host (connects to 127.0.0.1, sends the org's Host)."""

    def __init__(self, server: LiveServer, host: str, token: str | None = None):
        self.server, self.host, self.token = server, host, token
        self.http = httpx.Client(base_url=server.url, timeout=15)

    def headers(self, extra: dict | None = None) -> dict:
        headers = {"Host": self.host}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def request(self, method: str, path: str, *, headers: dict | None = None, **kwargs):
        return self.http.request(method, path, headers=self.headers(headers), **kwargs)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def as_device(self, token: str) -> Api:
        return Api(self.server, self.host, token)


def host_of(org) -> str:
    from orgs.models import Domain
    from siphera.tenancy import public_schema

    with public_schema():
        return Domain.objects.filter(tenant=org, is_primary=True).values_list("domain", flat=True)[
            0
        ]


@dataclass
class Session:
    """A logged-in device: its user, ids, token, keys and an Api bound to its org."""

    org: object
    user: object
    device_id: int
    token: str
    keys: DeviceKeys
    api: Api


def login_grant(api: Api, username: str, password: str = PASSWORD) -> str:
    response = api.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return response.json()["grant"]


def register_device(
    api: Api, username: str, *, name: str = "laptop", password: str = PASSWORD
) -> tuple[int, str, DeviceKeys]:
    keys = DeviceKeys.generate()
    grant = login_grant(api, username, password)
    response = api.post(
        "/api/v1/devices", json=keys.registration(name), headers={"Authorization": f"Grant {grant}"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["device_id"], body["token"], keys


@pytest.fixture
def api_for(server):
    def make(org) -> Api:
        return Api(server, host_of(org))

    return make


@pytest.fixture
def new_session(server):
    """Factory: a new user (or an existing one) of `org` with a registered device."""

    def make(org, user=None, *, role: str = "member", name: str = "laptop") -> Session:
        user = user or make_user(org, role=role)
        api = Api(server, host_of(org))
        device_id, token, keys = register_device(api, user.username, name=name)
        return Session(
            org=org,
            user=user,
            device_id=device_id,
            token=token,
            keys=keys,
            api=api.as_device(token),
        )

    return make
