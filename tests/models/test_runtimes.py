import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from models.base import DEFAULT_CHECKPOINT, embed_images, usable_cpus
from models.checkpoint import CheckpointError, at_image_size, load_checkpoint
from models.preprocessing import load_image
from models.runtimes.eager import TorchEmbedder
from models.runtimes.factory import lone_call_embedder, model_lanes, open_embedder
from models.runtimes.onnx import OnnxEmbedder, onnx_cache_path
from tests.helpers import COLOURS, synthetic_image
from training import export


def test_export_cli_verifies_onnx_against_torch(tiny_checkpoint, tmp_path):
    cosine = export.main(["--checkpoint", str(tiny_checkpoint), "--onnx",
                          str(tmp_path / "e.onnx")])
    assert cosine > 0.999 and (tmp_path / "e.onnx").stat().st_size > 10_000


def test_default_encoder_same_embeddings_and_top5_in_both_runtimes(tmp_path):
    """The real default model (EfficientNet-Lite0 + head): ONNX Runtime and PyTorch agree."""
    loaded = load_checkpoint(DEFAULT_CHECKPOINT)
    torch_runtime = TorchEmbedder(loaded.encoder, loaded.meta.preprocessing)
    onnx_runtime = open_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path).embedder
    assert isinstance(onnx_runtime, OnnxEmbedder) and onnx_runtime.name == "onnx"
    images = [synthetic_image(colour, seed, 120) for seed in range(4)
              for colour in COLOURS.values()]
    a = embed_images(torch_runtime, images)
    b = embed_images(onnx_runtime, images)
    assert np.min(np.sum(a * b, axis=1)) > 0.999
    for query in range(len(images)):
        top_a = np.argsort(-(a @ a[query]))[:5]
        top_b = np.argsort(-(b @ b[query]))[:5]
        assert list(top_a) == list(top_b)
    # Second call reuses the cached export instead of exporting again.
    exported = list(tmp_path.glob("*.onnx"))
    assert exported == [onnx_cache_path(tmp_path, loaded.fingerprint)]
    # TF 'same' padding is exported as constants, not computed from the input shape.
    ops = {node.op_type for node in onnx.load(str(exported[0])).graph.node}
    assert "Conv" in ops and "Ceil" not in ops
    # The file describes itself: weights fingerprint and preprocessing.
    assert onnx_runtime.fingerprint == loaded.fingerprint
    assert onnx_runtime.preprocessing == loaded.meta.preprocessing and onnx_runtime.dim == 128
    mtime = exported[0].stat().st_mtime_ns
    open_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path)
    assert exported[0].stat().st_mtime_ns == mtime


def test_the_shipped_int8_runtime_agrees_with_fp32_on_real_photos(grocery, tmp_path):
    """The default checkpoint carries a gated INT8 calibration: auto serves it on the CPU,
    and it ranks real photos as fp32 does (the gate's full numbers are in the metadata)."""
    loaded = load_checkpoint(DEFAULT_CHECKPOINT)
    gate = loaded.meta.extra["int8"]["gate"]
    assert gate["passed"] and gate["recall@1_int8"] >= 0.848
    int8 = open_embedder(loaded, "auto", "cpu", cache_dir=tmp_path)
    fp32 = open_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path)
    assert int8.embedder.name == "int8" and int8.fingerprint == fp32.fingerprint + "+int8"
    photos = [load_image(p.read_bytes()) for d in sorted((grocery / "test").iterdir())
              for p in sorted(d.glob("*.jpg"))[:2]]
    a, b = embed_images(fp32.embedder, photos), embed_images(int8.embedder, photos)
    cosine = np.sum(a * b, axis=1)
    assert np.median(cosine) > 0.98 and cosine.min() > 0.9
    overlap = [len(set(np.argsort(-(a @ a[i]))[1:6]) & set(np.argsort(-(b @ b[i]))[1:6])) / 5
               for i in range(len(photos))]
    assert np.mean(overlap) > 0.6


def test_runtime_choice(tiny_checkpoint, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    assert open_embedder(loaded, "torch", "cpu").embedder.name == "torch"
    assert open_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path).embedder.name == "onnx"
    if not torch.cuda.is_available():
        assert open_embedder(loaded, "auto", "auto", cache_dir=tmp_path).embedder.name == "onnx"


def test_torch_memory_formats_give_the_same_embeddings(tiny_checkpoint):
    """channels_last (the service's PyTorch path) and plain contiguous weights (the bench's
    eager reference) compute the same embeddings."""
    loaded = load_checkpoint(tiny_checkpoint)
    images = [synthetic_image(colour, 0, 96) for colour in COLOURS.values()]
    plain = TorchEmbedder(loaded.encoder, loaded.meta.preprocessing, channels_last=False)
    stem = plain.encoder.backbone.conv_stem.weight
    assert stem.is_contiguous()
    a = embed_images(plain, images)
    fast = TorchEmbedder(loaded.encoder, loaded.meta.preprocessing)  # converts in place
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    np.testing.assert_allclose(embed_images(fast, images), a, atol=1e-5)


def test_single_threaded_lane_session_gives_the_same_embeddings(tiny_checkpoint, tmp_path):
    """The service's lanes: a second session of the same export on one thread."""
    loaded = load_checkpoint(tiny_checkpoint)
    main = open_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path).embedder
    lane = main.single_threaded()
    assert lane.session.get_session_options().intra_op_num_threads == 1
    assert lane.fingerprint == main.fingerprint and lane.preprocessing == main.preprocessing
    size = main.preprocessing.image_size
    batch = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(lane.embed_batch(batch), main.embed_batch(batch), atol=1e-5)


def test_the_lone_call_session_spins_during_calls_only(tiny_checkpoint, tmp_path):
    """A lone image on an idle service: the same export on every core, its threads spinning
    between a call's operators and stopping at its end (the service's main session never
    spins); the same embeddings. None where there is no pool to spin: one thread, PyTorch."""
    loaded = load_checkpoint(tiny_checkpoint)
    main = open_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path).embedder
    lone = lone_call_embedder(main)

    def config(embedder, key: str) -> str:
        return embedder.session.get_session_options().get_session_config_entry(key)

    assert config(lone, "session.intra_op.allow_spinning") == "1"
    assert config(lone, "session.force_spinning_stop") == "1"
    assert config(main, "session.intra_op.allow_spinning") == "0"
    assert lone.threads == main.threads and lone.fingerprint == main.fingerprint
    size = main.preprocessing.image_size
    batch = np.random.default_rng(1).normal(size=(1, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(lone.embed_batch(batch), main.embed_batch(batch), atol=1e-5)
    assert lone_call_embedder(main.single_threaded()) is None
    assert lone_call_embedder(open_embedder(loaded, "torch", "cpu").embedder) is None


def test_model_lanes_only_for_onnx_runtime_with_two_or_more(tiny_checkpoint, tmp_path):
    """One rule for the service and the bench: ONNX Runtime gets single-threaded lanes, one
    per inference thread by default; PyTorch, or fewer than two, gets none."""
    loaded = load_checkpoint(tiny_checkpoint)
    onnx_runtime = open_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path).embedder
    lane, count = model_lanes(onnx_runtime, 3)
    assert count == 3 and lane.session.get_session_options().intra_op_num_threads == 1
    assert model_lanes(onnx_runtime, None, threads=4)[1] == 4
    cores = usable_cpus()
    assert model_lanes(onnx_runtime)[1] == (cores if cores > 1 else 0)
    assert model_lanes(onnx_runtime, 1) == (None, 0)
    assert model_lanes(open_embedder(loaded, "torch", "cpu").embedder, 3) == (None, 0)


def test_cached_export_serves_without_importing_torch(tiny_checkpoint, tmp_path):
    """A restart on CPU opens the cached ONNX export and never imports torch (seconds)."""
    first = open_embedder(tiny_checkpoint, "auto", "cpu", cache_dir=tmp_path)
    assert first.embedder.name == "onnx"
    code = (
        "import sys; from models.runtimes.factory import open_embedder; "
        f"o = open_embedder({str(tiny_checkpoint)!r}, 'auto', 'cpu', cache_dir={str(tmp_path)!r}); "
        "print(o.embedder.name, o.fingerprint, 'torch' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["onnx", first.fingerprint, "False", "False"]


def test_damaged_cached_export_is_replaced(tiny_checkpoint, tmp_path, caplog):
    loaded = load_checkpoint(tiny_checkpoint)
    path = onnx_cache_path(tmp_path, loaded.fingerprint)
    path.write_bytes(b"not an onnx file")
    with caplog.at_level(logging.WARNING, logger="models.runtimes.onnx"):
        embedder = open_embedder(tiny_checkpoint, "onnx", "cpu", cache_dir=tmp_path).embedder
    assert embedder.fingerprint == loaded.fingerprint and path.stat().st_size > 10_000
    # Tried once, removed, exported again: one warning, not one per place that looks.
    assert sum("unusable cached ONNX export" in r.message for r in caplog.records) == 1
    image = synthetic_image(COLOURS["red"], 0, 64)
    reference = embed_images(TorchEmbedder(loaded.encoder, loaded.meta.preprocessing), [image])
    assert float(np.sum(reference * embed_images(embedder, [image]))) > 0.999


def test_file_fingerprint_follows_the_file_and_hashes_each_version_once(tmp_path):
    from models import base

    path = tmp_path / "weights.pt"
    path.write_bytes(b"first weights")
    misses = base._hash_file.cache_info().misses
    first = base.file_fingerprint(path)
    assert base.file_fingerprint(path) == first  # a second caller: no second hash
    assert base._hash_file.cache_info().misses == misses + 1
    copy = tmp_path / "copy.pt"
    copy.write_bytes(b"first weights")
    assert base.file_fingerprint(copy) == first  # the weights, not the file name
    path.write_bytes(b"other weights, longer")
    assert base.file_fingerprint(path) != first


def test_test_time_size_changes_input_and_fingerprint_not_weights(tiny_checkpoint, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    bigger = at_image_size(loaded, 80)
    assert bigger.meta.preprocessing.image_size == 80 and bigger.encoder is loaded.encoder
    assert bigger.meta.preprocessing.crop_fraction == loaded.meta.preprocessing.crop_fraction
    assert loaded.meta.preprocessing.image_size == 64  # the original is left as it was
    assert bigger.fingerprint != loaded.fingerprint
    assert at_image_size(loaded, 64) is loaded
    with pytest.raises(CheckpointError, match="too small"):
        at_image_size(loaded, 8)
    # The ONNX export is made for the new size and cached under its own name.
    embedder = open_embedder(bigger, "onnx", "cpu", cache_dir=tmp_path).embedder
    assert embedder.preprocessing.image_size == 80
    assert list(tmp_path.glob("*.onnx")) == [onnx_cache_path(tmp_path, bigger.fingerprint)]
    images = [synthetic_image((200, 30, 30), i) for i in range(2)]
    at_80 = embed_images(embedder, images)
    at_64 = embed_images(TorchEmbedder(loaded.encoder, loaded.meta.preprocessing), images)
    at_80_torch = embed_images(TorchEmbedder(bigger.encoder, bigger.meta.preprocessing), images)
    assert np.allclose(at_80, at_80_torch, atol=1e-4)
    assert not np.allclose(at_80, at_64, atol=1e-3)
