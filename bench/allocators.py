"""Does another memory allocator make the CPU forward faster? `bench.forward` run under glibc's malloc and under
each allocator found on this machine (jemalloc, tcmalloc, through LD_PRELOAD), the runs alternating so that the
machine's drift falls on all of them alike; medians over the rounds.

    .venv/bin/python -m bench.allocators [--rounds 2] [--streams 1 8] [--weights packed] [--steps 10]
                                         [--history-tokens 1000] [--out bench/results/allocators.json]

An allocator is tried only when its library is installed (Debian: `libjemalloc2`, `libtcmalloc-minimal4`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LIBRARIES = {
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}


def run_forward(preload: str | None, args: argparse.Namespace) -> list[dict]:
    """One `bench.forward` run, its rows."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "forward.json"
        command = [sys.executable, "-m", "bench.forward", "--out", str(out), "--steps", str(args.steps)]
        command += ["--history-tokens", str(args.history_tokens), "--streams", *map(str, args.streams)]
        command += ["--weights", *args.weights]
        env = {**os.environ, "LD_PRELOAD": preload} if preload else dict(os.environ)
        subprocess.run(command, env=env, check=True, capture_output=True)
        return json.loads(out.read_text())["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--weights", nargs="+", default=["packed"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--history-tokens", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "allocators.json")
    args = parser.parse_args()
    allocators: dict[str, str | None] = {"glibc": None}
    allocators.update({name: path for name, path in LIBRARIES.items() if Path(path).exists()})
    steps: dict[tuple[str, int, str], list[float]] = {}
    for round_index in range(args.rounds):
        order = list(allocators) if round_index % 2 == 0 else list(reversed(allocators))
        for name in order:
            for row in run_forward(allocators[name], args):
                steps.setdefault((name, row["streams"], row["weights"]), []).append(row["engine_step_ms"])
            print(f"round {round_index + 1}: {name} done", flush=True)
    rows = []
    print(f"{'allocator':>10} {'streams':>7} {'weights':>8} {'engine step ms':>14} {'vs glibc':>8}")
    for (name, streams, weights), times in steps.items():
        median = statistics.median(times)
        glibc = statistics.median(steps[("glibc", streams, weights)])
        rows.append({"allocator": name, "streams": streams, "weights": weights, "engine_step_ms": median,
                     "speedup_vs_glibc": round(glibc / median, 3)})  # fmt: skip
        print(f"{name:>10} {streams:>7} {weights:>8} {median:>14.1f} {glibc / median:>7.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
