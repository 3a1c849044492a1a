"""Issue 8's fuzzing at length: the property tests of tests/fuzz (every parser of untrusted input) run with
hypothesis's `long` profile, and the cases each generated, passed and failed, printed from hypothesis's own
statistics. Target: no exception but the documented refusals over at least 10,000 generated cases.

    python bench/fuzz.py [--examples 5000] [--api 200]

--api N also runs tests/fuzz/test_api.py with N cases an operation: schemathesis against a live floodwall
from its own OpenAPI description (/openapi.json), as a signed-in account, as the operator and signed out.

The test suite runs the same properties with the `ci` profile (300 cases each, derandomised).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=5000, help="cases per property")
    parser.add_argument("--api", type=int, default=0, metavar="N",
                        help="also fuzz a live server from its OpenAPI description, N cases an operation")
    args = parser.parse_args()
    env = {**os.environ, "HYPOTHESIS_PROFILE": "long", "FLOODWALL_FUZZ_EXAMPLES": str(args.examples)}
    status = parsers(env)
    if args.api:
        status |= api({**os.environ, "FLOODWALL_FUZZ_API_EXAMPLES": str(args.api)})
    return status


def api(env: dict[str, str]) -> int:
    """tests/fuzz/test_api.py at length: schemathesis's cases per pass, none of them a 5xx."""
    started = time.monotonic()
    # at length a pass takes minutes: no per-test limit (the suite's is 120 s)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-o", "timeout=0",
                             "tests/fuzz/test_api.py"], cwd=ROOT, env={**env, "FLOODWALL_FUZZ_API_TIMEOUT": "3600"},
                            capture_output=True, text=True)
    passes = re.findall(r"schemathesis (.*): (\d+) generated, (\d+) passed", result.stdout)
    print("\n| schemathesis pass | cases | passed |\n|---|---:|---:|")
    for name, generated, passed in passes:
        print(f"| {name} | {int(generated):,} | {int(passed):,} |")
    total = sum(int(generated) for _, generated, _ in passes)
    print(f"\n{total:,} API cases against a live server in {time.monotonic() - started:.0f} s; "
          f"pytest exit {result.returncode}")
    if result.returncode:
        print(result.stdout[-4000:])
    return result.returncode


def parsers(env: dict[str, str]) -> int:
    """tests/fuzz/test_parsers.py at length: hypothesis's cases per property."""
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0",
               "tests/fuzz/test_parsers.py", "--hypothesis-show-statistics"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    total = failing = 0
    print("| property | cases passed | failing |\n|---|---:|---:|")
    # hypothesis prints, per test, a block naming it and then "N passing examples, M failing examples"
    for name, passed, failed in re.findall(r"test_parsers\.py::(\w+):\n(?:.*\n)*?.*?(\d+) passing examples, "
                                           r"(\d+) failing examples", result.stdout):
        total += int(passed)
        failing += int(failed)
        print(f"| {name} | {int(passed):,} | {failed} |")
    print(f"\n{total:,} cases passed, {failing} failing, in {seconds:.0f} s; pytest exit {result.returncode}")
    if result.returncode:
        print(result.stdout[-4000:])
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
