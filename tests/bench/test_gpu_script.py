"""bench/gpu.py, the GPU benchmark, run small on the CPU: every part measures something and
none fails, so the one run a lent GPU allows is not spent finding a bug."""

import json

import pytest

from bench import gpu

pytestmark = pytest.mark.slow


def test_every_part_of_the_gpu_benchmark_runs_on_a_cpu(tiny_checkpoint, tmp_path):
    out = tmp_path / "gpu.json"
    results = gpu.main(["--out", str(out), "--device", "cpu", "--quick", "--checkpoint",
                        str(tiny_checkpoint)])
    assert json.loads(out.read_text()) == results
    for part in ("embedding", "gallery_files", "search", "training_step"):
        assert "error" not in results[part], results[part]
    assert results["embedding"]["eager_fp32_b4_images_per_s"] > 0
    assert results["gallery_files"]["files"] == 12
    assert results["search"]["throughput_16_clients_per_s"] > 0
    assert results["training_step"]["step_ms"] > 0
