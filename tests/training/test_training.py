import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.runtimes.eager import TorchEmbedder
from tests.helpers import COLOURS, TINY_BACKBONE, make_image_folder
from training import evaluate, train
from training.data import scan_image_folder
from training.embedding import embed_folder
from training.samplers import PKSampler

TINY = ["--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", "64",
        "--embedding-dim", "16", "--workers", "0", "--freeze-stages", "0", "--augment", "0.3"]


def test_pk_sampler_batches_have_p_classes_with_k_each():
    labels = [0] * 5 + [1] * 3 + [2] * 1 + [3] * 6
    sampler = PKSampler(labels, p=3, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(labels) // 12
    for batch in batches:
        classes = [labels[i] for i in batch]
        assert len(batch) == 12 and sorted(set(classes)) != [] and len(set(classes)) == 3
        assert all(classes.count(c) == 4 for c in set(classes))
        assert 2 not in classes  # a single-image class can't give positives


def test_loss_falls_on_an_easy_synthetic_task(synthetic_folder, tmp_path):
    out = tmp_path / "enc.pt"
    result = train.main(["--data", str(synthetic_folder), "--out", str(out), "--epochs", "6",
                         "--p", "4", "--k", "4", "--steps-per-epoch", "4", "--lr", "3e-3",
                         "--backbone-lr-mult", "1.0", "--seed", "1", *TINY])
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < 0.6 * losses[0], losses
    loaded = load_checkpoint(out)
    assert loaded.meta.class_names == ["blue", "green", "red", "yellow"]
    assert loaded.meta.train_args["mining"] == "batch-hard"
    assert "val" in loaded.meta.metrics and loaded.meta.metrics["best_epoch"] >= 1


def test_checkpoint_reloads_to_the_embeddings_it_produced(synthetic_folder, tmp_path):
    out = tmp_path / "enc.pt"
    result = train.main(["--data", str(synthetic_folder), "--out", str(out), "--epochs", "1",
                         "--steps-per-epoch", "2", "--p", "4", "--k", "2", *TINY])
    folder = scan_image_folder(synthetic_folder)
    loaded = load_checkpoint(out)
    before = embed_folder(TorchEmbedder(result["encoder"], loaded.meta.preprocessing), folder)
    after = embed_folder(TorchEmbedder(loaded.encoder, loaded.meta.preprocessing), folder)
    np.testing.assert_array_equal(before, after)
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(after[0], after[-1])  # a real, non-constant embedding


@pytest.mark.parametrize("mining", ["semi-hard", "offline"])
def test_other_mining_modes_train(synthetic_folder, tmp_path, mining):
    out = tmp_path / "enc.pt"
    result = train.main(["--data", str(synthetic_folder), "--out", str(out), "--epochs", "1",
                         "--steps-per-epoch", "2", "--p", "4", "--k", "3",
                         "--mining", mining, *TINY])
    assert len(result["history"]) == 1 and out.exists()


def test_multi_similarity_loss_trains_and_is_recorded(synthetic_folder, tmp_path):
    out = tmp_path / "enc.pt"
    result = train.main(["--data", str(synthetic_folder), "--out", str(out), "--epochs", "4",
                         "--p", "4", "--k", "4", "--steps-per-epoch", "4", "--lr", "3e-3",
                         "--backbone-lr-mult", "1.0", "--seed", "1",
                         "--loss", "multi-similarity", *TINY])
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0], losses
    assert load_checkpoint(out).meta.train_args["loss"] == "multi-similarity"
    with pytest.raises(SystemExit, match="P x K"):
        train.main(["--data", str(synthetic_folder), "--out", str(out),
                    "--loss", "multi-similarity", "--mining", "offline", *TINY])


def test_proxy_anchor_loss_trains_and_resumes_with_its_proxies(synthetic_folder, tmp_path):
    out = tmp_path / "enc.pt"
    common = ["--data", str(synthetic_folder), "--out", str(out), "--p", "4", "--k", "4",
              "--steps-per-epoch", "4", "--lr", "3e-3", "--backbone-lr-mult", "1.0",
              "--seed", "1", "--loss", "proxy-anchor", *TINY]
    result = train.main([*common, "--epochs", "3"])
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0], losses
    assert load_checkpoint(out).meta.train_args["loss"] == "proxy-anchor"
    proxies = torch.load(out.with_name(out.name + ".last"), weights_only=True)["loss"]["proxies"]
    assert proxies.shape == (4, 16)
    resumed = train.main([*common, "--epochs", "4", "--resume"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    with pytest.raises(SystemExit, match="P x K"):
        train.main(["--data", str(synthetic_folder), "--out", str(out),
                    "--loss", "proxy-anchor", "--mining", "offline", *TINY])
    triplet_out = tmp_path / "triplet.pt"
    train.main([*common, "--epochs", "1", "--loss", "triplet", "--out", str(triplet_out)])
    with pytest.raises(SystemExit, match="--loss it was started with"):
        train.main([*common, "--epochs", "2", "--resume", "--out", str(triplet_out)])


def test_proxies_start_at_the_class_means_of_the_encoders_own_embeddings(synthetic_folder):
    """Derived from the backbone features the PCA head was made from, no second pass: equal
    to embedding every photo with the whole encoder and averaging by class."""
    from models.encoder import EncoderConfig, build_encoder
    from models.preprocessing import Preprocessing

    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(TINY_BACKBONE, 16), pretrained=False).eval()
    folder = scan_image_folder(synthetic_folder)
    pre, device = Preprocessing(image_size=64), torch.device("cpu")
    feats = train.backbone_features(encoder, folder, pre, device, workers=0)
    train.init_head_pca(encoder.head, feats)
    start = train.class_mean_embeddings(encoder.head, feats, folder.labels, len(folder.classes))
    embedded = torch.from_numpy(embed_folder(TorchEmbedder(encoder, pre, device), folder,
                                             workers=0))
    labels = torch.as_tensor(folder.labels)
    expected = torch.stack([torch.nn.functional.normalize(embedded[labels == c].mean(0), dim=0)
                            for c in range(len(folder.classes))])
    torch.testing.assert_close(start, expected, atol=1e-5, rtol=0)


def test_resume_continues_where_it_stopped(synthetic_folder, tmp_path):
    out = tmp_path / "enc.pt"
    common = ["--data", str(synthetic_folder), "--out", str(out), "--steps-per-epoch", "2",
              "--p", "4", "--k", "2", *TINY]
    train.main([*common, "--epochs", "1"])
    result = train.main([*common, "--epochs", "2", "--resume"])
    assert [h["epoch"] for h in result["history"]] == [1, 2]


def test_split_layout_subset_and_unreadable_files(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {k: COLOURS[k] for k in ["red", "green", "blue"]}, 6)
    make_image_folder(root / "val", {k: COLOURS[k] for k in ["red", "green"]}, 3, seed=1)
    (root / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (8, 8)).save(root / "train" / "red" / "tiny.png")
    folder = scan_image_folder(root / "train")
    assert len(folder) == 6 * 3 + 1  # the broken file is skipped, the PNG is kept
    out = tmp_path / "enc.pt"
    train.main(["--data", str(root), "--out", str(out), "--epochs", "1", "--classes",
                "red,green", "--steps-per-epoch", "1", "--p", "2", "--k", "2", *TINY])
    loaded = load_checkpoint(out)
    assert loaded.meta.class_names == ["green", "red"]
    assert loaded.meta.metrics["val"]["n_queries"] == 6


def test_evaluate_writes_the_documented_json_and_pictures(synthetic_folder, tiny_checkpoint,
                                                          tmp_path):
    out = tmp_path / "eval.json"
    evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_folder),
                   "--gallery", str(synthetic_folder), "--json", str(out),
                   "--grid", str(tmp_path / "grid.png"), "--plot", str(tmp_path / "map.png"),
                   "--plot-method", "pca", "--ways", "3", "--episodes", "20", "--workers", "0",
                   "--cache", str(tmp_path / "cache")])
    data = json.loads(out.read_text())
    # A second run reads every embedding from the cache and gives the same numbers.
    (cached,) = (tmp_path / "cache").glob("*.npz")
    again = evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_folder),
                           "--ways", "3", "--episodes", "20", "--workers", "0",
                           "--cache", str(tmp_path / "cache")])
    assert again["fewshot"] == data["fewshot"]
    assert len(np.load(cached)["paths"]) == 48
    # Another test-time size is embedded anew, into its own cache file.
    larger = evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_folder),
                            "--ways", "3", "--episodes", "20", "--workers", "0",
                            "--cache", str(tmp_path / "cache"), "--image-size", "80"])
    assert larger["image_size"] == 80 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert set(data["retrieval"]) >= {"recall@1", "recall@5", "precision@5", "map@r"}
    assert set(data["fewshot"]) == {"3-way-1-shot", "3-way-5-shot"}
    assert set(data["fewshot"]["3-way-1-shot"]) >= {"accuracy", "ci95"}
    assert data["n_images"] == 48 and data["n_classes"] == 4
    assert data["checkpoint"] == str(tiny_checkpoint) and data["image_size"] == 64
    # Queries searched against a gallery that contains them: each finds itself first.
    assert data["retrieval"]["recall@1"] == 1.0
    for picture in ("grid.png", "map.png"):
        with Image.open(tmp_path / picture) as image:
            assert image.size[0] > 300


def test_trained_encoder_separates_synthetic_classes(synthetic_folder, tmp_path):
    out = tmp_path / "enc.pt"
    train.main(["--data", str(synthetic_folder), "--out", str(out), "--epochs", "4",
                "--p", "4", "--k", "4", "--steps-per-epoch", "4", "--lr", "3e-3",
                "--backbone-lr-mult", "1.0", "--val-fraction", "0", *TINY])
    result = evaluate.main(["--checkpoint", str(out), "--data", str(synthetic_folder),
                            "--ways", "4", "--shots", "1", "--episodes", "50",
                            "--workers", "0"])
    assert result["retrieval"]["recall@1"] > 0.9
    assert result["fewshot"]["4-way-1-shot"]["accuracy"] > 0.8
    torch.manual_seed(0)


def test_interpolation_endpoints_and_midpoint():
    from models.encoder import EncoderConfig, build_encoder
    from training.interpolate import interpolate

    torch.manual_seed(0)
    a = build_encoder(EncoderConfig(TINY_BACKBONE, 8), pretrained=False)
    b = build_encoder(EncoderConfig(TINY_BACKBONE, 8), pretrained=False)
    wa, wb = a.head.weight.detach().clone(), b.head.weight.detach().clone()
    mid = interpolate(copy_of(a), b, 0.5)
    assert torch.allclose(mid.head.weight, (wa + wb) / 2)
    assert torch.allclose(interpolate(copy_of(a), b, 1.0).head.weight, wa)
    assert torch.allclose(interpolate(copy_of(a), b, 0.0).head.weight, wb)


def test_soup_is_the_mean_and_needs_one_starting_point():
    from models.encoder import EncoderConfig, build_encoder
    from training.interpolate import average, same_start

    torch.manual_seed(0)
    a, b, c = (build_encoder(EncoderConfig(TINY_BACKBONE, 8), pretrained=False)
               for _ in range(3))
    weights = [m.head.weight.detach().clone() for m in (a, b, c)]
    soup = average([a, b, c])
    assert torch.allclose(soup.head.weight, sum(weights) / 3)
    head = {"weight": torch.ones(2, 2)}
    assert same_start(head, {"weight": torch.ones(2, 2).half()})
    assert not same_start(head, {"weight": torch.zeros(2, 2)}) and not same_start(head, {})


def copy_of(module):
    import copy

    return copy.deepcopy(module)


def test_interpolate_cli_needs_a_recorded_starting_point(tiny_checkpoint, tmp_path):
    from models.checkpoint import CheckpointError
    from training import interpolate

    with pytest.raises(CheckpointError, match="starting point"):
        interpolate.main(["--checkpoint", str(tiny_checkpoint), "--alpha", "0.5",
                          "--out", str(tmp_path / "x.pt")])


def test_interpolate_cli_soups_then_moves_towards_the_start(synthetic_folder, tmp_path):
    """Two short runs from the ImageNet backbone, averaged (a soup), then WiSE-interpolated a
    quarter of the way from their starting point to the soup, recorded at another size."""
    from models.encoder import EncoderConfig, build_encoder
    from training import interpolate

    runs = []
    for lr in ("1e-3", "3e-3"):  # one seed: the same split, so the same PCA starting head
        runs.append(tmp_path / f"run-{lr}.pt")
        train.main(["--data", str(synthetic_folder), "--out", str(runs[-1]), "--epochs", "1",
                    "--steps-per-epoch", "1", "--p", "4", "--k", "2", "--image-size", "64",
                    "--embedding-dim", "8", "--freeze-stages", "5", "--workers", "0",
                    "--lr", lr])
    out = interpolate.main(["--checkpoint", str(runs[0]), "--soup", str(runs[1]),
                            "--alpha", "0.25", "--image-size", "96",
                            "--out", str(tmp_path / "mix.pt")])
    a, b, mix = (load_checkpoint(path) for path in (*runs, out))
    assert mix.meta.preprocessing.image_size == 96  # the size it is to be used at
    assert mix.meta.extra["wise_alpha"] == 0.25
    assert mix.meta.extra["fine_tuned_from"] == [str(runs[0]), str(runs[1])]
    start = build_encoder(EncoderConfig(a.meta.encoder.backbone, 8), pretrained=True)
    start.head.load_state_dict(a.meta.extra["initial_head"])
    states = [m.state_dict() for m in (a.encoder, b.encoder, start, mix.encoder)]
    moved = 0
    for key, value in states[3].items():
        if value.is_floating_point():
            tuned = (states[0][key] + states[1][key]) / 2
            torch.testing.assert_close(value, states[2][key] + 0.25 * (tuned - states[2][key]))
            moved += not torch.equal(states[0][key], states[2][key])
    assert moved > 0  # training changed some weights: the check above is not trivial
