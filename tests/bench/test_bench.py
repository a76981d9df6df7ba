"""The bench's own parts: its HTTP load generator against the real service, its CPU
accounting, its ratios and its targets, and the alternating embedding timings."""

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.embedding
from bench.harness import Service, process_cpu_s
from bench.http_load import BareConnection, search_latencies, search_request, search_throughput
from bench.report import TARGETS, Target, add_ratios, cpu_rows, load_ratio
from models.base import usable_cpus
from models.checkpoint import load_checkpoint
from tests.helpers import COLOURS, make_image_folder


@pytest.mark.slow
def test_bench_load_generator_speaks_http_to_the_service(tiny_checkpoint, tmp_path):
    """`make bench` measures /search with its own bare HTTP client: the service must parse
    its requests, and an error answer must fail the benchmark, not pass as a fast request."""
    gallery = make_image_folder(tmp_path / "gallery", {n: COLOURS[n] for n in ("red", "blue")},
                                per_class=3)
    spec = Service(str(tiny_checkpoint), tmp_path / "data", gallery)
    port = spec.port

    async def one(request: bytes) -> dict:
        connection = await BareConnection.open(port)
        try:
            return json.loads(await connection.send(request))
        finally:
            connection.close()

    with spec.run() as server:
        query = (tmp_path / "gallery" / "red" / "000.jpg").read_bytes()
        answer = asyncio.run(one(search_request(query, port)))
        assert len(answer["results"]) == 5
        assert answer["results"][0]["label"] == "red" and answer["results"][0]["score"] > 0.999
        requests = [search_request(query, port)]
        raw = asyncio.run(one(search_request(query, port, raw=True)))
        assert raw["results"] == answer["results"]
        calls = []
        measured = asyncio.run(search_latencies(
            port, {"multipart": requests, "raw": [search_request(query, port, raw=True)]}, 4,
            lambda: calls.append(1), blocks=2))
        latencies, in_service = measured.round_trip, measured.in_service
        assert len(latencies["multipart"]) == len(latencies["raw"]) == len(measured.bare) == 4
        assert all(0 < t < 30 for t in latencies["multipart"] + latencies["raw"])
        # the service's own time is part of each round trip, not all of it
        for kind in ("multipart", "raw"):
            assert all(0 < inside < whole
                       for inside, whole in zip(in_service[kind], latencies[kind], strict=True))
        assert len(calls) == 4 + 2 * 2  # blocks of bare calls beside the requests, warm-ups
        window = asyncio.run(search_throughput(port, requests, 3, 1.0, warm_s=0.3,
                                               server_pid=server.pid))
        # answers inside the window only, at the rate the window's length implies
        assert window.requests > 0 and window.seconds == pytest.approx(1.0, abs=0.2)
        assert window.per_s == pytest.approx(window.requests / window.seconds)
        if Path("/proc/self/stat").exists():  # the service's CPU over the window
            assert window.server_cpu_s is not None and window.server_cpu_s > 0
        with pytest.raises(RuntimeError, match="400"):
            asyncio.run(one(search_request(b"not an image", port)))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_bench_cpu_accounting():
    """The bench reads a process's CPU time from /proc and turns the 16-client rounds into
    a ceiling: the model's CPU per image over all CPU spent per request."""

    # The child says when it has stopped burning, so the parent's readings cannot race it.
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\n"
                              "print('idle', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "idle"
        used = process_cpu_s(child.pid)
        time.sleep(0.3)  # asleep: no more CPU
        # /proc counts in clock ticks, sampled: allow a few ticks either way of 0.5 s
        assert used is not None and 0.4 <= used < 2.0
        assert process_cpu_s(child.pid) - used < 0.03
    finally:
        child.kill()
        child.wait()
    assert process_cpu_s(2**22 + 12345) is None  # no such process
    rows = cpu_rows({"server_cpu_ms_per_request": 27.0, "client_cpu_ms_per_request": 3.0,
                     "model_cpu_ms_per_image": 24.0, "throughput_16_clients_per_s": 60.0})
    assert "30.0 / 24.0" in rows[0] and "| 0.80 |" in rows[1]
    assert f"| 1.80 of {usable_cpus()} |" in rows[2]
    assert cpu_rows({"client_cpu_ms_per_request": 0.2}) == []
    # With the model on a GPU its CPU time bounds nothing: no ceiling row.
    on_gpu = cpu_rows({"server_cpu_ms_per_request": 27.0, "client_cpu_ms_per_request": 3.0,
                       "model_cpu_ms_per_image": 2.0, "throughput_16_clients_per_s": 60.0,
                       "model_device": "cuda:0"})
    assert len(on_gpu) == 2 and not any("ceiling" in row for row in on_gpu)


def test_bench_load_ratio_divides_by_the_best_batch_throughput_of_the_same_minutes():
    # round by round: 60/80, 45/90 and 70/70; the bare call alone: 50 images/s
    search = {"throughput_16_clients_per_s_rounds": [60.0, 45.0, 70.0],
              "paired_b32_images_per_s_rounds": [80.0, 90.0, 70.0],
              "paired_bare_call_ms": 20.0}
    assert load_ratio(search) == pytest.approx(0.75)  # median of 0.75, 0.5, 1.0
    # a bare call faster than batch 32 (100 images/s) becomes the denominator
    assert load_ratio({**search, "paired_bare_call_ms": 10.0}) == pytest.approx(0.6)


def test_targets_compare_in_their_direction_and_fill_the_table_cells():
    at_least, at_most = Target(">=", 3.5, "x"), Target("<=", 1.5, "x")
    assert at_least.met(3.5) and at_least.met(4.0) and not at_least.met(3.49)
    assert at_most.met(1.5) and not at_most.met(1.51)
    assert at_least.cells(3.0) == ">= 3.5x | **no** |"
    assert Target(">=", 0.95).cells(0.998) == ">= 0.95 | yes |"
    # every ratio the report judges has exactly one target
    assert {"speedup_b32", "throughput_16_over_eager_b32", "p50_overhead_ms",
            "restart_speedup", "enroll_growth", "hnsw_speedup_1m", "hnsw_recall_1m"} == set(TARGETS)
    assert TARGETS["speedup_b32"].bound == 12 and TARGETS["p50_overhead_ms"].op == "<="


def test_bench_embedding_times_both_runtimes_alternately(tiny_checkpoint, monkeypatch):
    loaded = load_checkpoint(tiny_checkpoint)
    calls, eager_runtimes = [], set()
    eager_call = bench.embedding.TorchEmbedder.embed_batch

    def recording_eager(self, batch):
        calls.append(("eager_cl" if self.channels_last else "eager", len(batch)))
        eager_runtimes.add(self)
        return eager_call(self, batch)

    class Recording:
        name = "recording"

        def __init__(self, kind: str = "service") -> None:
            self.kind = kind

        def embed_batch(self, batch):
            calls.append((self.kind, len(batch)))
            time.sleep(0.001 * len(batch))  # 1 ms an image: ~1,000 images/s
            return np.zeros((len(batch), 4), np.float32)

    monkeypatch.setattr(bench.embedding.TorchEmbedder, "embed_batch", recording_eager)
    out = bench.embedding.bench_embedding(loaded, Recording(),
                                    bench.embedding.SideBySide(Recording("lane"), 2))
    # The runtimes take turns in blocks (an untimed call, then the timed ones); the lanes
    # take the batch one image a call (at batch 1, the service's all-core call runs alone).
    assert calls == ([("eager", 1)] * 5 + [("eager_cl", 1)] * 5 + [("service", 1)] * 5) * 5 + (
        [("eager", 32)] * 3 + [("eager_cl", 32)] * 3 + [("service", 32)] * 3
        + [("lane", 1)] * 32 * 3) * 4
    assert 200 < out["service_b32_images_per_s"] < 1001
    # two 1-ms calls at once: about twice the images per second of one
    assert out["lanes"] == 2
    assert out["lanes_b32_images_per_s"] > 1.3 * out["service_b32_images_per_s"]
    assert out["speedup_b32"] == pytest.approx(  # the lanes are the faster here
        out["lanes_b32_images_per_s"] / out["eager_fp32_b32_images_per_s"])
    assert out["bare_single_image_ms"] == pytest.approx(1000 / out["service_b1_images_per_s"])
    assert out["speedup_b32_over_channels_last"] == pytest.approx(
        out["lanes_b32_images_per_s"] / out["eager_fp32_channels_last_b32_images_per_s"])
    # The reference is plain fp32 (no channels_last, weights included: channels_last
    # weights alone make the convolutions run channels_last), beside channels_last; each
    # on its own copy of the encoder: a PyTorch service runtime (on a GPU) holds
    # ``loaded.encoder`` itself, which must stay as it is.
    plain, fast = sorted(eager_runtimes, key=lambda runtime: runtime.channels_last)
    assert out["device"] == "cpu" and {str(e.device) for e in eager_runtimes} == {"cpu"}
    assert not plain.channels_last and fast.channels_last and not plain.bf16 | fast.bf16
    assert {id(plain.encoder), id(fast.encoder)}.isdisjoint({id(loaded.encoder)})
    stem = plain.encoder.backbone.conv_stem.weight
    assert stem.is_contiguous() and fast.encoder.backbone.conv_stem.weight.is_contiguous(
        memory_format=torch.channels_last)
    assert loaded.encoder.backbone.conv_stem.weight.is_contiguous()


def test_fp32_onnx_is_timed_beside_an_int8_service_and_the_issue_ratios(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)

    class Fixed:
        def __init__(self, name: str, ms: float) -> None:
            self.name, self.ms = name, ms

        def embed_batch(self, batch):
            time.sleep(self.ms / 1000 * len(batch))
            return np.zeros((len(batch), 4), np.float32)

    out = bench.embedding.bench_embedding(loaded, Fixed("int8", 0.5), None, Fixed("onnx", 1.0))
    # fp32 ONNX at 1 ms an image, INT8 at 0.5 ms: about twice as fast
    assert 1.5 < out["int8_over_fp32_b32"] < 2.5
    assert out["fp32_onnx_speedup_b32"] == pytest.approx(
        out["onnx_fp32_b32_images_per_s"] / out["eager_fp32_b32_images_per_s"])
    results = {"embedding": {"eager_fp32_b32_images_per_s": 20.0},
               "search": {"throughput_16_clients_per_s": 170.0, "p50_ms": 9.5,
                          "p50_raw_body_ms": 8.75, "paired_bare_call_ms": 6.0}}
    add_ratios(results)
    assert results["search"]["throughput_16_over_eager_b32"] == pytest.approx(8.5)
    assert results["search"]["p50_overhead_ms"] == pytest.approx(3.5)
    assert results["search"]["p50_overhead_raw_body_ms"] == pytest.approx(2.75)


def test_postgres_search_bench_measures_exact_hnsw_and_faiss_on_a_real_server():
    from bench.postgres_search import bench_postgres

    result = bench_postgres([300], queries=10)["300"]
    assert result["hnsw_recall_at_5"] >= 0.9  # near-duplicate queries of stored vectors
    assert result["exact_ms"] > 0 and result["hnsw_ms"] > 0 and result["faiss_flat_ms"] > 0


def test_the_machine_line_names_the_cpu_and_its_int8_instruction_sets():
    from bench.harness import cpu_description

    vnni = "processor\t: 0\nmodel name\t: AMD EPYC 9454\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    assert cpu_description(vnni) == "AMD EPYC 9454 (avx512_vnni, avx512f, avx2)"
    avx2 = "model name\t: Intel Xeon\nflags\t\t: fpu sse4_2 avx2\n"
    assert cpu_description(avx2) == "Intel Xeon (avx2)"
    assert cpu_description("flags\t: fpu sse2\n") == "unknown CPU (no AVX2)"
    assert cpu_description("") == "unknown CPU (no AVX2)"


@pytest.mark.slow
def test_side_by_side_times_two_trees_services_against_the_bare_call(tiny_checkpoint, tmp_path):
    """`python -m bench.side_by_side`: both services answer, each is timed beside the bare
    call, and each one's CPU is split between its event loop and its other threads."""
    from bench.harness import ROOT
    from bench.side_by_side import REQUESTS_PER_BLOCK, compare

    gallery = make_image_folder(tmp_path / "gallery", {n: COLOURS[n] for n in ("red", "blue")},
                                per_class=2)
    queries = [path.read_bytes() for path in sorted(gallery.rglob("*.jpg"))]
    result = compare([ROOT, ROOT], gallery, str(tiny_checkpoint), tmp_path / "work", 2, queries)
    assert result["bare_call_ms"] > 0 and len(result["trees"]) == 2
    for summary in result["trees"]:
        assert summary["tree"] == str(ROOT)
        assert summary["p50_ms"] > 0
        assert summary["p50_minus_bare_ms"] == pytest.approx(
            summary["p50_ms"] - result["bare_call_ms"])
        assert summary["loop_cpu_ms_per_request"] > 0 and summary["other_cpu_ms_per_request"] > 0
        assert summary["requests_timed"] == 2 * REQUESTS_PER_BLOCK
