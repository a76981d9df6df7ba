import numpy as np
import pytest

from training.metrics import fewshot_accuracy, retrieval_metrics


def one_hot_embeddings(labels, n_classes):
    emb = np.eye(n_classes, dtype=np.float32)[labels]
    return emb


def test_perfect_embedding_scores_one():
    labels = np.repeat(np.arange(5), 4)
    emb = one_hot_embeddings(labels, 5)
    m = retrieval_metrics(emb, labels)
    assert m["recall@1"] == 1.0 and m["recall@5"] == 1.0 and m["map@r"] == 1.0
    # Each query has only 3 same-class neighbours, so at most 3 of the top 5 can match.
    assert m["precision@5"] == pytest.approx(3 / 5)
    acc = fewshot_accuracy(emb, labels, n_way=5, k_shot=1, episodes=50)
    assert acc["accuracy"] == 1.0 and acc["ci95"] == 0.0


def test_fewshot_supports_come_from_the_support_embeddings_when_given():
    labels = np.repeat(np.arange(5), 4)
    emb = one_hot_embeddings(labels, 5)
    # As stored, each photo points at the next class: every query goes to the wrong one.
    shifted = one_hot_embeddings((labels + 1) % 5, 5)
    acc = fewshot_accuracy(emb, labels, n_way=5, k_shot=1, episodes=20,
                           support_embeddings=shifted)
    assert acc["accuracy"] == 0.0
    same = fewshot_accuracy(emb, labels, n_way=5, k_shot=1, episodes=20, support_embeddings=emb)
    assert same == fewshot_accuracy(emb, labels, n_way=5, k_shot=1, episodes=20)


def test_random_embedding_scores_about_chance():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 10)
    emb = rng.normal(size=(200, 64))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    m = retrieval_metrics(emb, labels)
    assert m["recall@1"] == pytest.approx(9 / 199, abs=0.04)
    acc = fewshot_accuracy(emb, labels, n_way=5, k_shot=1, episodes=300, seed=1)
    assert acc["accuracy"] == pytest.approx(0.2, abs=0.03)
    assert 0 < acc["ci95"] < 0.05


def test_map_at_r_by_hand():
    # Query 0 (label 0) against a gallery ranked: label 0, label 1, label 0 (R = 2).
    query = np.array([[1.0, 0.0]])
    gallery = np.array([[1.0, 0.0], [0.9, 0.436], [0.5, 0.866]])
    m = retrieval_metrics(query, np.array([0]), gallery, np.array([0, 1, 0]))
    # Top R=2: hit at rank 1 (precision 1), miss at rank 2: MAP@R = 1/2.
    assert m["map@r"] == pytest.approx(0.5)
    assert m["recall@1"] == 1.0 and m["precision@5"] == pytest.approx(2 / 5)


def test_gallery_mode_and_unanswerable_queries():
    q = np.array([[0.1, 0.995], [0.0, 1.0]])
    g = np.array([[0.0, 1.0], [1.0, 0.0]])
    m = retrieval_metrics(q, np.array([0, 7]), g, np.array([1, 0]))
    assert m["n_queries"] == 1 and m["recall@1"] == 0.0  # label 7 has no gallery item


def test_fewshot_needs_enough_classes():
    with pytest.raises(ValueError, match="5-way"):
        fewshot_accuracy(np.eye(3), np.array([0, 1, 2]), n_way=5, k_shot=1)


def test_prototypes_are_unit_rows_and_zero_rows_stay_zero():
    from models.prototypes import prototypes

    got = prototypes(np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_allclose(got, [[1, 0], [2**-0.5, 2**-0.5], [0, 0]], atol=1e-12)
