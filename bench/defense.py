"""The headline benchmark (issue 4): the same `floodwall attack mixed` run against three setups on this
machine, one after the other, in one command:

  none       the simulated model server with no gateway in front
  nginx      the model behind nginx (Debian's package) with a typical per-address limit_req configuration
  floodwall  the model behind floodwall (default policy, memory state, SQLite)

The model runs 8 generations at once; the flood comes from --sources loopback addresses at --rate requests
a second (at least 50x the model's capacity). Established users are 8 accounts made before the attack (in
floodwall, backdated past `defense.new_account_age`; the other setups have no accounts and take any key).
Prints one table side by side and writes bench/out/defense.json and bench/out/defense.png.

    python bench/defense.py [--duration 30] [--calm 10] [--recovery 20] [--sources 5000] [--rate 1000]
                            [--only none,nginx,floodwall] [--scenario mixed]

Needs nginx (apt install nginx-light). Traffic only goes to loopback addresses, and each run is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import ADMIN_TOKEN, account_key, process
from floodwall.config import SETTINGS_ENV, load
from floodwall.server import free_port

OUT = Path(__file__).with_name("out")
ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
GRANIAN = [sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "1", "--no-ws",
           "--log-level", "warning", "--backlog", "4096"]
# a model server of a modest GPU: 8 generations at once, 20 tokens a second each, 16-token replies
SLOTS, TOKENS_PER_SECOND, REPLY_TOKENS = 8, 20, 16
CAPACITY = SLOTS * TOKENS_PER_SECOND / REPLY_TOKENS  # calls a second the model can finish
USERS = 8
# a typical per-address nginx limit for an API: 10 requests a second, bursts of 20, refused with 429
NGINX_CONF = """
worker_processes 1;
user root;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  limit_req_zone $binary_remote_addr zone=perip:20m rate=10r/s;
  limit_req_status 429;
  upstream model {{ server 127.0.0.1:{model_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      limit_req zone=perip burst=20 nodelay;
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
"""


def model_command(port: int) -> tuple[list[str], dict[str, str]]:
    env = {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": SLOTS, "queue_size": 64, "tokens_per_second": TOKENS_PER_SECOND, "reply_tokens": REPLY_TOKENS,
        "first_token_delay": 0.02}}).to_json()}
    return [*GRANIAN, "--factory", "--port", str(port), "floodwall.sim.model:app_from_env"], env


def floodwall_env(tmp: Path, upstream: str) -> dict[str, str]:
    from floodwall.db.engine import upgrade
    from floodwall.edge.policy import DEFAULT_POLICY

    # the default policy, told what an operator knows of their model server: how many calls it runs at once
    policy = DEFAULT_POLICY.read_text().replace("\nmin_limit = 1\n", f"\nmin_limit = {SLOTS}\n")
    assert f"min_limit = {SLOTS}" in policy
    (tmp / "policy.toml").write_text(policy)
    settings = load(environ={}, overrides={
        "database": {"url": f"sqlite:///{tmp / 'defense.db'}"}, "log": {"level": "warning", "format": "json"},
        "upstream": {"url": upstream}, "admin": {"token": ADMIN_TOKEN}, "edge": {"policy": str(tmp / "policy.toml")}})
    upgrade(settings.database.url)
    return {SETTINGS_ENV: settings.to_json()}


def established_keys(base: str, tmp: Path) -> Path:
    """Eight accounts made before the attack, backdated a month so floodwall counts them as established."""
    keys = [account_key(base, f"member{i}@example.com", f"127.9.{i}.1") for i in range(USERS)]
    with sqlite3.connect(tmp / "defense.db") as db:
        db.execute("UPDATE users SET created_at = datetime('now', '-30 days') WHERE email LIKE 'member%'")
    path = tmp / "keys.txt"
    path.write_text("\n".join(keys) + "\n")
    return path


def attack(target: str, args: argparse.Namespace, tmp: Path, name: str, keys: Path | None) -> dict[str, Any]:
    report = tmp / f"{name}.json"
    command = [sys.executable, "-m", "floodwall", "attack", args.scenario, "--target", target, "--quiet",
               "--duration", str(args.duration), "--calm", str(args.calm), "--recovery", str(args.recovery),
               "--sources", str(args.sources), "--rate", str(args.rate), "--users", str(USERS),
               "--report", str(report), "--plot", str(OUT / f"defense-{name}.png")]
    if keys is not None:
        command += ["--keys", str(keys), "--admin-token", ADMIN_TOKEN]
    if CORPORA.is_dir():
        command += ["--corpora", str(CORPORA)]
    print(f"== {name}: {' '.join(command[3:])}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + args.calm +
                          args.recovery + 600)
    print(done.stdout, flush=True)
    if done.returncode != 0:
        raise SystemExit(f"the attack against {name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def run_none(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    command, env = model_command(port)
    with process(command, env, f"http://127.0.0.1:{port}/health", tmp / "model-none.log"):
        return attack(f"http://127.0.0.1:{port}", args, tmp, "none", tmp / "any-keys.txt")


def run_nginx(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed: apt install nginx-light")
    model_port, port = free_port(), free_port()
    command, env = model_command(model_port)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, model_port=model_port, port=port))
    nginx = ["nginx", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    with process(command, env, f"http://127.0.0.1:{model_port}/health", tmp / "model-nginx.log"), \
            process(nginx, {}, f"http://127.0.0.1:{port}/health", tmp / "nginx.log"):
        return attack(f"http://127.0.0.1:{port}", args, tmp, "nginx", tmp / "any-keys.txt")


@contextlib.contextmanager
def serving(tmp: Path) -> Iterator[str]:
    """A fresh floodwall (default policy, memory state, SQLite in `tmp`) in front of a fresh simulated
    model; yields its base URL."""
    model_port, port = free_port(), free_port()
    command, env = model_command(model_port)
    fw = [*GRANIAN, "--factory", "--port", str(port), "floodwall.app:app_from_env"]
    base = f"http://127.0.0.1:{port}"
    with process(command, env, f"http://127.0.0.1:{model_port}/health", tmp / "model-fw.log"), \
            process(fw, floodwall_env(tmp, f"http://127.0.0.1:{model_port}/v1"), f"{base}/healthz",
                    tmp / "floodwall.log"):
        yield base


def run_floodwall(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with serving(tmp) as base:
        return attack(base, args, tmp, "floodwall", established_keys(base, tmp))


SETUPS = {"none": run_none, "nginx": run_nginx, "floodwall": run_floodwall}


def row(reports: dict[str, dict[str, Any]], label: str, pick: Any) -> str:
    cells = []
    for report in reports.values():
        try:
            value = pick(report)
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        cells.append("-" if value is None else str(value))
    return f"| {label} | " + " | ".join(cells) + " |"


def pct(value: Any) -> str | None:
    return None if value is None else f"{float(value) * 100:.2f}%"


def table(reports: dict[str, dict[str, Any]]) -> str:
    established = lambda r, phase: r["established"][phase]  # noqa: E731
    lines = [
        "| | " + " | ".join(reports) + " |",
        "|---|" + "---:|" * len(reports),
        row(reports, "established: calls during the attack", lambda r: established(r, "attack")["requests"]),
        row(reports, "established: served during the attack",
            lambda r: pct(established(r, "attack")["success_rate"])),
        row(reports, "established: p95 ms calm / attack",
            lambda r: f"{established(r, 'calm')['latency_ms']['p95']} / "
                      f"{established(r, 'attack')['latency_ms']['p95']}"),
        row(reports, "established: p95 attack / calm", lambda r: r["established"]["p95_ratio_attack_vs_calm"]),
        row(reports, "established: TTFT p95 ms during the attack",
            lambda r: established(r, "attack")["ttft_ms"]["p95"]),
        row(reports, "established: served after the attack",
            lambda r: pct(established(r, "recovery")["success_rate"])),
        row(reports, "flood requests (offered / s)",
            lambda r: f"{r['populations']['flood']['requests']} ({r['flood']['rate_per_s']:g})"),
        row(reports, "attack calls that reached the model", lambda r: r["attackers"]["reached_model"]),
        row(reports, "bot accounts created / attempts",
            lambda r: f"{r['attackers']['bot_accounts_created']} / {r['attackers']['bot_signup_attempts']}"),
        row(reports, "flash crowd registered / people",
            lambda r: f"{r['attackers']['flash_crowd_registered']} / {r['attackers']['flash_crowd_people']}"),
        row(reports, "takeovers: leaked pairs / wrong password",
            lambda r: f"{r['attackers']['takeovers_with_leaked_password']} / "
                      f"{r['attackers']['logins_with_wrong_password']}"),
        row(reports, "owners' own sign-ins during stuffing: ok / tried",
            lambda r: f"{r['attackers']['owner_logins_ok']} / {r['attackers']['owner_logins']}"),
        row(reports, "answers that failed (500, or 5xx without a reason), all populations",
            lambda r: sum(r["server_failures"].values())),
        row(reports, "defense level over time",
            lambda r: ", ".join(f"{at:.0f}s {lvl}" for at, lvl in r["service"]["levels"]) or None),
        row(reports, "registration limited (s)",
            lambda r: ", ".join(f"{a}-{b}" for a, b in r["service"]["registration_limited_s"]) or "never"),
    ]
    return "\n".join(lines)


def plot(reports: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(reports), figsize=(5 * len(reports), 6.5), sharex=True, squeeze=False)
    for column, (name, report) in enumerate(reports.items()):
        top, bottom = axes[0][column], axes[1][column]
        start, stop = report["phases_s"]["attack"]
        for population, series in report["series"].items():
            style = {"linewidth": 2.6, "color": "black"} if population == "established" else {"linewidth": 1,
                                                                                                "alpha": 0.7}
            xs = range(len(series["success_rate"]))
            top.plot(xs, [None if v is None else v * 100 for v in series["success_rate"]], label=population,
                     **style)
            bottom.plot(xs, series["p95_ms"], label=population, **style)
        for axis in (top, bottom):
            axis.axvspan(start, stop, color="tab:red", alpha=0.08)
            axis.grid(alpha=0.3)
        top.set_title(name)
        top.set_ylim(-5, 105)
        bottom.set_yscale("log")
        bottom.set_xlabel("seconds (attack shaded)")
    axes[0][0].set_ylabel("served (%)")
    axes[1][0].set_ylabel("p95 latency, served calls (ms)")
    axes[0][0].legend(loc="lower left", fontsize=7, ncol=2)
    figure.suptitle(f"floodwall attack mixed: no gateway, nginx limit_req, floodwall (model capacity "
                    f"{CAPACITY:g} calls/s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--calm", type=float, default=10)
    parser.add_argument("--recovery", type=float, default=20)
    parser.add_argument("--sources", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--only", default=",".join(SETUPS))
    parser.add_argument("--scenario", default="mixed", help="another scenario, to look at one attack alone")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fw-defense-"))
    (tmp / "any-keys.txt").write_text("\n".join(f"sk-user-{i}" for i in range(USERS)) + "\n")
    flood_calls = args.rate * 0.5  # half the flood is inference calls (the rest pages and keyed calls)
    print(f"model capacity {CAPACITY:g} calls/s; flood {args.rate:g} requests/s from {args.sources} addresses, "
          f"of them {flood_calls:g} inference calls/s without a key: {flood_calls / CAPACITY:.0f}x capacity; "
          f"{math.ceil(args.rate * 0.7 / CAPACITY)}x counting every call", flush=True)
    reports = {name: SETUPS[name](args, tmp) for name in args.only.split(",")}
    text = table(reports)
    print(text)
    (OUT / "defense.json").write_text(json.dumps({"args": vars(args), "capacity_calls_per_s": CAPACITY,
                                                  "reports": reports}, indent=2))
    plot(reports, OUT / "defense.png")
    print(f"\nwrote {OUT / 'defense.json'} and {OUT / 'defense.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
