"""Running ASGI apps on granian (chosen by bench/server.py: see docs/benchmarks.md), and the
simulated model as a child process that serve starts when no upstream is configured.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from floodwall.config import SETTINGS_ENV, Settings

APP_FACTORY = "floodwall.app:app_from_env"
MODEL_FACTORY = "floodwall.sim.model:app_from_env"


def run(factory: str, settings: Settings, host: str, port: int, workers: int = 1) -> None:
    """Serve `factory` (a module:function returning an ASGI app) until SIGINT or SIGTERM."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    os.environ[SETTINGS_ENV] = settings.to_json()
    _raise_file_limit(settings.server.max_connections * workers + 1024)
    server = Granian(
        factory, address=host, port=port, interface=Interfaces.ASGI, workers=workers, factory=True,
        log_enabled=True, log_access=settings.server.access_log, backlog=2048,
        backpressure=settings.server.max_connections,
        # slowloris and oversized headers end in granian, before the request is parsed
        http1_settings=HTTP1Settings(header_read_timeout=max(1, int(settings.server.header_timeout * 1000)),
                                     max_buffer_size=int(settings.server.max_header_size)),
    )
    server.serve()


def _raise_file_limit(wanted: int) -> None:
    """Every connection is a file: lift the soft limit (often 1,024) toward what max_connections needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        if limit < wanted:
            logging.getLogger("floodwall").warning(
                "open files are limited to %d (the hard limit); server.max_connections wants %d", limit, wanted)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_port_free(host: str, port: int) -> None:
    """granian listens with SO_REUSEPORT, so a second server on a port in use would silently share it (and
    its traffic, with another database): bind once without it first. OSError if anything listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def exit_with_parent() -> None:
    """In a server worker: end when the process that started it is gone, so that a SIGKILL of serve (or of
    the model server) leaves no orphan worker answering on its port."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        # a granian worker may ignore SIGTERM (its main process handles signals): seen alive 45 minutes
        # after its serve was gone, holding two threads and its port
        time.sleep(10.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if serve dies, even by SIGKILL, so no orphan model server is left
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_until_up(url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None,
                  expect: int = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == expect:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == expect:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


@contextlib.contextmanager
def simulated_model(settings: Settings) -> Iterator[str]:
    """Start `floodwall model` on a free loopback port for the duration; yields its /v1 base URL."""
    port = free_port()
    env = {**os.environ, SETTINGS_ENV: settings.to_json()}
    command = [sys.executable, "-m", "floodwall", "model", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process=process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
