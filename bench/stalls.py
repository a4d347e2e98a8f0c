"""Does a huge prompt stall the other streams? One stream runs; five 2 MB prompts (refused: longer than any
context) and two of 0.4 MB (tokenized, then refused) arrive at once; the stream's largest gap between two events
meanwhile, against its own median gap. For one or several checkouts in one run (`--roots`, as bench/startup.py).

    .venv/bin/python -m bench.stalls [--roots DIR ...] [--out FILE]

Prints a table and writes JSON (default bench/results/stalls.json).
"""

import argparse
import json
import platform
from pathlib import Path

from tests.integration.huge_prompts import gaps_while_huge_prompts_arrive
from tests.integration.server_process import ROOT, ServerProcess

MB = 1_000_000
SIZES = [2 * MB] * 5 + [MB * 4 // 10] * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--roots", nargs="+", type=Path, default=[ROOT])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stalls.json")
    args = parser.parse_args()
    results = {}
    print(f"{'checkout':40} {'median gap ms':>14} {'largest gap ms':>15} {'burst s':>8}  statuses")
    for root in args.roots:
        server = ServerProcess(cwd=root).wait_ready()
        try:
            gaps = gaps_while_huge_prompts_arrive(server.url, SIZES)
        finally:
            server.stop()
        results[str(root)] = gaps
        print(
            f"{root!s:40} {gaps['median_gap_s'] * 1000:14.1f} {gaps['largest_gap_during_s'] * 1000:15.1f} "
            f"{gaps['burst_s']:8.2f}  {gaps['statuses']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
