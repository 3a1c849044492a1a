"""The command line as a new operator meets it: serve with nothing configured, db upgrade, bad config."""

from __future__ import annotations

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
                          env={**os.environ, **(env or {})}, timeout=120)


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
    blocklists with their licences): every file git tracks under src/floodwall is in the wheel."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("floodwall-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "src/floodwall"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(tracked) > 100
    missing = [path for path in tracked if path.removeprefix("src/") not in names]
    assert not missing
    assert not [name for name in names if name.startswith(("tests/", "bench/")) or "__pycache__" in name]


# what a base install (no extras) lacks: the extras' own distributions, made unimportable in the child
def _extras_only() -> list[str]:
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    base = {_name(spec) for spec in project["dependencies"]} | {"floodwall"}
    extras = {_name(spec) for specs in project["optional-dependencies"].values() for spec in specs} - base
    modules = [module for module, dists in importlib.metadata.packages_distributions().items()
               if {_name(d) for d in dists} & extras and re.fullmatch(r"[A-Za-z_]\w*", module)]
    assert {"httpx", "openai", "rich", "matplotlib", "aiohttp", "uvicorn", "pytest"} <= set(modules)
    return modules


def _name(spec: str) -> str:
    import re

    return re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def base_install(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command as on a base install: importing any extra's module fails as it would there."""
    code = ("import sys; sys.modules.update(dict.fromkeys(sys.argv[1].split(','))); "
            "from floodwall.cli import main; sys.exit(main(sys.argv[2:]))")
    return subprocess.run([sys.executable, "-c", code, ",".join(_extras_only()), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


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
