"""A screenshot of TensorBoard over a run, for the docs (headless Debian Chromium).

    .venv/bin/python scripts/tensorboard_screenshot.py RUN OUT.png [--tab scalars|images]

Starts `diswm tensorboard RUN` on a free loopback port, waits until it lists the run's scalar
tags (TensorBoard's HTTP API), then lets Chromium render the page and save it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--tab", default="scalars", choices=("scalars", "images", "timeseries"))
    ap.add_argument("--size", default="1600,1000")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("diswm: error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ops", "tensorboard", args.run,
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:  # ready when its API lists the run's scalars
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags",
                                            timeout=5) as r:
                    if json.loads(r.read()):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print("diswm: error: TensorBoard did not list the run's scalars within 120 s",
                      file=sys.stderr)
                return 1
            time.sleep(1)  # polling a server that is starting, with a deadline
        out = Path(args.out).resolve()
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--window-size={args.size}",
                        "--virtual-time-budget=20000", f"--screenshot={out}",
                        f"http://127.0.0.1:{port}/#{args.tab}"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
        print(f"wrote {out}")
        return 0
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
