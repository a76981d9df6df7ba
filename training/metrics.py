"""Retrieval and few-shot metrics on embeddings (unit vectors, cosine similarity)."""

from __future__ import annotations

import numpy as np

from models.prototypes import prototypes


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    k: int = 5,
) -> dict[str, float]:
    """recall@1, recall@k (a same-label item among the top k), precision@k and MAP@R.

    With no gallery, this is leave-one-out retrieval over the queries themselves. MAP@R
    (Musgrave et al. 2020): R is the number of same-label gallery items; the mean of
    precision@i at each relevant rank i <= R, divided by R. Queries whose label has no
    gallery item can't be answered and are left out.
    """
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = queries, query_labels
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    scores = queries @ gallery.T
    if leave_one_out:
        np.fill_diagonal(scores, -np.inf)
    relevant_total = (query_labels[:, None] == gallery_labels[None, :]).sum(1)
    if leave_one_out:
        relevant_total -= 1
    answerable = relevant_total > 0
    scores, query_labels, relevant_total = (
        scores[answerable], query_labels[answerable], relevant_total[answerable]
    )
    if len(query_labels) == 0:
        raise ValueError("no query has a same-label item in the gallery")
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = gallery_labels[order] == query_labels[:, None]
    ranks = np.arange(1, hits.shape[1] + 1)
    precision_at = np.cumsum(hits, axis=1) / ranks
    within_r = ranks[None, :] <= relevant_total[:, None]
    map_at_r = ((precision_at * hits * within_r).sum(1) / relevant_total).mean()
    return {
        "recall@1": float(hits[:, 0].mean()),
        f"recall@{k}": float(hits[:, :k].any(1).mean()),
        f"precision@{k}": float(hits[:, :k].sum(1).mean() / k),
        "map@r": float(map_at_r),
        "n_queries": int(len(query_labels)),
    }


def fewshot_accuracy(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 10,
    episodes: int = 600,
    seed: int = 0,
    support_embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """N-way K-shot episodes with prototypes: each class's prototype is the normalised mean
    of its K support embeddings; a query goes to the most similar prototype. Returns the
    mean episode accuracy and its 95% confidence half-width. ``support_embeddings`` (the
    same photos, row for row, as the gallery stores them) give the supports, if given."""
    labels = np.asarray(labels)
    stored = embeddings if support_embeddings is None else support_embeddings
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = [c for c, idx in by_class.items() if len(idx) > k_shot]
    if len(eligible) < n_way:
        raise ValueError(
            f"{n_way}-way {k_shot}-shot needs {n_way} classes with more than {k_shot} images; "
            f"only {len(eligible)} have that many"
        )
    accuracies = np.empty(episodes)
    for episode in range(episodes):
        classes = rng.choice(eligible, size=n_way, replace=False)
        means, queries, truth = [], [], []
        for position, cls in enumerate(classes):
            chosen = rng.permutation(by_class[cls])
            support, query = chosen[:k_shot], chosen[k_shot : k_shot + n_query]
            means.append(stored[support].mean(0))
            queries.append(embeddings[query])
            truth.extend([position] * len(query))
        predicted = (np.concatenate(queries) @ prototypes(np.stack(means)).T).argmax(1)
        accuracies[episode] = (predicted == np.asarray(truth)).mean()
    return {
        "accuracy": float(accuracies.mean()),
        "ci95": float(1.96 * accuracies.std(ddof=1) / np.sqrt(episodes)) if episodes > 1 else 0.0,
        "episodes": episodes,
    }
