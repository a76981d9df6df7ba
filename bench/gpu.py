"""The GPU benchmark (``bench/gpu.sh`` runs it on a lent machine): embedding throughput,
gallery embedding from JPEG files end to end, /search latency and 16-client throughput with
the service on CUDA, and a training step. Writes one JSON file.

    python -m bench.gpu --out gpu.json [--gallery <class>/*.jpg] [--device cuda] [--quick]

Without ``--gallery`` it makes a synthetic one (the device machine has no grocery photos).
On a CPU (``--device cpu --quick``) it runs the same code small, which is how it is tested.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.harness import Service
from bench.http_load import search_latencies, search_request, search_throughput
from bench.reliability import make_gallery
from models.base import DEFAULT_CHECKPOINT, embed_for_gallery
from models.checkpoint import load_checkpoint
from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess
from models.runtimes.eager import TorchEmbedder
from models.runtimes.factory import open_embedder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(fn, batch: int, repeats: int, device: torch.device) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def bench_embedding(checkpoint: str, device: torch.device, batches: list[int],
                    repeats: int) -> dict:
    """The service's runtime on this device (bf16 autocast, channels_last on CUDA) against
    plain eager fp32, batch by batch."""
    loaded = load_checkpoint(checkpoint, device)
    size = loaded.meta.preprocessing.image_size
    runtimes = {
        "service": open_embedder(loaded, "auto", str(device)).embedder,
        "eager_fp32": TorchEmbedder(load_checkpoint(checkpoint, device).encoder,
                                    loaded.meta.preprocessing, device, bf16=False,
                                    channels_last=False),
    }
    out: dict = {"service_runtime": runtimes["service"].name}
    for batch in batches:
        x = torch.randn(batch, 3, size, size, device=device)
        for name, runtime in runtimes.items():
            out[f"{name}_b{batch}_images_per_s"] = images_per_s(
                lambda r=runtime, x=x: r.embed_batch(x), batch, repeats, device)
    return out


def gpu_preprocess(data: list[bytes], resize: int, crop: int,
                   device: torch.device) -> torch.Tensor:
    """JPEG bytes -> model input decoded on the GPU (torchvision.io.decode_jpeg) and resized
    there: a measurement only. The service keeps the one preprocessing of training and
    evaluation (Pillow), whose agreement with this is reported."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as tvf

    decoded = decode_jpeg([torch.frombuffer(d, dtype=torch.uint8) for d in data],
                          device=device)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    out = []
    for image in decoded:
        image = tvf.resize(image[:3], [resize], interpolation=tvf.InterpolationMode.BICUBIC,
                           antialias=True)
        image = tvf.center_crop(image, [crop, crop])
        out.append((image.float() / 255 - mean) / std)
    return torch.stack(out)


def bench_gallery_files(checkpoint: str, gallery: Path, device: torch.device,
                        batch: int = 64) -> dict:
    """Embedding every JPEG of ``gallery`` from its bytes on disk as the service stores
    them (with the checkpoint's gallery views): decoded and preprocessed on CPU threads (the
    service's path), and decoded on the GPU where it can."""
    opened = open_embedder(checkpoint, "auto", str(device))
    embedder, pre = opened.embedder, opened.embedder.preprocessing
    files = sorted(gallery.rglob("*.jpg"))
    out: dict = {"files": len(files)}

    def cpu_path() -> np.ndarray:
        vectors = []
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            for start in range(0, len(files), batch):
                inputs = list(pool.map(lambda p: preprocess(load_image(p.read_bytes()), pre),
                                       files[start : start + batch]))
                vectors.append(embed_for_gallery(embedder, np.stack(inputs)))
        return np.concatenate(vectors)

    started = time.perf_counter()
    cpu = cpu_path()
    out["cpu_decode_files_per_s"] = len(files) / (time.perf_counter() - started)
    if device.type == "cuda":
        started = time.perf_counter()
        vectors = [embed_for_gallery(embedder, gpu_preprocess([p.read_bytes() for p in
                                                               files[s : s + batch]],
                                                              pre.resize_size,
                                                              pre.image_size, device))
                   for s in range(0, len(files), batch)]
        out["gpu_decode_files_per_s"] = len(files) / (time.perf_counter() - started)
        cosine = np.sum(np.concatenate(vectors) * cpu, axis=1)
        out["gpu_vs_cpu_cosine_median"] = float(np.median(cosine))
        out["gpu_vs_cpu_cosine_min"] = float(cosine.min())
    return out


def bench_service(checkpoint: str, gallery: Path, device: torch.device, work: Path,
                  seconds: float) -> dict:
    """/search with the service on ``device``: one client's latency, 16 clients' sustained
    throughput."""
    spec = Service(checkpoint, work / "service-data", gallery, {"DEVICE": device.type})
    port = spec.port
    queries = [p.read_bytes() for p in sorted(gallery.rglob("*.jpg"))[::7][:40]]
    requests = [search_request(q, port) for q in queries]
    with spec.run() as server:
        latencies = asyncio.run(search_latencies(port, {"multipart": requests},
                                                 100)).round_trip["multipart"]
        window = asyncio.run(search_throughput(port, requests, 16, seconds,
                                               server_pid=server.pid))
    latencies.sort()
    return {"p50_ms": 1000 * latencies[len(latencies) // 2],
            "p95_ms": 1000 * latencies[int(len(latencies) * 0.95) - 1],
            "throughput_16_clients_per_s": window.per_s}


def bench_training_step(device: torch.device, steps: int, p: int = 16, k: int = 4,
                        size: int = 224) -> dict:
    """One P x K batch-hard triplet step of the default recipe's shape (bf16 on CUDA)."""
    from models.backbones import DEFAULT_BACKBONE
    from models.encoder import EncoderConfig, build_encoder
    from training.losses import mined_triplet_loss
    from training.miners import batch_hard

    encoder = build_encoder(EncoderConfig(DEFAULT_BACKBONE, 128), pretrained=False)
    encoder = encoder.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    images = torch.randn(p * k, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.arange(p, device=device).repeat_interleave(k)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            embeddings = encoder(images)
        loss, _ = mined_triplet_loss(embeddings, batch_hard(embeddings, labels), 0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    per_s = images_per_s(step, p * k, steps, device)
    return {"batch": p * k, "image_size": size, "step_ms": 1000 * p * k / per_s,
            "images_per_s": per_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gallery", type=Path)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU check)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results: dict = {"torch": torch.__version__, "device": str(device),
                     "device_name": torch.cuda.get_device_name(device)
                     if device.type == "cuda" else "cpu",
                     "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        gallery = args.gallery if args.gallery and args.gallery.is_dir() else make_gallery(
            work / "gallery", classes=4 if args.quick else 61, per_class=3 if args.quick else 20,
            size=96 if args.quick else 640)
        parts = {
            "embedding": lambda: bench_embedding(args.checkpoint, device,
                                                 [1, 4] if args.quick else [1, 32, 128, 512],
                                                 2 if args.quick else 20),
            "gallery_files": lambda: bench_gallery_files(args.checkpoint, gallery, device),
            "search": lambda: bench_service(args.checkpoint, gallery, device, work,
                                            1.0 if args.quick else 5.0),
            "training_step": lambda: bench_training_step(device, 2 if args.quick else 20,
                                                         *((2, 2, 64) if args.quick else ())),
        }
        for name, part in parts.items():
            print(f"{name} ...", flush=True)
            try:
                results[name] = part()
            except Exception as exc:  # one part failing must not lose the others' numbers
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(results[name]), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
