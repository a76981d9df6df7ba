"""``make reliability``: the long versions of the robustness checks CI runs short.

    python -m bench.reliability --out bench/reliability.json

- contract: schemathesis ``--checks all`` with many cases, with and without an API key;
- soak: 16 clients mixing search, classify, enrol and delete; zero 5xx, no lost or
  duplicated item, the service's own consistency check afterwards, RSS steady;
- kill -9 during enrolment loops, many rounds: acknowledged against present;
- slow and idle clients (idle sockets, request heads and bodies sent byte by byte) while
  another client searches;
- a full disk during enrolment (DATA_DIR on a small tmpfs; needs root to mount);
- a damaged data directory at start-up (corrupt or foreign database, missing photos).

Every scenario is a function returning its numbers and ``ok``; tests/bench/test_reliability.py
runs them with small numbers. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.harness import ROOT, Service
from models.base import DEFAULT_CHECKPOINT


def photo(seed: int, size: int = 96) -> bytes:
    """A distinct JPEG for every seed: a colour field with a bright square."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, 3)[None, None, :] + rng.normal(0, 25, (size, size, 3))
    x, y = rng.integers(0, size // 2, 2)
    pixels[y : y + size // 4, x : x + size // 4] += 60
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_gallery(root: Path, classes: int = 4, per_class: int = 3, size: int = 96) -> Path:
    for c in range(classes):
        (root / f"kind-{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / f"kind-{c}" / f"{i}.jpg").write_bytes(photo(1000 * c + i, size))
    return root


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) if found else None


# Contract --------------------------------------------------------------------------------
def schemathesis(url: str, examples: int, *extra: str, seed: int = 1) -> dict:
    """The schemathesis CLI (--checks all) against ``url``, with this repository's
    schemathesis.toml; ``ok`` when every generated case passed."""
    exe = Path(sys.executable).with_name("schemathesis")
    with tempfile.TemporaryDirectory() as reports:
        run = subprocess.run(
            [str(exe), "run", f"{url}/openapi.json", "--checks", "all", "-n", str(examples),
             "--seed", str(seed), "--no-color", "--report-dir", reports, *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=3600)
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    generated, passed = (int(n) for n in counts.groups()) if counts else (0, 0)
    return {"ok": run.returncode == 0 and generated > 0 and passed == generated,
            "generated": generated, "passed": passed,
            **({} if run.returncode == 0 else {"output": run.stdout[-4000:]})}


def contract(work: Path, checkpoint: str, examples: int) -> dict:
    gallery = make_gallery(work / "contract-gallery")
    out = {}
    for name, key in (("no_key", None), ("key", "s3cret")):
        spec = Service(checkpoint, work / f"contract-{name}", gallery,
                       {"API_KEY": key} if key else {})
        with spec.run():
            out[name] = schemathesis(spec.url, examples)
            if key:
                out["key_as_client"] = schemathesis(spec.url, examples, "-H", f"X-API-Key: {key}")
    out["ok"] = all(part["ok"] for part in out.values())
    return out


# Soak ------------------------------------------------------------------------------------
def soak(work: Path, checkpoint: str, seconds: float, clients: int = 16) -> dict:
    """``clients`` threads, each looping over search (50%), classify (20%), enrol (20%, one
    in ten of them the same bytes again) and delete (10%, of its own enrolled items)."""
    spec = Service(checkpoint, work / "soak-data", make_gallery(work / "soak-gallery"))
    lock = threading.Lock()
    acknowledged: dict[int, tuple[str, str]] = {}  # id -> (label, sha256)
    deleted: set[int] = set()
    statuses: dict[str, dict[int, int]] = {}
    duplicates: list[str] = []
    stop = 0.0  # when the load ends: set once the service is ready

    def count(kind: str, code: int) -> None:
        with lock:
            statuses.setdefault(kind, {}).setdefault(code, 0)
            statuses[kind][code] += 1

    def client(n: int) -> None:
        rng = random.Random(n)
        mine: list[tuple[int, str, bytes]] = []
        with httpx.Client(base_url=spec.url, timeout=60) as http:
            seed = 0
            while time.monotonic() < stop:
                roll = rng.random()
                query = photo(rng.randrange(40))
                if roll < 0.5:
                    count("search", http.post("/search", files={"file": ("q.jpg", query)}
                                              ).status_code)
                elif roll < 0.7:
                    count("classify", http.post("/classify", files={"file": ("q.jpg", query)}
                                                ).status_code)
                elif roll < 0.9:
                    again = mine and rng.random() < 0.1
                    if again:
                        known_id, label, data = rng.choice(mine)
                    else:
                        seed += 1
                        label, data = f"soak-{n}-{seed % 5}", photo(10**6 * (n + 1) + seed)
                    r = http.post("/enroll", data={"label": label},
                                  files={"file": ("e.jpg", data, "image/jpeg")})
                    count("enroll", r.status_code)
                    if r.status_code in (200, 201):
                        item = r.json()["items"][0]
                        if again and (item["id"] != known_id or item["created"]):
                            duplicates.append(f"{label}: {known_id} enrolled again as "
                                              f"{item['id']}")
                        if not again:
                            mine.append((item["id"], label, data))
                            with lock:
                                acknowledged[item["id"]] = (label,
                                                            hashlib.sha256(data).hexdigest())
                elif mine:
                    item_id, _, _ = mine.pop(rng.randrange(len(mine)))
                    r = http.delete(f"/items/{item_id}")
                    count("delete", r.status_code)
                    if r.status_code == 200:
                        with lock:
                            deleted.add(item_id)

    with spec.run() as process:
        samples: list[tuple[float, int]] = []
        sampler_stop = threading.Event()

        def sample() -> None:
            while not sampler_stop.wait(1.0):
                if (rss := rss_kib(process.pid)) is not None:
                    samples.append((time.monotonic(), rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        stop = started + seconds  # the load's own seconds, not counting the start-up
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        sampler_stop.set()
        sampler.join()
        with httpx.Client(base_url=spec.url, timeout=60) as http:
            present = {}
            offset = 0
            while True:
                page = http.get("/items", params={"offset": offset, "limit": 500}).json()
                present.update({i["id"]: i["label"] for i in page["items"]})
                offset += 500
                if offset >= page["total"]:
                    break
            check = http.get("/consistency").json()
    expected = {i for i in acknowledged if i not in deleted}
    ours = {i for i, label in present.items() if label.startswith("soak-")}
    warm = [rss for t, rss in samples if t - started >= seconds / 4]
    rss_start = statistics.median(warm[:5]) if warm else None
    rss_end = statistics.median(warm[-5:]) if warm else None
    growth = (rss_end / rss_start - 1) if rss_start else None
    server_errors = sum(n for codes in statuses.values() for c, n in codes.items() if c >= 500)
    unexpected = {kind: {c: n for c, n in codes.items() if c not in (200, 201)}
                  for kind, codes in statuses.items()}
    return {
        "ok": (server_errors == 0 and not any(unexpected.values()) and ours == expected
               and not duplicates and check["consistent"]
               and growth is not None and growth < 0.10),
        "seconds": seconds, "clients": clients,
        "requests": {kind: sum(codes.values()) for kind, codes in statuses.items()},
        "requests_per_s": sum(n for c in statuses.values() for n in c.values()) / seconds,
        "server_errors": server_errors, "unexpected_statuses": unexpected,
        "acknowledged": len(acknowledged), "deleted": len(deleted),
        "lost": sorted(expected - ours)[:20], "unexpected_items": sorted(ours - expected)[:20],
        "duplicated": duplicates[:20], "consistent": check["consistent"],
        "rss_mib_after_warmup": rss_start and rss_start / 1024,
        "rss_mib_end": rss_end and rss_end / 1024, "rss_growth": growth,
    }


# kill -9 ---------------------------------------------------------------------------------
def kill_rounds(work: Path, checkpoint: str, rounds: int, verify_per_round: int = 20) -> dict:
    """Each round: an enrolment loop, ``kill -9`` at a random moment, a restart, and every
    acknowledged item looked for (``verify_per_round`` of them also searched for)."""
    spec = Service(checkpoint, work / "kill-data")
    rng = random.Random(0)
    acknowledged: dict[int, tuple[str, bytes]] = {}
    missing: list[int] = []
    not_found_by_search: list[int] = []
    for round_no in range(rounds):
        new: dict[int, tuple[str, bytes]] = {}
        with spec.run() as process:
            done = threading.Event()

            def loop(r: int = round_no, added: dict = new, done: threading.Event = done
                     ) -> None:
                with httpx.Client(base_url=spec.url, timeout=30) as http:
                    for i in range(10**6):
                        if done.is_set():
                            return
                        label, data = f"kill-{r}-{i % 3}", photo(7 * 10**6 + r * 10**4 + i)
                        try:
                            resp = http.post("/enroll", data={"label": label},
                                             files={"file": ("k.jpg", data, "image/jpeg")})
                        except httpx.TransportError:
                            return  # killed mid-request: not acknowledged
                        if resp.status_code == 201:
                            added[resp.json()["items"][0]["id"]] = (label, data)

            enrolling = threading.Thread(target=loop)
            enrolling.start()
            time.sleep(rng.uniform(0.3, 1.5))
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            done.set()
            enrolling.join()
        acknowledged.update(new)
        with spec.run(), httpx.Client(base_url=spec.url, timeout=30) as http:
            for item_id, (label, _) in acknowledged.items():
                r = http.get(f"/items/{item_id}")
                if r.status_code != 200 or r.json()["label"] != label:
                    missing.append(item_id)
            for item_id in rng.sample(sorted(new), min(verify_per_round, len(new))):
                label, data = new[item_id]
                top = http.post("/search", files={"file": ("q.jpg", data)}).json()["results"]
                if not top or top[0]["id"] != item_id:
                    not_found_by_search.append(item_id)
    return {"ok": not missing and not not_found_by_search and len(acknowledged) > 0,
            "rounds": rounds, "acknowledged": len(acknowledged),
            "present": len(acknowledged) - len(missing), "missing": missing[:20],
            "not_found_by_search": not_found_by_search[:20]}


# Slow and idle clients -------------------------------------------------------------------
def slow_clients(work: Path, checkpoint: str, idle: int = 200, slow_heads: int = 20,
                 slow_bodies: int = 5, searches: int = 20, header_timeout: float = 2.0,
                 body_timeout: float = 3.0) -> dict:
    """Idle sockets, request heads and bodies sent a byte at a time, all held open while
    one well-behaved client searches; then: did the server close or refuse them?"""
    spec = Service(checkpoint, work / "slow-data", make_gallery(work / "slow-gallery"),
                   {"HEADER_TIMEOUT_S": str(header_timeout),
                    "BODY_TIMEOUT_S": str(body_timeout)})
    query = photo(3)
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n\r\n'
            + query + b"\r\n--b--\r\n")
    body_head = (f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                 f"boundary=b\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    stop = threading.Event()
    answers: list[bytes] = []

    def trickle(head: bytes, slow: bytes, keep: bool) -> None:
        """Send ``head`` at once, then ``slow`` a byte every 0.2 s; keep the answer."""
        with socket.create_connection(("127.0.0.1", spec.port)) as sock:
            sock.settimeout(0.2)
            sock.sendall(head)
            for i in range(len(slow)):
                if stop.is_set():
                    return
                try:
                    sock.send(slow[i : i + 1])
                    got = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return  # the server closed it
                if got and keep:
                    answers.append(got)
                return  # answered, or closed by the server (b"")

    with spec.run():
        idle_socks = [socket.create_connection(("127.0.0.1", spec.port)) for _ in range(idle)]
        threads = [threading.Thread(target=trickle, args=(
            b"", b"GET /healthz HTTP/1.1\r\nHost: " + b"x" * 200, False))
            for _ in range(slow_heads)]
        threads += [threading.Thread(target=trickle, args=(body_head, body, True))
                    for _ in range(slow_bodies)]
        for t in threads:
            t.start()
        latencies, codes = [], []
        with httpx.Client(base_url=spec.url, timeout=30) as http:
            for _ in range(searches):
                start = time.perf_counter()
                codes.append(http.post("/search", files={"file": ("q.jpg", query)}).status_code)
                latencies.append(time.perf_counter() - start)
        time.sleep(max(header_timeout, body_timeout) + 1.0)
        closed = 0
        for sock in idle_socks:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError, OSError):
                closed += sock.recv(1) == b""
            sock.close()
        stop.set()
        for t in threads:
            t.join()
    timed_out = sum(b" 408 " in a.split(b"\r\n", 1)[0] for a in answers)
    return {"ok": (all(c == 200 for c in codes) and closed == idle
                   and timed_out == slow_bodies),
            "searches": len(codes), "search_statuses": sorted(set(codes)),
            "search_p50_ms": 1000 * statistics.median(latencies),
            "search_max_ms": 1000 * max(latencies),
            "idle_connections": idle, "idle_closed_by_server": closed,
            "slow_heads": slow_heads, "slow_bodies": slow_bodies,
            "slow_bodies_answered_408": timed_out}


# Full disk -------------------------------------------------------------------------------
@contextlib.contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[bool]:
    """A tmpfs of ``size_mib`` at ``path`` (root only); yields False where it can't mount."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                              str(path)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def full_disk(work: Path, checkpoint: str, free_mib: int = 3) -> dict:
    """Enrol big photos into a DATA_DIR on a file system with ``free_mib`` left after
    start-up until it is full: 507, the acknowledged items intact, searches working; then
    grow it and enrol again."""
    data_dir = work / "full-disk"
    with small_filesystem(data_dir, 1024) as mounted:
        if not mounted:
            return {"ok": None, "skipped": "cannot mount a tmpfs here (needs root)"}
        spec = Service(checkpoint, data_dir)
        acknowledged, codes = {}, []
        with spec.run(), httpx.Client(base_url=spec.url, timeout=60) as http:
            stat = os.statvfs(data_dir)
            used_mib = (stat.f_blocks - stat.f_bfree) * stat.f_frsize / 2**20
            resize(data_dir, int(used_mib) + free_mib)  # the ONNX export etc. stay
            for i in range(1000):
                data = photo(9 * 10**6 + i, size=400)
                r = http.post("/enroll", data={"label": f"disk-{i % 4}"},
                              files={"file": ("d.jpg", data, "image/jpeg")})
                codes.append(r.status_code)
                if r.status_code == 201:
                    acknowledged[r.json()["items"][0]["id"]] = data
                else:
                    break
            full = codes[-1] == 507 and r.json()["code"] == "storage_full"
            search = http.post("/search", files={"file": ("q.jpg", photo(1))}).status_code
            intact = all(http.get(f"/items/{i}/image").content == d
                         for i, d in acknowledged.items())
            check_full = http.get("/consistency").json()["consistent"]
            resize(data_dir, int(used_mib) + 64 * free_mib)  # space is back
            again = http.post("/enroll", data={"label": "disk-again"},
                              files={"file": ("d.jpg", photo(1), "image/jpeg")}).status_code
            check = http.get("/consistency").json()["consistent"]
    return {"ok": full and search == 200 and intact and again == 201 and check_full and check,
            "enrolled_before_full": len(acknowledged), "answer_when_full": codes[-1],
            "search_when_full": search, "acknowledged_intact": intact,
            "enrol_after_space_back": again, "consistent": check_full and check}


def resize(path: Path, size_mib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_mib}m", str(path)], check=True)


# Damaged data directory ------------------------------------------------------------------
def damaged_start(work: Path, checkpoint: str) -> dict:
    """A corrupt database and a foreign one must be a clear start-up error; missing photos a
    repair report; never a silent empty gallery."""
    out = {}
    for name, damage in (("corrupt", _corrupt), ("foreign", _foreign)):
        data_dir = work / f"damaged-{name}"
        damage(data_dir)
        spec = Service(checkpoint, data_dir)
        process = subprocess.Popen([sys.executable, "-m", "app"], env=spec.environment(),
                                   cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            detail = _wait_for_detail(spec.url, "failed")
        finally:
            process.terminate()
            process.wait(20)
        out[name] = detail
    spec = Service(checkpoint, work / "damaged-photos")
    with spec.run(), httpx.Client(base_url=spec.url) as http:
        for i in range(3):
            http.post("/enroll", data={"label": "photo"},
                      files={"file": ("p.jpg", photo(5 * 10**6 + i), "image/jpeg")})
    next((spec.data_dir / "images").rglob("*.jpg")).unlink()
    with spec.run(), httpx.Client(base_url=spec.url) as http:
        startup = http.get("/readyz").json()["startup"]
        items = http.get("/labels").json()["total_items"]
    out["missing_photos"] = {"startup": startup, "items_kept": items}
    out["ok"] = ("not a readable SQLite database" in out["corrupt"]
                 and "something else" in out["foreign"]
                 and startup["missing_photos"] == 1 and items == 3)
    return out


def _corrupt(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "gallery.sqlite3").write_bytes(os.urandom(8192))


def _foreign(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / "gallery.sqlite3") as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")


def _wait_for_detail(url: str, word: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(httpx.TransportError):
            detail = httpx.get(f"{url}/readyz", timeout=2).json()["detail"]
            if word in detail:
                return detail
        time.sleep(0.25)
    raise AssertionError(f"/readyz never said {word!r}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--soak-seconds", type=float, default=60)
    p.add_argument("--kill-rounds", type=int, default=20)
    p.add_argument("--contract-examples", type=int, default=300)
    p.add_argument("--only", default="", help="comma-separated scenarios to run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "reliability.json")
    args = p.parse_args(argv)
    scenarios = {
        "damaged_start": lambda w: damaged_start(w, args.checkpoint),
        "slow_clients": lambda w: slow_clients(w, args.checkpoint),
        "full_disk": lambda w: full_disk(w, args.checkpoint),
        "kill_rounds": lambda w: kill_rounds(w, args.checkpoint, args.kill_rounds),
        "soak": lambda w: soak(w, args.checkpoint, args.soak_seconds),
        "contract": lambda w: contract(w, args.checkpoint, args.contract_examples),
    }
    chosen = [s for s in args.only.split(",") if s] or list(scenarios)
    results: dict = {"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "checkpoint": args.checkpoint}
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        for name in chosen:
            print(f"{name} ...", flush=True)
            started = time.perf_counter()
            results[name] = scenarios[name](Path(tmp))
            results[name]["seconds_taken"] = round(time.perf_counter() - started, 1)
            print(json.dumps(results[name], indent=1, default=str), flush=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    failed = [n for n in chosen if results[n].get("ok") is False]
    print(f"wrote {args.out}; " + (f"FAILED: {', '.join(failed)}" if failed else "all ok"))
    if failed:
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
