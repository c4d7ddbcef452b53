"""Tests of the embedded server against real valkey-server processes, and of URL handling."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from scoring import embedded
from scoring.embedded import (
    EmbeddedServer,
    ServerAlreadyRunningError,
    ServerInfo,
    derive_broker_url,
    describe_url,
    find_running,
    redis_urls,
    resolve_running_urls,
)
from scoring.errors import ConfigurationError, ServerError
from scoring.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_exit(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not embedded._pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def embedded_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings with no configured URL, so that redis_urls uses the embedded server."""
    values: dict[str, object] = {"redis_url": None, "broker_url": None, "data_dir": data_dir}
    values.update(overrides)
    return load_settings(**values)


def run_python(code: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new Python process that imports this checkout of riskscore."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, ServerInfo]]:
    """A persistent embedded server in tmp_path/data."""
    embedded_server = EmbeddedServer(tmp_path / "data")
    info = embedded_server.start()
    try:
        yield embedded_server, info
    finally:
        embedded_server.stop()


def connect(info: ServerInfo, db: int = 0) -> redis.Redis:
    return redis.Redis.from_url(info.url(db))


# --- ServerInfo and URLs (no server) ---------------------------------------------------------------


def test_server_info_url_quotes_password() -> None:
    info = ServerInfo(host="127.0.0.1", port=6390, password="p@ss:w/rd %?#", pid=1, data_dir=Path("/x"))

    url = info.url(3)

    assert url.startswith("redis://:p%40ss%3Aw%2Frd%20%25%3F%23@127.0.0.1:6390/3")
    parsed = parse_url(url)
    assert parsed["password"] == "p@ss:w/rd %?#"
    assert parsed["host"] == "127.0.0.1"
    assert parsed["port"] == 6390
    assert parsed["db"] == 3


def test_server_info_url_default_db_is_zero() -> None:
    info = ServerInfo(host="127.0.0.1", port=6390, password="pw", pid=1, data_dir=Path("/x"))

    assert info.url() == "redis://:pw@127.0.0.1:6390/0"


def test_server_info_repr_hides_password() -> None:
    info = ServerInfo(host="127.0.0.1", port=6390, password="do-not-print", pid=1, data_dir=Path("/x"))

    assert "do-not-print" not in repr(info)


@pytest.mark.parametrize(
    ("data_url", "db", "expected"),
    [
        ("redis://localhost:6379/0", 1, "redis://localhost:6379/1"),
        ("redis://localhost:6379", 2, "redis://localhost:6379/2"),
        ("redis://localhost:6379/", 2, "redis://localhost:6379/2"),
        ("redis://localhost", 5, "redis://localhost/5"),
        ("redis://:secret@localhost:6380/3", 1, "redis://:secret@localhost:6380/1"),
        ("redis://user:p%40ss%2F@localhost/0", 1, "redis://user:p%40ss%2F@localhost/1"),
        (
            "rediss://user:pw@localhost:6380/0?ssl_cert_reqs=required",
            1,
            "rediss://user:pw@localhost:6380/1?ssl_cert_reqs=required",
        ),
        ("redis://localhost/0?db=0&socket_timeout=5", 1, "redis://localhost/1?db=1&socket_timeout=5"),
        ("redis://[::1]:6379/0", 4, "redis://[::1]:6379/4"),
        ("REDIS://localhost:6379/0", 1, "redis://localhost:6379/1"),
        ("unix:///run/redis.sock", 1, "unix:///run/redis.sock?db=1"),
        (
            "unix://:pw@/run/redis.sock?db=0&socket_timeout=5",
            2,
            "unix://:pw@/run/redis.sock?db=2&socket_timeout=5",
        ),
    ],
)
def test_derive_broker_url_cases(data_url: str, db: int, expected: str) -> None:
    broker_url = derive_broker_url(data_url, db)

    assert broker_url == expected
    assert parse_url(broker_url)["db"] == db


def test_derive_broker_url_keeps_password() -> None:
    broker_url = derive_broker_url("redis://user:p%40ss@localhost:6379/0", 1)

    parsed = parse_url(broker_url)
    assert parsed["username"] == "user"
    assert parsed["password"] == "p@ss"


def test_derive_broker_url_rejects_non_numeric_path() -> None:
    with pytest.raises(ConfigurationError) as caught:
        derive_broker_url("redis://:secret@localhost:6379/cache", 1)

    assert "RISK_REDIS_URL" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_describe_url_hides_credentials() -> None:
    assert describe_url("redis://user:secret@localhost:6380/2") == "redis://localhost:6380/2"
    assert describe_url("rediss://:secret@[::1]:6380/0?x=1") == "rediss://[::1]:6380/0"
    assert describe_url("unix://:secret@/run/redis.sock?db=1") == "unix:///run/redis.sock"


def test_data_dir_required_unless_ephemeral() -> None:
    with pytest.raises(ValueError, match="data_dir"):
        EmbeddedServer(None)


def test_package_files_exist() -> None:
    assert embedded.valkey_binary().is_file()
    assert embedded.redisbloom_module().is_file()


# --- a persistent server ---------------------------------------------------------------------------


def test_start_and_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = EmbeddedServer(data_dir)

    info = server.start()
    client = connect(info)
    try:
        assert client.ping() is True
        assert server.info == info
        assert info.host == "127.0.0.1"
        assert info.data_dir == data_dir
        assert embedded._pid_alive(info.pid)
        assert (data_dir / "server.json").exists()
    finally:
        client.close()
        server.stop()

    assert not embedded._pid_alive(info.pid)
    assert not (data_dir / "server.json").exists()
    assert server.info is None
    server.stop()  # a second stop does nothing


def test_context_manager_returns_info_and_stops(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "data") as info:
        assert isinstance(info, ServerInfo)
        assert embedded._pid_alive(info.pid)

    assert not embedded._pid_alive(info.pid)


def test_start_twice_raises(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    embedded_server, _info = server

    with pytest.raises(ServerError, match="already started"):
        embedded_server.start()


def test_server_requires_password(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server

    for password in (None, "wrong-password"):
        client = redis.Redis(host=info.host, port=info.port, password=password, retry=Retry(NoBackoff(), 0))
        try:
            with pytest.raises(redis.AuthenticationError):
                client.ping()
        finally:
            client.close()


def test_server_binds_loopback_only(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server
    client = connect(info)
    try:
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
    finally:
        client.close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the Linux socket table in /proc/net")
def test_server_listens_on_loopback_only(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server
    listening_state = "0A"

    def listening_addresses(table: str) -> list[str]:
        path = Path("/proc/net") / table
        if not path.exists():
            return []
        addresses = []
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == info.port and fields[3] == listening_state:
                addresses.append(address)
        return addresses

    assert listening_addresses("tcp") == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert listening_addresses("tcp6") == []


def test_server_runs_in_own_session(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server

    assert os.getsid(info.pid) == info.pid
    assert os.getsid(info.pid) != os.getsid(0)


def test_private_files_and_modes(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server
    data_dir = info.data_dir

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("password", "server.json", "valkey.conf"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    assert (data_dir / "password").read_text().strip() == info.password


def test_state_file_contents(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server
    text = (info.data_dir / "server.json").read_text()

    state = json.loads(text)
    assert set(state) == {"port", "pid", "started_at"}
    assert state["port"] == info.port
    assert state["pid"] == info.pid
    assert info.password not in text


def test_password_not_in_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Any local user can read a process's arguments, so the password must go in the config file.
    arguments: list[list[str]] = []
    real_popen = subprocess.Popen

    def recording_popen(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        arguments.append(list(args))
        return real_popen(args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(embedded.subprocess, "Popen", recording_popen)

    with EmbeddedServer(tmp_path / "data") as info:
        pass

    assert len(arguments) == 1
    assert "--loadmodule" in arguments[0]
    assert not any(info.password in argument for argument in arguments[0])
    assert "--requirepass" not in arguments[0]
    assert info.password in (info.data_dir / "valkey.conf").read_text()


def test_redisbloom_commands_work(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server
    client = connect(info)
    try:
        client.execute_command("BF.RESERVE", "ips", 0.01, 1000)
        client.execute_command("BF.MADD", "ips", "10.0.0.1", "10.0.0.2")
        assert client.execute_command("BF.MEXISTS", "ips", "10.0.0.1", "10.0.0.9") == [1, 0]

        client.execute_command("TDIGEST.CREATE", "amounts")
        client.execute_command("TDIGEST.ADD", "amounts", *range(1, 101))
        (median,) = client.execute_command("TDIGEST.QUANTILE", "amounts", 0.5)
        assert 45.0 <= float(median) <= 55.0
    finally:
        client.close()


def test_password_reused_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    with EmbeddedServer(data_dir) as first:
        pass
    with EmbeddedServer(data_dir) as second:
        pass

    assert first.password == second.password
    assert len(first.password) >= 32


def test_loose_password_file_mode_is_fixed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "password").write_text("stored-password\n")
    (data_dir / "password").chmod(0o644)

    with EmbeddedServer(data_dir) as info:
        assert info.password == "stored-password"

    assert stat.S_IMODE((data_dir / "password").stat().st_mode) == 0o600


def test_empty_password_file_raises(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "password").write_text("\n")

    with pytest.raises(ServerError, match="password file .* is empty"):
        EmbeddedServer(data_dir).start()


def test_password_with_special_characters(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    password = 'a "quoted" \\ pass\tword é'
    (data_dir / "password").write_text(password + "\n")
    (data_dir / "password").chmod(0o600)

    with EmbeddedServer(data_dir) as info:
        client = redis.Redis(host=info.host, port=info.port, password=password)
        try:
            assert client.ping() is True
        finally:
            client.close()
        url_client = connect(info)
        try:
            assert url_client.ping() is True
        finally:
            url_client.close()


def test_data_dir_with_space(tmp_path: Path) -> None:
    data_dir = tmp_path / "with space" / "data"

    with EmbeddedServer(data_dir) as info:
        client = connect(info)
        try:
            assert client.config_get("dir") == {"dir": str(data_dir)}
        finally:
            client.close()


def test_persistence_survives_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    with EmbeddedServer(data_dir) as info:
        client = connect(info)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            client.set("plain", "kept")
            client.execute_command("BF.ADD", "ips", "10.0.0.1")
            client.execute_command("TDIGEST.CREATE", "amounts")
            client.execute_command("TDIGEST.ADD", "amounts", 10, 20, 30)
        finally:
            client.close()

    assert (data_dir / "dump.rdb").exists()  # written by SHUTDOWN SAVE
    assert (data_dir / "appendonlydir").is_dir()

    with EmbeddedServer(data_dir) as info:
        client = connect(info)
        try:
            assert client.get("plain") == b"kept"
            assert client.execute_command("BF.EXISTS", "ips", "10.0.0.1") == 1
            info_reply = client.execute_command("TDIGEST.INFO", "amounts")
            assert b"Observations" in info_reply or "Observations" in str(info_reply)
            (maximum,) = client.execute_command("TDIGEST.QUANTILE", "amounts", 1.0)
            assert float(maximum) == 30.0
        finally:
            client.close()


def test_without_persistence_data_is_lost(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    with EmbeddedServer(data_dir, persistence=False) as info:
        client = connect(info)
        try:
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("save") == {"save": ""}
            client.set("plain", "lost")
        finally:
            client.close()

    with EmbeddedServer(data_dir, persistence=False) as info:
        client = connect(info)
        try:
            assert client.get("plain") is None
        finally:
            client.close()
    assert not (data_dir / "dump.rdb").exists()


def test_second_server_in_same_data_dir_raises(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server

    with pytest.raises(ServerAlreadyRunningError) as caught:
        EmbeddedServer(info.data_dir).start()

    assert caught.value.info.pid == info.pid
    assert str(info.pid) in str(caught.value)


def test_concurrent_starts_share_one_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code = f"""
        import sys
        from pathlib import Path
        from scoring.embedded import EmbeddedServer, ServerAlreadyRunningError

        server = EmbeddedServer(Path({str(data_dir)!r}))
        sys.stdin.readline()  # wait until both processes are ready
        try:
            info = server.start()
            print("started", info.pid, flush=True)
        except ServerAlreadyRunningError as error:
            print("found", error.info.pid, flush=True)
        sys.stdin.readline()  # wait until the test has read both results
        server.stop()
    """
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    owners = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        for _ in range(2)
    ]
    try:
        for owner in owners:
            assert owner.stdin is not None
            owner.stdin.write("go\n")
            owner.stdin.flush()
        results = []
        for owner in owners:
            assert owner.stdout is not None
            results.append(owner.stdout.readline().split())
        for owner in owners:
            assert owner.stdin is not None
            owner.stdin.write("stop\n")
            owner.stdin.flush()
        for owner in owners:
            assert owner.wait(timeout=60) == 0
    finally:
        for owner in owners:
            if owner.poll() is None:
                owner.kill()
                owner.wait()
            for stream in (owner.stdin, owner.stdout):
                if stream is not None:
                    stream.close()

    assert sorted(result[0] for result in results) == ["found", "started"]
    assert results[0][1] == results[1][1]  # both name the same server pid


def test_missing_module_fails_with_log_tail(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    missing_module = tmp_path / "missing-module.so"

    with pytest.raises(ServerError) as caught:
        EmbeddedServer(data_dir, modules=[missing_module]).start()

    message = str(caught.value)
    assert "exited with code" in message
    assert "valkey.log" in message
    assert "missing-module.so" in message  # quoted from the server log
    assert not (data_dir / "server.json").exists()


def test_taken_port_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken_port = blocker.getsockname()[1]
        ports = iter([taken_port])
        real_free_port = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real_free_port())

        with caplog.at_level(logging.WARNING, logger="scoring.embedded"):
            with EmbeddedServer(tmp_path / "data") as info:
                assert info.port != taken_port
                client = connect(info)
                try:
                    assert client.ping() is True
                finally:
                    client.close()

    assert f"port {taken_port} was taken" in caplog.text


# --- ephemeral servers -----------------------------------------------------------------------------


def test_ephemeral_server_is_removed_on_stop(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, ephemeral=True)

    info = server.start()
    try:
        assert info.data_dir.parent == tmp_path
        assert info.data_dir.name.startswith("riskscore-valkey-")
        assert not (info.data_dir / "server.json").exists()
        assert find_running(tmp_path) is None
        assert find_running(info.data_dir) is None
        client = connect(info)
        try:
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("save") == {"save": ""}
        finally:
            client.close()
    finally:
        server.stop()

    assert not info.data_dir.exists()
    assert not embedded._pid_alive(info.pid)


def test_ephemeral_ignores_persistence_flag() -> None:
    server = EmbeddedServer(None, persistence=True, ephemeral=True)

    assert server.persistence is False


def test_ephemeral_servers_get_new_passwords() -> None:
    with EmbeddedServer(None, ephemeral=True) as first, EmbeddedServer(None, ephemeral=True) as second:
        assert first.password != second.password
        assert first.port != second.port


# --- finding a running server ----------------------------------------------------------------------


def test_find_running_returns_server(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server

    assert find_running(info.data_dir) == info


def test_find_running_without_state_file(tmp_path: Path) -> None:
    assert find_running(tmp_path) is None
    assert find_running(tmp_path / "absent") is None


def test_other_process_finds_running_server(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, info = server
    code = f"""
        import json
        from pathlib import Path
        import redis
        from scoring.embedded import find_running

        info = find_running(Path({str(info.data_dir)!r}))
        client = redis.Redis.from_url(info.url(0))
        client.set("written-by", "child")
        client.close()
        print(json.dumps({{"port": info.port, "pid": info.pid}}))
    """

    result = run_python(code)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"port": info.port, "pid": info.pid}
    client = connect(info)
    try:
        assert client.get("written-by") == b"child"
    finally:
        client.close()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_state(data_dir: Path, port: int, pid: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    state = {"port": port, "pid": pid, "started_at": "2024-01-01T00:00:00+00:00"}
    (data_dir / "server.json").write_text(json.dumps(state))
    (data_dir / "password").write_text("some-password\n")


def test_stale_state_dead_pid_ignored(tmp_path: Path) -> None:
    write_state(tmp_path, free_port(), dead_pid())

    assert find_running(tmp_path) is None


def test_stale_state_nothing_listening_ignored(tmp_path: Path) -> None:
    write_state(tmp_path, free_port(), os.getpid())

    assert find_running(tmp_path) is None


def test_stale_state_reused_port_ignored(tmp_path: Path, redis_server: ServerInfo) -> None:
    # The port now belongs to another server (the session server), with another password and pid.
    write_state(tmp_path, redis_server.port, os.getpid())
    assert find_running(tmp_path) is None

    (tmp_path / "password").write_text(redis_server.password)
    assert find_running(tmp_path) is None


@pytest.mark.parametrize(
    "content",
    ["", "not json", "[]", '{"port": 6379}', '{"port": "6379", "pid": 1}', '{"port": 70000, "pid": 1}'],
)
def test_invalid_state_file_ignored(tmp_path: Path, content: str) -> None:
    (tmp_path / "server.json").write_text(content)
    (tmp_path / "password").write_text("some-password\n")

    assert find_running(tmp_path) is None


def test_missing_password_file_ignored(server: tuple[EmbeddedServer, ServerInfo], tmp_path: Path) -> None:
    _embedded_server, info = server
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    (other_dir / "server.json").write_text((info.data_dir / "server.json").read_text())

    assert find_running(other_dir) is None


def test_start_replaces_stale_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedServer(data_dir):
        pass
    write_state(data_dir, free_port(), dead_pid())
    (data_dir / "password").unlink()

    with EmbeddedServer(data_dir) as info:
        state = json.loads((data_dir / "server.json").read_text())
        assert state["pid"] == info.pid
        assert find_running(data_dir) == info


def test_stop_keeps_state_of_another_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = EmbeddedServer(data_dir)
    server.start()
    other_state = {"port": 1, "pid": 1, "started_at": "2024-01-01T00:00:00+00:00"}
    (data_dir / "server.json").write_text(json.dumps(other_state))

    server.stop()

    assert json.loads((data_dir / "server.json").read_text()) == other_state


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal exists on Linux only")
def test_server_exits_when_owner_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code = f"""
        import json, sys, time
        from pathlib import Path
        import redis
        from scoring.embedded import EmbeddedServer

        info = EmbeddedServer(Path({str(data_dir)!r})).start()
        client = redis.Redis.from_url(info.url(0))
        client.set("before-kill", "kept")
        client.close()
        print(json.dumps({{"pid": info.pid}}), flush=True)
        time.sleep(120)
    """
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
    )
    try:
        assert owner.stdout is not None
        server_pid = json.loads(owner.stdout.readline())["pid"]
        assert embedded._pid_alive(server_pid)

        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()

    assert wait_for_exit(server_pid), "the server outlived its killed owner"
    assert find_running(data_dir) is None

    # SIGTERM made the server save, and the next start reuses the data and replaces the stale state.
    with EmbeddedServer(data_dir) as info:
        client = connect(info)
        try:
            assert client.get("before-kill") == b"kept"
        finally:
            client.close()


def test_server_started_in_thread_survives_thread(tmp_path: Path) -> None:
    # The parent-death signal would fire when the starting thread exits, so it is not used there.
    server = EmbeddedServer(tmp_path, ephemeral=True)
    thread = threading.Thread(target=server.start)
    thread.start()
    thread.join()
    try:
        assert server.info is not None
        time.sleep(0.5)
        assert embedded._pid_alive(server.info.pid)
    finally:
        server.stop()


def test_ctrl_c_reaches_owner_not_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code = f"""
        import json, time
        from pathlib import Path
        from scoring.embedded import EmbeddedServer

        with EmbeddedServer(Path({str(data_dir)!r})) as info:
            # The pid is printed inside the try: SIGINT can arrive as soon as the test reads it.
            try:
                print(json.dumps({{"pid": info.pid}}), flush=True)
                time.sleep(120)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    """
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # The owner leads its own process group, like a foreground job, and Ctrl-C is SIGINT to the group.
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        server_pid = json.loads(owner.stdout.readline())["pid"]

        os.killpg(owner.pid, signal.SIGINT)
        remaining_output = owner.stdout.read()
        assert owner.wait(timeout=30) == 0
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()

    assert "interrupted" in remaining_output
    assert wait_for_exit(server_pid)
    server_log = (data_dir / "valkey.log").read_text()
    assert "Received SIGINT" not in server_log
    assert "User requested shutdown" in server_log  # the owner's SHUTDOWN command
    assert not (data_dir / "server.json").exists()


# --- choosing the server: redis_urls and resolve_running_urls --------------------------------------


def test_redis_urls_configured_url_wins(settings: Settings, server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, running = server
    settings = settings.model_copy(update={"data_dir": running.data_dir})
    configured = settings.redis_url
    assert configured is not None

    for ephemeral in (False, True):
        with redis_urls(settings, ephemeral=ephemeral) as (data_url, broker_url):
            assert data_url == configured.get_secret_value()
            assert broker_url == derive_broker_url(data_url, 1)
            assert parse_url(broker_url)["db"] == 1
            assert parse_url(data_url)["port"] != running.port


def test_redis_urls_configured_broker_url(settings: Settings, redis_server: ServerInfo) -> None:
    broker = redis_server.url(7)
    settings = load_settings(redis_url=redis_server.url(0), broker_url=broker, data_dir=settings.data_dir)

    with redis_urls(settings) as (_data_url, broker_url):
        assert broker_url == broker


def test_redis_urls_uses_running_server(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, running = server
    settings = embedded_settings(running.data_dir, broker_db=2)

    with redis_urls(settings) as (data_url, broker_url):
        assert data_url == running.url(0)
        assert broker_url == running.url(2)

    assert find_running(running.data_dir) == running  # not stopped by the block


def test_redis_urls_starts_and_stops_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = embedded_settings(data_dir, broker_db=3)

    with redis_urls(settings) as (data_url, broker_url):
        info = find_running(data_dir)
        assert info is not None
        assert data_url == info.url(0)
        assert broker_url == info.url(3)
        client = redis.Redis.from_url(broker_url)
        try:
            assert client.ping() is True
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            client.close()

    assert find_running(data_dir) is None
    assert not (data_dir / "server.json").exists()
    assert not embedded._pid_alive(info.pid)


def test_redis_urls_honours_embedded_persistence(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "data", embedded_persistence=False)

    with redis_urls(settings) as (data_url, _broker_url):
        client = redis.Redis.from_url(data_url)
        try:
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()


def test_redis_urls_embedded_with_broker_url(tmp_path: Path, redis_server: ServerInfo) -> None:
    broker = redis_server.url(5)
    settings = embedded_settings(tmp_path / "data", broker_url=broker)

    with redis_urls(settings) as (data_url, broker_url):
        assert broker_url == broker
        assert parse_url(data_url)["port"] != redis_server.port


def test_redis_urls_ephemeral_starts_new_server(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, running = server
    settings = embedded_settings(running.data_dir)

    with redis_urls(settings, ephemeral=True) as (data_url, broker_url):
        parsed = parse_url(data_url)
        assert parsed["port"] != running.port
        assert parsed["password"] != running.password
        assert parse_url(broker_url)["db"] == 1

    assert find_running(running.data_dir) == running


def test_redis_urls_never_logs_password(
    tmp_path: Path, redis_server: ServerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    configured = load_settings(redis_url=redis_server.url(0), broker_url=None, data_dir=tmp_path)
    embedded_only = embedded_settings(tmp_path / "data")

    with caplog.at_level(logging.DEBUG, logger="scoring.embedded"):
        with redis_urls(configured):
            pass
        with redis_urls(embedded_only) as (data_url, _broker_url):
            started_password = parse_url(data_url)["password"]

    assert "using the configured Redis server redis://127.0.0.1:" in caplog.text
    assert "started embedded server" in caplog.text
    assert redis_server.password not in caplog.text
    assert started_password not in caplog.text


def test_resolve_running_urls_without_server_raises(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)

    with pytest.raises(ServerError, match="no embedded server is running"):
        resolve_running_urls(settings)


def test_resolve_running_urls_finds_server(server: tuple[EmbeddedServer, ServerInfo]) -> None:
    _embedded_server, running = server
    settings = embedded_settings(running.data_dir)

    assert resolve_running_urls(settings) == (running.url(0), running.url(1))


def test_resolve_running_urls_configured(settings: Settings) -> None:
    assert settings.redis_url is not None
    data_url = settings.redis_url.get_secret_value()

    assert resolve_running_urls(settings) == (data_url, derive_broker_url(data_url, 1))
