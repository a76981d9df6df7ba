"""The open-set few-shot evaluation: its metrics by hand, one split on vectors whose answers
are known, and the CLI on synthetic photos."""

import json

import numpy as np
import pytest

from tests.helpers import COLOURS, make_image_folder
from training import openset


def test_auroc_by_hand():
    assert openset.auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert openset.auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert openset.auroc(np.array([0.5, 0.9]), np.array([0.5])) == pytest.approx(0.75)


def test_classify_answers_unknown_below_the_threshold():
    sums = np.array([[2.0, 0.0], [0.0, 3.0]])  # prototypes (1, 0) and (0, 1)
    queries = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    best, score, answer = openset.classify(queries, sums, ["a", "b"], threshold=0.9)
    assert list(best) == ["a", "b", "b"] and list(answer) == ["a", "unknown", "b"]
    np.testing.assert_allclose(score, [1.0, 0.8, 1.0])


def unit(*v):
    v = np.array(v, dtype=float)
    return v / np.linalg.norm(v)


def test_one_split_on_vectors_whose_answers_are_known():
    # Known class k0 along x; held-out h0, h1 along y and z: whichever is enrolled is found,
    # the other is unknown (its photos are far from every prototype), as is the other domain.
    gallery_sums = np.array([unit(1, 0, 0, 0) * 3])
    held = {"h0": (np.stack([unit(0, 1, 0, 0)] * 4), 2),
            "h1": (np.stack([unit(0, 0, 1, 0)] * 4), 2)}
    other = np.stack([unit(0, 0, 0, 1)] * 3)
    result = openset.one_split(held, gallery_sums, ["k0"], ["h0", "h1"], other, shots=1,
                               threshold=0.5, rng=np.random.default_rng(0))
    assert result["new_top_label_accuracy"] == result["new_accuracy"] == 1.0
    assert result["unknown_rejection"] == result["other_domain_rejection"] == 1.0
    assert result["balanced_accuracy"] == 1.0 and result["auroc_unknown"] == 1.0


def test_the_cli_reports_each_k_over_seeded_splits(tiny_checkpoint, tmp_path):
    classes = {k: COLOURS[k] for k in COLOURS}
    train = make_image_folder(tmp_path / "train", classes, per_class=4, seed=1)
    test = make_image_folder(tmp_path / "test", classes, per_class=3, seed=2)
    out = tmp_path / "openset.json"
    results = openset.main(["--checkpoint", str(tiny_checkpoint), "--gallery", str(train),
                            "--queries", str(test), "--heldout", "red,green,blue,cyan",
                            "--shots", "1,3", "--splits", "3", "--json", str(out)])
    assert json.loads(out.read_text())["1_shot"]["summary"] == results["1_shot"]["summary"]
    assert results["heldout"] == ["red", "green", "blue", "cyan"]
    assert results["gallery_classes"] == 2 and len(results["3_shot"]["splits"]) == 3
    for k in ("1_shot", "3_shot"):
        summary = results[k]["summary"]
        for key in ("new_top_label_accuracy", "new_accuracy", "unknown_rejection",
                    "other_domain_rejection", "balanced_accuracy", "auroc_unknown"):
            assert 0.0 <= summary[key]["mean"] <= 1.0 and summary[key]["std"] >= 0.0
    assert openset.default_heldout([f"c{i:02d}" for i in range(61)])[:2] == ["c01", "c05"]
    assert len(openset.default_heldout([f"c{i:02d}" for i in range(61)])) == 15
