"""Redis round trips per model call: how many commands one /v1/chat/completions through floodwall costs Redis,
counted by Redis itself (INFO commandstats), against a baseline checkout measured in the same run.

Each tree (a checkout: this repo, and by default the commit before the batched charges, 927db12, in a git
worktree) runs its own simulated model and floodwall (state.url = Redis, a fresh key prefix each start, the
default policy with the inference request-rate rules raised out of reach: token budgets and in-flight caps
stay as they are, so every decision is still made and every call is served). For each tier (`new`: an account
younger than defense.new_account_age; `established`: the same with the age set to 0s) and each kind of call
(non-streaming, streaming) it makes `--calls` sequential chat completions (max_tokens 8) after a few warm-up
calls, waits 1.5 s for the charges no decision took along (sent on their own after 1 s) and reads the
counters; then it reads them over an idle window of the same length (the background tasks: level refresh,
traffic counts, leases) and subtracts that. EVALSHA is the GCRA script, one per limit decision or charge:
the round trips; "all" is every command but INFO, the GET/SET/TIME the scripts run inside Redis included;
"sent" is "all" without those. Trees are interleaved (before, main, before, main) for `--rounds`; medians
and main/before are printed.

    python bench/round_trips.py [--calls 200] [--rounds 2] [--gap 0] [--tree PATH ...] [--redis-port 6379]
                                [--private]

`--gap` pauses between calls: a call's charges (its tokens reconciled) ride along with the next decision,
anyone's, or go on their own after a second with none.
Needs Redis at 127.0.0.1; its counters are the whole server's, so rows measured while other clients were
connected are marked "!"; `--private` starts a redis-server of the bench's own instead.
Writes bench/out/round_trips.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from _common import account_key, process
from floodwall.server import free_port

OUT = Path(__file__).with_name("out")
MAIN = Path(__file__).resolve().parent.parent
BEFORE = "927db12"
GRANIAN = [sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "1", "--no-ws",
           "--log-level", "warning"]
TIERS = {"new": 86400, "established": 0}  # defense.new_account_age, seconds
KINDS = ("plain", "stream")
FIGURES = ("evalsha", "all", "sent")
WARM_UP = 5
SETTLE = 1.5  # > state/redis.py CHARGE_DELAY: the charges no decision took along are sent
# the settings as the tree itself resolves them (its own config module)
SETTINGS = ("import json, sys\nfrom floodwall.config import load\n"
            "print(load(environ={}, overrides=json.loads(sys.argv[1])).to_json())")
# what the Lua scripts run inside Redis (counted by commandstats like any command): on a call's path floodwall
# sends none of these itself (GET and SET of the level only from the periodic refresh, and on a change)
IN_SCRIPTS = ("get", "set", "time")


def worktree(path: str | None) -> Path:
    """The baseline checkout: `path`, or a worktree of BEFORE at /tmp/old (/tmp/old927 if that is another one)."""
    if path:
        return Path(path).resolve()
    commit = subprocess.run(["git", "-C", str(MAIN), "rev-parse", BEFORE], capture_output=True, text=True,
                            check=True).stdout.strip()
    for candidate in (Path("/tmp/old"), Path("/tmp/old927")):
        if not candidate.exists():
            subprocess.run(["git", "-C", str(MAIN), "worktree", "add", "--detach", str(candidate), BEFORE],
                           check=True, capture_output=True)
            return candidate
        head = subprocess.run(["git", "-C", str(candidate), "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.stdout.strip() == commit:
            return candidate
    raise SystemExit("/tmp/old and /tmp/old927 are both other checkouts: pass --tree")


def tree_env(tree: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(tree / "src"), **extra}


def settings_json(tree: Path, overrides: dict[str, Any]) -> str:
    env = {**os.environ, **tree_env(tree)}
    return subprocess.run([sys.executable, "-c", SETTINGS, json.dumps(overrides)], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def policy(tree: Path, tmp: Path) -> Path:
    """The tree's default policy, with the request-rate limits on inference calls out of reach."""
    blocks = (tree / "src/floodwall/edge/default_policy.toml").read_text().split("[[rule]]")
    blocks = [re.sub(r'"\d+/\d*[smhd](?: burst \d+)?"', '"1000000/1m burst 100000"', b)
              if '"api-inference"' in b else b for b in blocks]
    path = tmp / f"policy-{tree.name}.toml"
    path.write_text("[[rule]]".join(blocks))
    return path


@contextlib.contextmanager
def private_redis(tmp: Path) -> Iterator[int]:
    """A Redis server of the bench's own on a free port, keeping nothing: no other client's commands counted."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    try:
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout != "PONG\n":
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def others(port: int) -> int:
    """Clients connected to Redis besides this redis-cli (before the bench's own servers start)."""
    info = subprocess.run(["redis-cli", "-p", str(port), "info", "clients"], capture_output=True, text=True,
                          check=True).stdout
    return int(re.search(r"connected_clients:(\d+)", info).group(1)) - 1  # type: ignore[union-attr]


def counters(port: int) -> dict[str, int]:
    info = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True,
                          check=True).stdout
    return {name: int(calls) for name, calls in re.findall(r"^cmdstat_([\w|]+):calls=(\d+)", info, re.M)
            if name != "info"}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def chat(web: httpx.Client, stream: bool) -> int:
    body = {"model": "floodwall-simulated-chat", "max_tokens": 8, "stream": stream,
            "messages": [{"role": "user", "content": "Hello, how are you today?"}]}
    with web.stream("POST", "/v1/chat/completions", json=body) as response:
        for _ in response.iter_bytes():
            pass
        return response.status_code


def batch(web: httpx.Client, stream: bool, args: argparse.Namespace) -> dict[str, Any]:
    """`args.calls` calls, counted, then an idle window of the same length, counted."""
    start, t0 = counters(args.redis_port), time.monotonic()
    statuses: dict[str, int] = {}
    for _ in range(args.calls):
        status = chat(web, stream)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if args.gap:
            time.sleep(args.gap)
    time.sleep(SETTLE)
    busy, window = counters(args.redis_port), time.monotonic() - t0
    time.sleep(window)
    idle = delta(counters(args.redis_port), busy)
    busy = delta(busy, start)
    net = {k: (busy.get(k, 0) - idle.get(k, 0)) / args.calls for k in {*busy, *idle}}
    return {"calls": args.calls, "seconds": round(window, 2), "statuses": statuses, "raw": busy, "idle": idle,
            "evalsha_raw": busy.get("evalsha", 0) / args.calls, "all_raw": sum(busy.values()) / args.calls,
            "evalsha": net.get("evalsha", 0.0), "all": sum(net.values()),
            "sent": sum(v for k, v in net.items() if k not in IN_SCRIPTS),
            "net_by_command": {k: round(v, 3) for k, v in sorted(net.items()) if abs(v) >= 0.005}}


def measure(tree: Path, tier: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model_port, fw_port = free_port(), free_port()
    busy_before = others(args.redis_port)
    model = settings_json(tree, {"model": {"slots": 64, "queue_size": 64, "tokens_per_second": 100000,
                                           "reply_tokens": 8, "first_token_delay": 0}})
    database = f"sqlite:///{tmp / f'{tree.name}-{tier}-{secrets.token_hex(3)}.db'}"
    subprocess.run([sys.executable, "-m", "floodwall", "db", "upgrade", "--database", database],
                   env={**os.environ, **tree_env(tree)}, check=True, capture_output=True)
    prefix = f"fwbench-{secrets.token_hex(4)}:"
    floodwall = settings_json(tree, {
        "database": {"url": database}, "log": {"level": "warning", "format": "json"},
        "defense": {"level": "normal", "new_account_age": TIERS[tier]},
        "edge": {"policy": str(policy(tree, tmp))}, "upstream": {"url": f"http://127.0.0.1:{model_port}/v1"},
        "state": {"url": f"redis://127.0.0.1:{args.redis_port}/0?prefix={prefix}"}})
    base = f"http://127.0.0.1:{fw_port}"
    with process([*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"],
                 tree_env(tree, FLOODWALL_SETTINGS_JSON=model), f"http://127.0.0.1:{model_port}/health",
                 tmp / f"model-{tree.name}.log"), \
            process([*GRANIAN, "--factory", "--port", str(fw_port), "floodwall.app:app_from_env"],
                    tree_env(tree, FLOODWALL_SETTINGS_JSON=floodwall), f"{base}/healthz",
                    tmp / f"fw-{tree.name}-{tier}.log"):
        key = account_key(base, f"{tier}-{secrets.token_hex(3)}@example.com")
        results: dict[str, Any] = {"prefix": prefix, "other_clients": busy_before}
        with httpx.Client(base_url=base, timeout=30, headers={"authorization": f"Bearer {key}"}) as web:
            for kind in KINDS:
                warm = [chat(web, kind == "stream") for _ in range(WARM_UP)]
                assert all(s == 200 for s in warm), f"warm-up {kind} {tier}: {warm}"
                time.sleep(1.0)
                results[kind] = batch(web, kind == "stream", args)
        return results


def measure_all(trees: dict[str, Path], args: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    print("per call: EVALSHA (round trips to the GCRA script), raw and net of idle; all commands Redis ran, raw "
          "and net;\nsent: net, less the GET/SET/TIME run inside the scripts", flush=True)
    print(f"{'round':>5} {'tree':<12} {'tier':<12} {'kind':<7} {'evalsha':>7} {'net':>6} {'all':>7} {'net':>6} "
          f"{'sent':>6}  non-200  net per call by command", flush=True)
    for n in range(args.rounds):
        for name, tree in trees.items():
            for tier in TIERS:
                found = measure(tree, tier, args, tmp)
                for kind in KINDS:
                    r = {**found[kind], "round": n + 1, "tree": name, "tier": tier, "kind": kind,
                         "other_clients": found["other_clients"]}
                    rows.setdefault(f"{name}/{tier}/{kind}", []).append(r)
                    bad = {s: c for s, c in r["statuses"].items() if s != "200"}
                    by_command = " ".join(f"{k}={v:g}" for k, v in r["net_by_command"].items())
                    print(f"{n + 1:>5} {name:<12} {tier:<12} {kind:<7} {r['evalsha_raw']:>7.3f} {r['evalsha']:>6.3f} "
                          f"{r['all_raw']:>7.3f} {r['all']:>6.3f} {r['sent']:>6.3f}  {bad or '-'!s:<7}  {by_command}"
                          f"{' !' if r['other_clients'] else ''}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between calls")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--private", action="store_true", help="start a Redis of its own (redis-server) instead")
    parser.add_argument("--tree", action="append", help="measure this checkout (repeatable) instead of "
                        f"before ({BEFORE}) and main")
    args = parser.parse_args()
    trees = {Path(t).resolve().name: Path(t).resolve() for t in args.tree} if args.tree else \
        {"before": worktree(None), "main": MAIN}
    tmp = Path(tempfile.mkdtemp(prefix="fw-round-trips-"))
    with private_redis(tmp) if args.private else contextlib.nullcontext(args.redis_port) as port:
        args.redis_port = port
        rows = measure_all(trees, args, tmp)
    medians = {label: {f: statistics.median(r[f] for r in rs) for f in (*FIGURES, "evalsha_raw", "all_raw")}
               for label, rs in rows.items()}
    if any(r["other_clients"] for rs in rows.values() for r in rs):
        print("! other clients were connected to this Redis: its counters include theirs (--private avoids it)")
    print(f"\nmedians over {args.rounds} rounds, per call, net of idle ({args.calls} calls a run, gap {args.gap}s)")
    names = list(trees)
    paired = names == ["before", "main"]
    width = {n: max(9, len(n) + 8) for n in names}
    print(f"{'tier':<12} {'kind':<7} " + " ".join(f"{n + ' ' + f:>{width[n]}}" for n in names for f in FIGURES)
          + ("   main/before: " + " ".join(f"{f:>7}" for f in FIGURES) if paired else ""))
    ratios = {}
    for tier in TIERS:
        for kind in KINDS:
            figures = [medians[f"{n}/{tier}/{kind}"] for n in names]
            line = f"{tier:<12} {kind:<7} " + " ".join(
                f"{m[f]:>{width[n]}.3f}" for n, m in zip(names, figures, strict=True) for f in FIGURES)
            if paired:
                old, new = figures
                ratio = {f: round(new[f] / old[f], 3) if old[f] else None for f in FIGURES}
                ratios[f"{tier}/{kind}"] = ratio
                line += "                " + " ".join(f"{ratio[f]!s:>7}" for f in FIGURES)
            print(line)
    OUT.mkdir(exist_ok=True)
    (OUT / "round_trips.json").write_text(json.dumps({
        "args": vars(args), "trees": {n: str(t) for n, t in trees.items()}, "medians": medians, "ratios": ratios,
        "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
