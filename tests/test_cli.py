"""The command line as a new operator meets it: serve with nothing configured, db upgrade, bad config."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from floodwall.server import free_port, wait_until_up


def floodwall(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "floodwall", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=100)


def test_serve_with_embedded_defaults_and_the_simulated_model(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "floodwall", "serve", "--port", str(port)], cwd=tmp_path,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "FLOODWALL_ACCOUNTS_PASSWORD_HASH_PROFILE": "fast"})
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", process=process, timeout=60)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as web:
            web.post("/auth/register", json={"email": "first@example.com", "password": "a long password"})
            web.post("/auth/login", json={"email": "first@example.com", "password": "a long password"})
            key = web.post("/account/keys", json={}).json()["key"]
            assert "simulated model" in web.get("/chat").text
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        model = client.models.list().data[0].id
        assert "simulated" in model
        assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=3).choices[0].message.content
        assert (tmp_path / "floodwall.db").exists()  # the embedded default, in the working directory
        children = _children(process.pid)
        assert children, "serve should run the simulated model as a child process"
    finally:
        process.terminate()
        process.wait(20)
    output = log.read_text()
    assert "SIMULATED" in output and "NO UPSTREAM MODEL CONFIGURED" in output
    # the model server and the workers went away with serve
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def _children(pid: int) -> list[int]:
    listing = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in listing.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its parent's bookkeeping remains
    state = Path(f"/proc/{pid}/stat")
    return state.exists() and state.read_text().split(") ")[-1][:1] != "Z"


def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for _ in range(2):
        result = floodwall("db", "upgrade", "--database", url, cwd=tmp_path)
        assert result.returncode == 0 and "up to date" in result.stdout


def test_version_and_help(tmp_path: Path) -> None:
    assert floodwall("--version", cwd=tmp_path).stdout.startswith("floodwall ")
    assert "serve" in floodwall("--help", cwd=tmp_path).stdout


def test_bad_configuration_exits_2_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[server]\nport = 'x'\n")
    result = floodwall("serve", "--config", str(tmp_path / "bad.toml"), cwd=tmp_path)
    assert result.returncode == 2 and "server.port" in result.stderr
    result = floodwall("serve", cwd=tmp_path, env={"FLOODWALL_DEFENSE_LEVEL": "panic"})
    assert result.returncode == 2 and "defense.level" in result.stderr


def test_bad_policy_stops_start_up_with_its_message(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text('[[rule]]\nname = "x"\nclasses = ["page"]\nkey = "ip"\nnormal = "fast"\n')
    result = floodwall("serve", cwd=tmp_path, env={"FLOODWALL_EDGE_POLICY": str(tmp_path / "policy.toml")})
    assert result.returncode == 2 and "not a limit" in result.stderr


def test_the_wheel_ships_every_file_of_the_package(tmp_path: Path) -> None:
    """What a non-editable install needs besides code (templates, static files, migrations, policies, the
    blocklists with their licences): every file git tracks under src/floodwall is in the wheel, and no code
    that git does not track (a stale build/ in the checkout) is."""
    import shutil
    import zipfile

    root = Path(__file__).resolve().parent.parent
    visible = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    source = tmp_path / "source"
    for path in filter(None, visible):
        if (root / path).is_file():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / path, source / path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=100)
    (wheel,) = tmp_path.glob("floodwall-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {path.removeprefix("src/") for path in visible if path.startswith("src/floodwall/")}
    assert len(package) > 100
    assert not package - names
    assert not [name for name in names if name.startswith("floodwall/") and name not in package]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


@functools.cache
def _extras_only() -> list[str]:
    """The modules a base install (no extras) lacks: those of every distribution the extras bring, directly or
    through their own requirements, that the base requirements do not."""
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    base = _closure(project["dependencies"])
    extras = _closure([spec for specs in project["optional-dependencies"].values() for spec in specs])
    lacking = extras - base - {"floodwall"}
    modules = [module for module, dists in importlib.metadata.packages_distributions().items()
               if {_canonical(d) for d in dists} & lacking and re.fullmatch(r"[A-Za-z_]\w*", module)]
    assert {"httpx", "openai", "rich", "matplotlib", "aiohttp", "uvicorn", "pytest", "httpcore"} <= set(modules)
    return modules


def _closure(specs: list[str]) -> set[str]:
    """The installed distributions these requirements bring, with their extras, transitively."""
    import importlib.metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [Requirement(spec) for spec in specs]
    while todo:
        requirement = todo.pop()
        name = _canonical(requirement.name)
        if name in seen and not requirement.extras:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        wanted = ["", *sorted(requirement.extras)]
        for text in requires:
            needed = Requirement(text)
            applies = needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in wanted)
            if applies and _canonical(needed.name) not in seen:
                todo.append(needed)
    return seen


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def base_install(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command as on a base install: importing any extra's module fails as it would there."""
    code = ("import sys; sys.modules.update(dict.fromkeys(sys.argv[1].split(','))); "
            "from floodwall.cli import main; sys.exit(main(sys.argv[2:]))")
    return subprocess.run([sys.executable, "-c", code, ",".join(_extras_only()), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=100)


def test_every_command_answers_help_without_the_extras(tmp_path: Path) -> None:
    from floodwall.cli import parser

    commands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "model", "db", "attack", "level", "users", "incident"} <= set(commands)
    for name in commands:
        result = base_install(name, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "usage: floodwall" in result.stdout, (name, result.stderr)
    assert "floodwall[attack]" in base_install("attack", "--help", cwd=tmp_path).stdout
    result = base_install("db", "upgrade", "--database", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert result.returncode == 0 and "up to date" in result.stdout


def test_attack_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    result = base_install("attack", "flood", "--target", "http://127.0.0.1:9", "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("floodwall attack needs ") and line.endswith("pip install 'floodwall[attack]'")


def test_a_port_in_use_stops_serve_and_model_with_one_line(tmp_path: Path) -> None:
    """granian shares a port it finds taken (SO_REUSEPORT): a second serve must say so, not split the traffic."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in (["serve", "--port", port], ["model", "--port", port]):
            result = floodwall(*command, cwd=tmp_path)
            assert result.returncode == 2
            (line,) = result.stderr.splitlines()
            assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
    assert not (tmp_path / "floodwall.db").exists()  # stopped before the database was touched


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    unreachable = "postgresql://postgres@127.0.0.1:1/nothing"
    for command in (["db", "upgrade", "--database", unreachable], ["serve", "--port", str(free_port()),
                                                                   "--database", unreachable]):
        result = floodwall(*command, cwd=tmp_path)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()[-1:]
        assert "cannot open the database postgresql://postgres@127.0.0.1:1/nothing" in line
        assert "Traceback" not in result.stderr


def test_operator_commands_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    env = {"FLOODWALL_ADMIN_TOKEN": "x" * 32}
    for url, expected in (("not-a-url", "--url must be"), ("ftp://127.0.0.1/", "--url must be"),
                          (f"http://127.0.0.1:{free_port()}", "cannot reach floodwall")):
        result = floodwall("level", "--url", url, cwd=tmp_path, env=env)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert expected in line


def test_no_process_outlives_a_killed_serve(tmp_path: Path) -> None:
    """SIGKILL gives serve no chance to stop its children: its workers and the simulated model (with its own
    worker) must notice and go, not keep answering on the port."""
    import signal

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "floodwall", "serve", "--port", str(port)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", process=process, timeout=60)
        family = _descendants(process.pid)
        assert len(family) >= 3  # serve's worker, the model server and its worker
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in family if _alive(pid)]
    result = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/healthz"],
                            capture_output=True, text=True, timeout=10)
    assert result.stdout == "000"


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def test_mail_without_a_public_url_stops_start_up(tmp_path: Path) -> None:
    """Links in e-mails come from server.public_url only: with mail on and none, serve refuses to start."""
    result = floodwall("serve", cwd=tmp_path, env={"FLOODWALL_MAIL_URL": "smtp://127.0.0.1:25",
                                                   "FLOODWALL_SERVER_PUBLIC_URL": ""})
    assert result.returncode == 2 and "server.public_url must be set when mail.url is" in result.stderr
