import os

import numpy as np
import pytest
import torch

from models.backbones import (
    _LITE,
    BackboneError,
    build_backbone,
    find_lite_weights,
    load_in_order,
)
from models.base import embed_for_gallery, embed_images
from models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    set_checkpoint_extra,
    with_gallery_views,
)
from models.preprocessing import Preprocessing
from models.runtimes.eager import TorchEmbedder
from tests.helpers import synthetic_image


def test_default_backbone_really_loads_the_packaged_imagenet_weights():
    model, dim = build_backbone("efficientnet_lite0")
    assert dim == 1280
    packaged = torch.load(find_lite_weights(_LITE["efficientnet_lite0"]), weights_only=True)
    first_key, first = next(iter(packaged.items()))
    assert torch.equal(model.conv_stem.weight, first), first_key
    tensors = [v for k, v in packaged.items() if not k.endswith("num_batches_tracked")]
    assert torch.equal(model.conv_head.weight, tensors[-2 - 5])  # before bn2 (4) + fc (2)
    # And it computes ImageNet features: different images give different features.
    out = model.eval()(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1280) and not torch.allclose(out[0], out[1])


def test_weight_shape_mismatch_fails_loudly():
    model, _ = build_backbone("efficientnet_lite0", pretrained=False)
    state = dict(torch.load(find_lite_weights(_LITE["efficientnet_lite0"]), weights_only=True))
    key = next(iter(state))
    state[key] = torch.zeros(1, 2, 3)
    with pytest.raises(BackboneError, match="has shape"):
        load_in_order(model, state, "test")
    with pytest.raises(BackboneError, match="tensors"):
        load_in_order(model, dict(list(state.items())[:10]), "test")


def test_unknown_backbones_are_refused_with_the_choices():
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        build_backbone("resnet9000")
    with pytest.raises(BackboneError, match="timm has no model"):
        build_backbone("timm:no_such_model")
    with pytest.raises(BackboneError, match="torchvision has no model"):
        build_backbone("torchvision:no_such_model")


def test_hub_weights_offline_give_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="internet"):
        build_backbone("timm:test_efficientnet", pretrained=True)


def test_torchvision_backbone_outputs_pooled_features():
    model, dim = build_backbone("torchvision:resnet18", pretrained=False)
    assert dim == 512
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_checkpoint_round_trip_gives_identical_embeddings(tiny_checkpoint, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    images = [synthetic_image((200, 30, 30), i) for i in range(3)]
    before = embed_images(TorchEmbedder(loaded.encoder, loaded.meta.preprocessing), images)
    again = load_checkpoint(tiny_checkpoint)
    after = embed_images(TorchEmbedder(again.encoder, again.meta.preprocessing), images)
    assert before.shape == (3, 16)
    assert (before == after).all()
    assert again.fingerprint == loaded.fingerprint
    assert again.meta.preprocessing.image_size == 64


def test_checkpoint_loads_with_weights_only(tiny_checkpoint):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    assert payload["meta"]["encoder"] == {"backbone": "timm:test_efficientnet",
                                          "embedding_dim": 16}
    assert {"torch", "timm"} <= set(payload["meta"]["versions"])


def test_checkpoint_is_written_atomically(tiny_checkpoint, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    from models.checkpoint import save_checkpoint

    target = tmp_path / "sub" / "c.pt"
    save_checkpoint(target, loaded.encoder, loaded.meta, half=True)
    assert os.listdir(target.parent) == ["c.pt"]  # no temp file left behind
    meta, state = read_checkpoint(target)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert load_checkpoint(target).encoder.head.weight.dtype == torch.float32


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"this is not a checkpoint", "corrupt"),
        ("truncate", "corrupt"),
        ("foreign", "not a checkpoint of this project"),
        ("future", "upgrade"),
        ("mismatch", "does not fit"),
    ],
)
def test_bad_checkpoints_give_one_clear_error(tiny_checkpoint, tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content == "truncate":
        path.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    elif content == "foreign":
        torch.save({"state_dict": {}}, path)
    elif content in {"future", "mismatch"}:
        payload = torch.load(tiny_checkpoint, weights_only=True)
        if content == "future":
            payload["meta"]["format_version"] = 99
        else:
            payload["meta"]["encoder"]["embedding_dim"] = 32
        torch.save(payload, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


class HalvesEmbedder:
    """Hand-checkable: the unit vector of (mean of the left half, mean of the right half)."""

    name, dim = "halves", 2

    def __init__(self, views: int) -> None:
        self.preprocessing = Preprocessing(image_size=4, gallery_views=views)

    def embed_batch(self, batch) -> np.ndarray:
        batch = np.asarray(batch)
        halves = np.stack([batch[..., :2].mean((1, 2, 3)), batch[..., 2:].mean((1, 2, 3))], 1)
        return halves / np.linalg.norm(halves, axis=1, keepdims=True)


def test_gallery_photos_embed_as_the_mean_of_their_views():
    bright_left = np.zeros((1, 3, 4, 4), np.float32)
    bright_left[..., :2] = 3.0
    bright_left[..., 2:] = 1.0
    query = HalvesEmbedder(2).embed_batch(bright_left)[0]
    np.testing.assert_allclose(query, np.array([3.0, 1.0]) / np.sqrt(10))
    # With its mirror image, (3, 1) and (1, 3): the mean points along (1, 1).
    np.testing.assert_allclose(embed_for_gallery(HalvesEmbedder(2), bright_left)[0],
                               [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(embed_for_gallery(HalvesEmbedder(1), bright_left)[0], query)


def test_gallery_views_are_stored_in_the_checkpoint_and_change_its_fingerprint(
        tiny_checkpoint, tmp_path):
    path = tmp_path / "views.pt"
    path.write_bytes(tiny_checkpoint.read_bytes())
    loaded = load_checkpoint(path)
    assert loaded.meta.preprocessing.gallery_views == 1
    two = with_gallery_views(loaded, 2)
    assert two.meta.preprocessing.gallery_views == 2 and two.fingerprint != loaded.fingerprint
    assert with_gallery_views(loaded, 1) is loaded
    set_checkpoint_extra(path, "note", "views", gallery_views=2)
    again = load_checkpoint(path)
    assert again.meta.preprocessing.gallery_views == 2 and again.meta.extra["note"] == "views"
    assert again.fingerprint != loaded.fingerprint  # a new file: its gallery is embedded again
    state = read_checkpoint(path)[1]
    assert all((state[k] == v).all() for k, v in read_checkpoint(tiny_checkpoint)[1].items())
    with pytest.raises(ValueError, match="gallery_views"):
        set_checkpoint_extra(path, "note", "views", gallery_views=5)
