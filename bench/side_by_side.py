"""Two versions of the service side by side, for an A/B of a change on a shared machine
whose speed drifts: one-client ``/search`` latency in blocks that alternate between the two
services and with blocks of bare model calls, and each service's CPU per request from
``/proc`` (its event loop's thread apart from the others: the loop's work is on every
request's path).

    git worktree add /tmp/before HEAD~1
    python -m bench.side_by_side /tmp/before . --gallery ../shared/data/grocery/train

Both run this interpreter; each tree's own ``app`` and ``models`` serve. A service's
first start embeds the gallery (``--work`` keeps its data for the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.harness import Service, thread_cpu_ns
from bench.http_load import search_latencies, search_request, search_throughput
from models.base import DEFAULT_CHECKPOINT
from models.checkpoint import load_checkpoint
from models.runtimes.factory import lone_call_embedder, open_embedder

WARM_UP_S = 3.0  # each service, before anything is timed
REQUESTS_PER_BLOCK = 50
BARE_CALLS_PER_BLOCK = 20


@dataclass
class Measured:
    """One service's requests, in seconds, and its CPU over them, in nanoseconds."""

    latencies: list[float] = field(default_factory=list)
    loop_cpu_ns: int = 0  # the main thread: the event loop
    other_cpu_ns: int = 0  # decoding, model and every other thread
    requests: int = 0

    def summary(self, bare_ms: float) -> dict[str, float | int]:
        p50 = 1000 * statistics.median(self.latencies)
        return {"p50_ms": p50, "p50_minus_bare_ms": p50 - bare_ms,
                "requests_timed": len(self.latencies),
                "loop_cpu_ms_per_request": self.loop_cpu_ns / 1e6 / self.requests,
                "other_cpu_ms_per_request": self.other_cpu_ns / 1e6 / self.requests}


def timed_block(port: int, requests: list[bytes], pid: int, into: Measured) -> None:
    """One block of requests, one after another on one connection (two untimed first)."""
    before = thread_cpu_ns(pid)
    block = asyncio.run(search_latencies(port, {"search": requests}, REQUESTS_PER_BLOCK,
                                         blocks=1))
    after = thread_cpu_ns(pid)
    into.latencies += block.round_trip["search"]
    spent = {tid: ns - before.get(tid, 0) for tid, ns in after.items()}
    into.loop_cpu_ns += spent.pop(pid, 0)
    into.other_cpu_ns += sum(spent.values())
    into.requests += REQUESTS_PER_BLOCK + 2


def compare(trees: list[Path], gallery: Path, checkpoint: str, work: Path, rounds: int,
            queries: list[bytes]) -> dict:
    """Each tree's summary and the bare call's median, in milliseconds."""
    loaded = load_checkpoint(checkpoint)
    runtime = open_embedder(loaded, "auto", "auto", cache_dir=work / "onnx").embedder
    bare = lone_call_embedder(runtime) or runtime  # the call a lone request gets
    size = bare.preprocessing.image_size
    one = np.zeros((1, 3, size, size), np.float32)
    specs = [Service(checkpoint, work / f"data-{i}", gallery, root=tree.resolve())
             for i, tree in enumerate(trees)]
    measured = [Measured() for _ in specs]
    bare_s: list[float] = []
    with specs[0].run() as first, specs[1].run() as second:
        pids = [first.pid, second.pid]
        requests = [[search_request(q, spec.port) for q in queries] for spec in specs]
        for spec, reqs in zip(specs, requests, strict=True):
            asyncio.run(search_throughput(spec.port, reqs, 1, WARM_UP_S))
        for r in range(rounds):
            for i in range(BARE_CALLS_PER_BLOCK + 2):
                start = time.perf_counter()
                bare.embed_batch(one)
                if i >= 2:
                    bare_s.append(time.perf_counter() - start)
            for k in (0, 1) if r % 2 == 0 else (1, 0):  # neither always goes first
                # Each block starts at a rotated query, so that blocks differ.
                shift = r * REQUESTS_PER_BLOCK % len(queries)
                timed_block(specs[k].port, requests[k][shift:] + requests[k][:shift], pids[k],
                            measured[k])
            print(f"round {r + 1}/{rounds}", flush=True)
    bare_ms = 1000 * statistics.median(bare_s)
    return {"bare_call_ms": bare_ms, "rounds": rounds,
            "trees": [{"tree": str(tree), **m.summary(bare_ms)}
                      for tree, m in zip(trees, measured, strict=True)]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", type=Path, nargs=2, help="two source trees (checkouts)")
    p.add_argument("--gallery", type=Path, required=True, help="<class>/*.jpg folder")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--work", type=Path, help="where the services keep their data "
                                             "(default: a new temporary folder)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="side-by-side-"))
    queries = [path.read_bytes() for path in sorted(args.gallery.rglob("*.jpg"))[::50][:40]]
    result = compare(args.trees, args.gallery, args.checkpoint, work, args.rounds, queries)
    print(f"bare model call {result['bare_call_ms']:.3f} ms; {result['rounds']} rounds of "
          f"{REQUESTS_PER_BLOCK} requests each; the services' data in {work}")
    for s in result["trees"]:
        print(f"{s['tree']}: /search p50 {s['p50_ms']:.3f} ms ({s['p50_minus_bare_ms']:+.3f} over "
              f"the bare call); CPU per request: event loop {s['loop_cpu_ms_per_request']:.3f}"
              f" ms, other threads {s['other_cpu_ms_per_request']:.3f} ms")
    return result


if __name__ == "__main__":
    main()
