"""`make monitor`: a real Prometheus server scraping a run's processes.

The configuration is `deploy/prometheus.yml`, with the alerting rules of `deploy/alerts.yml`;
both are copied next to the run's `targets.json` (written by the runtime) so that their relative
paths resolve there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def prometheus_config(run_dir: str | Path, scrape_interval: str | None = None) -> Path:
    """Write `<run_dir>/prometheus/prometheus.yml` from deploy/prometheus.yml, and its rules."""
    template, rules = DEPLOY / "prometheus.yml", DEPLOY / "alerts.yml"
    for needed in (template, rules):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing; run from a checkout of the project")
    folder = Path(run_dir) / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    text = template.read_text()
    if scrape_interval:
        text = text.replace("scrape_interval: 5s", f"scrape_interval: {scrape_interval}")
        text = text.replace("refresh_interval: 5s", f"refresh_interval: {scrape_interval}")
    path = folder / "prometheus.yml"
    path.write_text(text)
    shutil.copyfile(rules, folder / "alerts.yml")
    targets = folder / "targets.json"
    if not targets.exists():
        targets.write_text("[]\n")
    return path


def start_prometheus(run_dir: str | Path, port: int = 9090, scrape_interval: str | None = None,
                     executable: str = "prometheus") -> subprocess.Popen:
    """Start Prometheus on 127.0.0.1:`port` for the run; returns the process."""
    exe = shutil.which(executable)
    if exe is None:
        raise FileNotFoundError("prometheus not found; `make monitor` installs Debian's package")
    config = prometheus_config(run_dir, scrape_interval)
    data = config.parent / "data"
    cmd = [exe, f"--config.file={config}", f"--storage.tsdb.path={data}",
           f"--web.listen-address=127.0.0.1:{port}"]
    log = (config.parent / "prometheus.log").open("ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def query(port: int, promql: str, timeout: float = 10.0) -> list[dict]:
    """Run an instant PromQL query against the local Prometheus; returns the result vector."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"PromQL {promql!r} failed: {body}")
    return body["data"]["result"]


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus on port {port} not ready after {timeout:.0f}s")
        time.sleep(0.2)  # polling the readiness endpoint with a deadline
