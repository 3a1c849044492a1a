"""Issue 8's fuzzing at length: the property tests of tests/fuzz (every parser of untrusted input) run with
hypothesis's `long` profile, and the cases each generated, passed and failed, printed from hypothesis's own
statistics. Target: no exception but the documented refusals over at least 10,000 generated cases.

    python bench/fuzz.py [--examples 5000]

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
    args = parser.parse_args()
    env = {**os.environ, "HYPOTHESIS_PROFILE": "long", "FLOODWALL_FUZZ_EXAMPLES": str(args.examples)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz",
                             "--hypothesis-show-statistics"], cwd=ROOT, env=env, capture_output=True, text=True)
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
