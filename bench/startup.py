"""Server start-up: seconds from `python -m server` to `/health` 200, and the HTTP process's memory once it serves,
for one or several checkouts of the project in one run, interleaved (so a noisy machine weighs on each alike).

    .venv/bin/python -m bench.startup [--roots DIR ...] [--runs 5] [--out FILE]

`--roots` defaults to this checkout; give an older one (`git worktree add /tmp/before <commit>`) to compare. Each
server runs the embedded model, already converted. Prints a table and writes JSON (default
bench/results/startup.json).
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.server_process import ROOT, free_port


def start_once(root: Path) -> dict:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port), "--log-level", "warning"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
            port_open = None
            while True:
                try:
                    status = client.get("/health").status_code
                except httpx.TransportError:
                    time.sleep(0.02)
                    continue
                port_open = port_open or time.perf_counter() - started
                if status == 200:
                    break
                time.sleep(0.02)
        ready = time.perf_counter() - started
        status_file = Path(f"/proc/{process.pid}/status").read_text()
        resident = int(status_file.split("VmRSS:")[1].split()[0]) * 1024
        torch_loaded = "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return {"port_open_s": port_open, "ready_s": ready, "http_rss_bytes": resident, "http_has_torch": torch_loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--roots", nargs="+", type=Path, default=[ROOT])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "startup.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {str(root): [] for root in args.roots}
    start_once(args.roots[0])  # the first start of all converts nothing but warms the disk cache
    for _ in range(args.runs):
        for root in args.roots:
            runs[str(root)].append(start_once(root))
    print(f"{'checkout':40} {'port open s':>12} {'/health 200 s':>14} {'HTTP RSS MiB':>13} {'torch in HTTP':>14}")
    summary = {}
    for root, measured in runs.items():
        row = {
            "port_open_s": statistics.median(m["port_open_s"] for m in measured),
            "ready_s": statistics.median(m["ready_s"] for m in measured),
            "http_rss_mib": statistics.median(m["http_rss_bytes"] for m in measured) / 2**20,
            "http_has_torch": any(m["http_has_torch"] for m in measured),
        }
        summary[root] = row
        print(
            f"{root:40} {row['port_open_s']:12.2f} {row['ready_s']:14.2f} {row['http_rss_mib']:13.0f} "
            f"{row['http_has_torch']!s:>14}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "runs": runs, "median": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
