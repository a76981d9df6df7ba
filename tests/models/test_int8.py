"""The INT8 runtime: calibrated and gated at export, carried in the checkpoint, quantised by
the service from its fp32 export without torch, and never mixed with fp32 embeddings."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from models.base import embed_images
from models.checkpoint import load_checkpoint
from models.runtimes.factory import model_lanes, open_embedder
from tests.api.helpers import enroll, photo, running
from tests.helpers import COLOURS, make_image_folder, synthetic_image
from training import export


@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint, tmp_path_factory):
    """A copy of the tiny checkpoint with an INT8 calibration that passed its gate."""
    root = tmp_path_factory.mktemp("int8")
    classes = {k: COLOURS[k] for k in ("red", "green", "blue", "yellow")}
    queries = make_image_folder(root / "queries", classes, per_class=4, seed=1)
    gallery = make_image_folder(root / "gallery", classes, per_class=4, seed=2)
    checkpoint = root / "tiny-int8.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    result = export.main(["--checkpoint", str(checkpoint), "--int8", "--calibration",
                          str(gallery), "--gate-queries", str(queries), "--gate-gallery",
                          str(gallery), "--max-recall-drop", "0.25", "--write-checkpoint"])
    return checkpoint, result, queries, gallery


def test_export_gates_and_writes_the_calibration_into_the_checkpoint(calibrated,
                                                                      tiny_checkpoint):
    checkpoint, result, _, _ = calibrated
    assert result["passed"] and result["calibration_photos"] == 8  # 2 a class
    assert 0 <= result["top5_overlap"] <= 1 and result["cosine_median"] > 0.9
    extra = load_checkpoint(checkpoint).meta.extra["int8"]
    assert extra["gate"]["passed"] and extra["gate"]["image_size"] == 64
    assert extra["options"] == {"method": "minmax", "per_channel": True,
                                "reduce_range": True, "keep_fp32": ["first_conv", "head"]}
    assert extra["ranges"]  # the measured activation ranges travel with the checkpoint
    before, after = load_checkpoint(tiny_checkpoint), load_checkpoint(checkpoint)
    for name, tensor in before.encoder.state_dict().items():  # the weights are untouched
        assert np.array_equal(tensor.numpy(), after.encoder.state_dict()[name].numpy())


def test_a_calibration_that_fails_its_gate_is_refused_with_its_numbers(calibrated, tmp_path):
    checkpoint, _, queries, gallery = calibrated
    copy = tmp_path / "c.pt"
    shutil.copy(checkpoint, copy)
    before = copy.read_bytes()
    with pytest.raises(SystemExit, match=r"INT8 refused: seen recall@1 .* top-5 overlap"):
        export.main(["--checkpoint", str(copy), "--int8", "--calibration", str(gallery),
                     "--gate-queries", str(queries), "--gate-gallery", str(gallery),
                     "--max-recall-drop", "-1", "--write-checkpoint"])
    assert copy.read_bytes() == before


def test_auto_serves_int8_where_calibrated_and_both_runtimes_agree(calibrated, tiny_checkpoint,
                                                                    tmp_path):
    checkpoint, _, _, _ = calibrated
    int8 = open_embedder(checkpoint, "auto", "cpu", cache_dir=tmp_path)
    fp32 = open_embedder(checkpoint, "onnx", "cpu", cache_dir=tmp_path)
    assert int8.embedder.name == "int8" and fp32.embedder.name == "onnx"
    assert int8.fingerprint == fp32.fingerprint + "+int8"  # never mixed in a gallery
    images = [synthetic_image(c, s, 80) for s in range(3) for c in COLOURS.values()]
    a, b = embed_images(fp32.embedder, images), embed_images(int8.embedder, images)
    assert np.median(np.sum(a * b, axis=1)) > 0.95
    agree = [len(set(np.argsort(-(a @ a[i]))[:5]) & set(np.argsort(-(b @ b[i]))[:5])) / 5
             for i in range(len(images))]
    assert np.mean(agree) > 0.6
    lane, count = model_lanes(int8.embedder, 2)  # lanes run the INT8 graph too
    assert count == 2 and lane.name == "int8"
    batch = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(lane.embed_batch(batch), int8.embedder.embed_batch(batch),
                               atol=1e-4)
    # Without a calibration: auto stays fp32, and int8 by name is a clear error.
    assert open_embedder(tiny_checkpoint, "auto", "cpu", cache_dir=tmp_path).embedder.name \
        == "onnx"
    with pytest.raises(RuntimeError, match="no INT8 calibration"):
        open_embedder(tiny_checkpoint, "int8", "cpu", cache_dir=tmp_path)


def test_a_restart_serves_the_cached_int8_graph_without_torch(calibrated, tmp_path):
    checkpoint, _, _, _ = calibrated
    first = open_embedder(checkpoint, "auto", "cpu", cache_dir=tmp_path)
    code = ("import sys; from models.runtimes.factory import open_embedder; "
            f"o = open_embedder({str(checkpoint)!r}, 'auto', 'cpu', cache_dir={str(tmp_path)!r});"
            " print(o.embedder.name, o.fingerprint, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["int8", first.fingerprint, "False"]
    assert len(list(tmp_path.glob("*.int8-*.onnx"))) == 1


def test_the_gallery_is_re_embedded_when_the_runtime_changes(calibrated, gallery_dir,
                                                             tmp_path):
    checkpoint, _, _, _ = calibrated
    data = tmp_path / "data"
    with running(checkpoint, data, gallery_dir, runtime="onnx") as client:
        assert client.get("/readyz").json()["runtime"] == "onnx"
        enroll(client, photo("cyan", 3), "Cyan")
    with running(checkpoint, data, gallery_dir) as client:
        ready = client.get("/readyz").json()
        assert ready["runtime"] == "int8" and ready["startup"]["embedded"] == 13  # all again
        top = client.post("/search", files={"file": ("q.jpg", photo("cyan", 3))}).json()
        assert top["results"][0]["label"] == "Cyan" and top["results"][0]["score"] > 0.99
    with running(checkpoint, data, gallery_dir) as client:  # same runtime: nothing again
        assert client.get("/readyz").json()["startup"]["embedded"] == 0
