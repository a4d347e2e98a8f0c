"""The CPU benchmark set in one run, on the embedded model: the sampling chain, the raw model loop (the floor),
our server under `bench/serve.py`, and the load test. Each part prints its table and writes its JSON under
bench/results/; record what matters in bench/RESULTS.md.

    ./manage bench        (or .venv/bin/python -m bench.cpu)

Peers (llama.cpp's server, vLLM) are not part of it: they live in their own environments; point
`python -m bench.serve --url ... --label ...` at them in the same session.
"""

import subprocess
import sys

from bench.load import start_server

PORT = 8766


def run(*module_and_args: str) -> None:
    print(f"\n== python -m {' '.join(module_and_args)}", flush=True)
    subprocess.run([sys.executable, "-m", *module_and_args], check=True)


def main() -> None:
    run("bench.sampling")
    run("bench.raw_loop")
    server = start_server(PORT)
    try:
        run("bench.serve", "--url", f"http://127.0.0.1:{PORT}", "--label", "ours")
    finally:
        server.terminate()
        server.wait(timeout=60)
    run("bench.load")


if __name__ == "__main__":
    main()
