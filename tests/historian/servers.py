"""Real time-series servers for the historian's tests, started on free ports in a test's folder:
Debian's `victoria-metrics` (it takes the InfluxDB v2 write API) and Debian's `influxdb` 1.6 (it
answers InfluxQL, as Grafana asks). `make test` installs both packages; there is no InfluxDB 2 or 3
on Debian, so nothing here speaks to one."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from uns.broker import free_port


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's {package} package (make test does)")
    return found


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (a local test server)
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url}: the server did not answer in {timeout_s:g} s: {log.read_text()[-2000:]}")


class VictoriaMetrics:
    """`dedup` on keeps one sample per series and millisecond, the last written (InfluxDB overwrites
    by itself); off, VictoriaMetrics keeps every sample it is sent."""

    def __init__(self, folder: Path, *, dedup: bool = True, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dedup = dedup
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "vm.log"
        args = [
            _binary("victoria-metrics", "victoria-metrics"),
            f"-storageDataPath={self.folder / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",  # the tests' records are of days long past
            "-loggerLevel=ERROR",
            "-search.disableCache",
            "-search.latencyOffset=0s",
        ]
        if self.dedup:
            args.append("-dedup.minScrapeInterval=1ms")
        with log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _wait(f"{self.url}/health", self.process, log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def export(self, metric: str) -> list[dict[str, Any]]:
        """Every series whose name matches `metric` (a regular expression), with its samples."""
        self._get("/internal/force_flush")
        query = urllib.parse.urlencode(
            {
                "match[]": f'{{__name__=~"{metric}"}}',
                "start": "0",
                "end": "4102444800",
            }  # to 2100: the demo runs ahead
        )
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as r:  # noqa: S310
            return [json.loads(x) for x in r.read().decode().splitlines() if x.strip()]

    def samples(self, metric: str) -> int:
        return sum(len(s["values"]) for s in self.export(metric))

    def _get(self, path: str) -> None:
        with urllib.request.urlopen(self.url + path, timeout=30):  # noqa: S310
            pass


class Influx16:
    """InfluxDB 1.6 with a database `uns`, written through its 1.x /write and asked with InfluxQL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "influxdb.conf"
        config.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{self.folder / "meta"}"\n  logging-enabled = false\n'
            f'[data]\n  dir = "{self.folder / "data"}"\n  wal-dir = "{self.folder / "wal"}"\n'
            "  query-log-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
        )
        log = self.folder / "influxd.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [_binary("influxd", "influxdb"), "-config", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        _wait(f"{self.url}/ping", self.process, log)
        self.query("CREATE DATABASE uns")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def write(self, lines: list[str]) -> None:
        for i in range(0, len(lines), 5000):
            body = "\n".join(lines[i : i + 5000]).encode()
            request = urllib.request.Request(  # noqa: S310
                f"{self.url}/write?db=uns&precision=ms", data=body, method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
                assert r.status == 204, r.read()

    def query(self, q: str, *, epoch: str = "ms") -> dict[str, Any]:
        body = urllib.parse.urlencode({"q": q, "db": "uns", "epoch": epoch}).encode()
        request = urllib.request.Request(f"{self.url}/query", data=body, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            answer: dict[str, Any] = json.loads(r.read())
        return answer
