"""Running the service as a real process, and timing it: shared by the bench and the tests."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from models.base import cpu_fields

ROOT = Path(__file__).resolve().parents[1]


# The instruction sets that decide how fast INT8 runs: VNNI multiplies u8 x s8 in one
# instruction; on AVX2 alone the quantised model is about half as fast (docs/performance.md).
CPU_FEATURES = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its INT8-relevant instruction sets, e.g. "AMD EPYC (avx512_vnni,
    avx512f, avx2)", from ``/proc/cpuinfo`` or the text given."""
    fields = cpu_fields(cpuinfo)
    flags = set(fields.get("flags", "").split())
    present = ", ".join(f for f in CPU_FEATURES if f in flags) or "no AVX2"
    return f"{fields.get('model name', 'unknown CPU')} ({present})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(cmd: list[str], env: dict[str, str], port: int, timeout: float = 240,
            root: Path = ROOT) -> Iterator[subprocess.Popen]:
    """Run the service as a process, in the source tree ``root``, until /readyz says ready;
    stop it afterwards. Its output goes to service-<port>.log beside DATA_DIR."""
    log_path = Path(env["DATA_DIR"]).parent / f"service-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                assert process.poll() is None, (
                    f"service exited with {process.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    url = f"http://127.0.0.1:{port}/readyz"
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.time() < deadline, "service did not become ready"
                time.sleep(0.25)
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()


@dataclass
class Service:
    """How to start ``python -m app`` for a scenario."""

    checkpoint: str
    data_dir: Path
    gallery: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    timeout: float = 1800  # a first start embeds the whole gallery
    root: Path = ROOT  # the source tree whose app runs (another checkout, for an A/B)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "CHECKPOINT"}}
        env.update(PORT=str(self.port), HOST="127.0.0.1", CHECKPOINT=self.checkpoint,
                   DATA_DIR=str(self.data_dir), GALLERY_DIR=str(self.gallery or ""),
                   LOG_LEVEL="WARNING", **self.env)
        return env

    def run(self) -> AbstractContextManager[subprocess.Popen]:
        """``python -m app`` with this environment, until ready (see :func:`service`)."""
        return service([sys.executable, "-m", "app"], self.environment(), self.port,
                       timeout=self.timeout, root=self.root)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU nanoseconds so far of each thread of process ``pid`` (Linux ``schedstat``)."""
    cpu = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that ended meanwhile
            cpu[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return cpu


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
