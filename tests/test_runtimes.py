import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.inference import OnnxEmbedder, TorchEmbedder, embed_images, make_embedder
from tests.helpers import COLOURS, synthetic_image
from training import export


def test_export_cli_verifies_onnx_against_torch(tiny_checkpoint, tmp_path):
    cosine = export.main(["--checkpoint", str(tiny_checkpoint), "--onnx",
                          str(tmp_path / "e.onnx")])
    assert cosine > 0.999 and (tmp_path / "e.onnx").stat().st_size > 10_000


def test_default_encoder_same_embeddings_and_top5_in_both_runtimes(tmp_path):
    """The real default model (EfficientNet-Lite0 + head): ONNX Runtime and PyTorch agree."""
    from models.checkpoint import DEFAULT_CHECKPOINT

    loaded = load_checkpoint(DEFAULT_CHECKPOINT)
    torch_runtime = TorchEmbedder(loaded.encoder, loaded.meta.preprocessing)
    onnx_runtime = make_embedder(loaded, "auto", "cpu", cache_dir=tmp_path)
    assert isinstance(onnx_runtime, OnnxEmbedder)
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
    assert len(exported) == 1
    mtime = exported[0].stat().st_mtime_ns
    make_embedder(loaded, "auto", "cpu", cache_dir=tmp_path)
    assert exported[0].stat().st_mtime_ns == mtime


def test_runtime_choice(tiny_checkpoint, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    assert make_embedder(loaded, "torch", "cpu").name == "torch"
    assert make_embedder(loaded, "onnx", "cpu", cache_dir=tmp_path).name == "onnx"
    if not torch.cuda.is_available():
        assert make_embedder(loaded, "auto", "auto", cache_dir=tmp_path).name == "onnx"
