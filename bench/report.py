"""The targets, in one table, and the Markdown report of a run against them."""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.http_load import LOAD_ROUNDS
from models.base import usable_cpus


@dataclass(frozen=True)
class Target:
    """A bound on one ratio of a run: ``value <op> bound``."""

    op: str  # ">=" or "<="
    bound: float
    unit: str = ""

    def met(self, value: float) -> bool:
        compare: Callable[[float, float], bool] = {">=": operator.ge, "<=": operator.le}[self.op]
        return compare(value, self.bound)

    def cells(self, value: float) -> str:
        """The target and met columns of a table row."""
        return f"{self.op} {self.bound:g}{self.unit} | {_ok(self.met(value))} |"


# Every target of `make bench`, each a ratio of two numbers measured in the same run.
TARGETS = {
    "speedup_b32": Target(">=", 12, "x"),  # service runtime / eager fp32, batch 32
    # 16-client sustained /search throughput / eager fp32 at batch 32
    "throughput_16_over_eager_b32": Target(">=", 8, "x"),
    "p50_overhead_ms": Target("<=", 2.0, " ms"),  # /search p50 - the bare call, 1 client
    "restart_speedup": Target(">=", 10, "x"),  # first start / restart
    "enroll_growth": Target("<=", 1.5, "x"),  # enrol latency, last 20 / first 20 of 200
    "hnsw_speedup_1m": Target(">=", 20, "x"),  # FAISS HNSW / flat at 1M vectors
    "hnsw_recall_1m": Target(">=", 0.95),  # HNSW recall@5 against flat at 1M vectors
}


def markdown(results: dict) -> str:
    e, s, st = results["embedding"], results["search"], results["startup"]
    bare_ms = s.get("paired_bare_call_ms", e["bare_single_image_ms"])
    lines = [
        f"Machine: {results['machine']}; checkpoint {results['checkpoint']}.",
        "",
        "| measurement | value | target | met |",
        "|---|---|---|---|",
        f"| eager fp32 PyTorch, batch 1 / 32 (img/s) | {e['eager_fp32_b1_images_per_s']:.1f} / "
        f"{e['eager_fp32_b32_images_per_s']:.1f} | | |",
        *([f"| eager fp32 PyTorch, channels_last, batch 1 / 32 (img/s) | "
           f"{e['eager_fp32_channels_last_b1_images_per_s']:.1f} / "
           f"{e['eager_fp32_channels_last_b32_images_per_s']:.1f} | | |"]
          if "eager_fp32_channels_last_b32_images_per_s" in e else []),
        f"| service runtime ({e['service_runtime']}), batch 1 / 32 (img/s) | "
        f"{e['service_b1_images_per_s']:.1f} / {e['service_b32_images_per_s']:.1f} | | |",
        *([f"| service runtime, {e['lanes']} single-threaded lanes side by side, one image "
           f"a call, 32 images (img/s) | {e['lanes_b32_images_per_s']:.1f} | | |"]
          if e.get("lanes") else []),
        *([f"| fp32 ONNX Runtime, batch 1 / 32 (img/s) | {e['onnx_fp32_b1_images_per_s']:.1f}"
           f" / {e['onnx_fp32_b32_images_per_s']:.1f} | | |",
           f"| fp32 ONNX Runtime, lanes, 32 images (img/s) | "
           f"{e.get('onnx_fp32_lanes_b32_images_per_s', float('nan')):.1f} | | |",
           f"| fp32 ONNX (the faster) / eager at batch 32 | "
           f"{e['fp32_onnx_speedup_b32']:.2f}x | | |",
           f"| service runtime / fp32 ONNX at batch 32 | {e['int8_over_fp32_b32']:.2f}x | | |"]
          if "onnx_fp32_b32_images_per_s" in e else []),
        f"| `embedding.speedup_b32`: service (one call or the lanes, the faster) / eager at "
        f"batch 32 | {e['speedup_b32']:.2f}x | {TARGETS['speedup_b32'].cells(e['speedup_b32'])}",
        *([f"| the same / eager channels_last at batch 32 | "
           f"{e['speedup_b32_over_channels_last']:.2f}x | | |"]
          if "speedup_b32_over_channels_last" in e else []),
        f"| /search p50 / p95 / p99, 1 client (ms) | {s['p50_ms']:.1f} / {s['p95_ms']:.1f} / "
        f"{s['p99_ms']:.1f} | | |",
        f"| bare single-image model call (the lone-call session where the runtime has one), "
        f"timed between the blocks of requests (ms) | "
        f"{bare_ms:.1f} | | |",
        f"| /search p50 / bare call | {s['p50_ms'] / bare_ms:.2f}x | | |",
        *([f"| `search.p50_overhead_ms`: /search p50 - bare call (ms) | "
           f"{s['p50_overhead_ms']:.1f} | {TARGETS['p50_overhead_ms'].cells(s['p50_overhead_ms'])}"]
          if "p50_overhead_ms" in s else []),
        *([f"| the same with the photo as the raw request body: p50, p50 - bare call (ms) | "
           f"{s['p50_raw_body_ms']:.1f}, {s['p50_overhead_raw_body_ms']:.1f} | | |"]
          if "p50_overhead_raw_body_ms" in s else []),
        *([f"| /search p50 split: inside the service (the answer's `took_ms`: decode, "
           f"preprocess, model call, search, answer) - bare call, and around it (HTTP, "
           f"multipart, client: round trip - `took_ms`) (medians, ms) | "
           f"{s['p50_in_service_ms'] - bare_ms:.1f}, {s['p50_around_service_ms']:.1f}"
           f" | | |"] if "p50_in_service_ms" in s else []),
        f"| /search throughput, 16 clients, sustained (req/s; median of {LOAD_ROUNDS} rounds) | "
        f"{s['throughput_16_clients_per_s']:.1f} | | |",
        f"| model at batch 32 (one call or the lanes, the faster), measured just before the "
        f"16 clients (img/s) | "
        f"{s.get('paired_b32_images_per_s', float('nan')):.1f} | | |",
        f"| load generator's CPU per request (ms) | "
        f"{s.get('client_cpu_ms_per_request', float('nan')):.2f} | | |",
        f"| 16-client throughput / best batch throughput of the same minutes (each round "
        f"against batch 32 just before it or the bare call; median) | "
        f"{results['load_ratio']:.2f} | | |",
        *([f"| `search.throughput_16_over_eager_b32`: 16-client throughput / eager fp32 at "
           f"batch 32 | {s['throughput_16_over_eager_b32']:.2f}x | "
           f"{TARGETS['throughput_16_over_eager_b32'].cells(s['throughput_16_over_eager_b32'])}"]
          if "throughput_16_over_eager_b32" in s else []),
        *cpu_rows(s),
        f"| start-up to ready, {st['gallery_items']} photos: first / restart (s) | "
        f"{st['first_start_s']:.1f} / {st['restart_s']:.1f} | | |",
        f"| restart speed-up | {st['restart_speedup']:.1f}x | "
        f"{TARGETS['restart_speedup'].cells(st['restart_speedup'])}",
        f"| enrol latency, first 20 / last 20 of 200 (ms) | {s['enroll_first20_ms']:.1f} / "
        f"{s['enroll_last20_ms']:.1f} | flat: last / first "
        f"{TARGETS['enroll_growth'].cells(s['enroll_last20_ms'] / s['enroll_first20_ms'])}",
    ]
    for f in results["faiss"].values():
        lines.append(
            f"| FAISS {f['n']:,} {f['vectors']} 128-d: flat / HNSW ms per query "
            f"(efSearch {f['hnsw_ef_search']}), recall@5 | "
            f"{f['flat_ms_per_query']:.3f} / {f['hnsw_ms_per_query']:.3f} "
            f"({f['hnsw_speedup']:.1f}x), {f['hnsw_recall@5']:.3f} | "
            + (_hnsw_cells(f) if f["n"] >= 1_000_000 else "| |"))
    return "\n".join(lines) + "\n"


def _hnsw_cells(f: dict) -> str:
    speed, recall = TARGETS["hnsw_speedup_1m"], TARGETS["hnsw_recall_1m"]
    met = speed.met(f["hnsw_speedup"]) and recall.met(f["hnsw_recall@5"])
    return (f"HNSW {speed.op} {speed.bound:g}{speed.unit}, recall {recall.op} {recall.bound:g}"
            f" | {_ok(met)} |")


def add_ratios(results: dict) -> None:
    """The ratios that need both the embedding and the HTTP measurements."""
    e, s = results["embedding"], results["search"]
    s["throughput_16_over_eager_b32"] = (s["throughput_16_clients_per_s"]
                                         / e["eager_fp32_b32_images_per_s"])
    s["p50_overhead_ms"] = s["p50_ms"] - s["paired_bare_call_ms"]
    if "p50_raw_body_ms" in s:
        s["p50_overhead_raw_body_ms"] = s["p50_raw_body_ms"] - s["paired_bare_call_ms"]


def load_ratio(search: dict) -> float:
    """16-client throughput over the best batch throughput measured in the same minutes,
    round by round (median): batch 32 (one call or the lanes, the faster) timed just
    before the round, or the bare single-image call timed between the blocks of requests."""
    bare = 1000 / search["paired_bare_call_ms"]
    return statistics.median(
        load / max(b32, bare) for load, b32 in zip(search["throughput_16_clients_per_s_rounds"],
                                                  search["paired_b32_images_per_s_rounds"],
                                                  strict=True))


def cpu_rows(s: dict) -> list[str]:
    """The CPU accounting of the 16-client rounds (Linux: read from /proc)."""
    if "server_cpu_ms_per_request" not in s:
        return []
    spent = s["server_cpu_ms_per_request"] + s["client_cpu_ms_per_request"]
    cores = usable_cpus()
    busy = spent * s["throughput_16_clients_per_s"] / 1000
    rows = [
        f"| CPU per request at 16 clients: service + load generator / the model's share "
        f"(batch 32) (ms) | {spent:.1f} / {s['model_cpu_ms_per_image']:.1f} | | |",
        f"| cores busy during the 16-client rounds | {busy:.2f} of {cores} | | |",
    ]
    if s.get("model_device", "cpu") == "cpu":  # on a GPU the model's CPU bounds nothing
        rows.insert(1, f"| CPU-bound ceiling of the load ratio (model CPU / all CPU per "
                       f"request) | {s['model_cpu_ms_per_image'] / spent:.2f} | | |")
    return rows


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"
