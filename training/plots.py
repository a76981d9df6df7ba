"""Result pictures: the top-5 retrieval grid, a 2-D map of the embeddings, and the open-set
accuracies against the unknown threshold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from models.preprocessing import load_image  # noqa: E402

GREEN, RED, GREY = (46, 160, 67), (215, 48, 39), (140, 140, 140)


def _thumb(path: Path, border: tuple[int, int, int], size: int = 160) -> Image.Image:
    image = ImageOps.fit(load_image(path, draft_size=size), (size, size))
    return ImageOps.expand(image, border=8, fill=border)


def retrieval_grid(
    out: str | Path,
    query_paths: Sequence[Path],
    query_labels: Sequence[str],
    results: Sequence[Sequence[tuple[Path, str, float]]],
) -> None:
    """One row per query: the query (grey frame), then its top matches with label and
    cosine score, framed green when the label matches the query's, red otherwise."""
    rows, cols = len(query_paths), 1 + max(len(r) for r in results)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.35 * rows), squeeze=False)
    for row, (qpath, qlabel, matches) in enumerate(
        zip(query_paths, query_labels, results, strict=True)
    ):
        axes[row][0].imshow(_thumb(qpath, GREY))
        axes[row][0].set_title(f"query\n{qlabel}", fontsize=8, fontweight="bold")
        for col, (path, label, score) in enumerate(matches, start=1):
            axes[row][col].imshow(_thumb(path, GREEN if label == qlabel else RED))
            axes[row][col].set_title(f"{label}\n{score:.3f}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def embedding_map(
    out: str | Path,
    embeddings: np.ndarray,
    labels: Sequence[int],
    class_names: Sequence[str],
    method: str = "tsne",
    title: str = "",
    seed: int = 0,
) -> None:
    """Scatter the embeddings in 2-D (t-SNE or PCA), one colour per class."""
    if method == "tsne" and len(embeddings) > 5:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(2.0, (len(embeddings) - 1) / 3))
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            embeddings
        )
    else:
        from sklearn.decomposition import PCA

        points = PCA(2, random_state=seed).fit_transform(embeddings)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(10, 8))
    cmap = plt.get_cmap("tab20" if len(class_names) <= 20 else "gist_ncar")
    for index, name in enumerate(class_names):
        mask = labels == index
        if mask.any():
            color = cmap(index / max(1, len(class_names) - (0 if len(class_names) <= 20 else -1)))
            ax.scatter(points[mask, 0], points[mask, 1], s=10, color=color, label=name)
            cx, cy = points[mask].mean(0)
            ax.annotate(name, (cx, cy), fontsize=6, alpha=0.8)
    if len(class_names) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(title or f"embeddings ({method.upper()})")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def threshold_curves(
    out: str | Path,
    thresholds: np.ndarray,
    curves: dict[str, dict[str, np.ndarray]],
    chosen: float,
    title: str = "",
) -> None:
    """One panel per group of ``curves`` (e.g. per number of shots): each accuracy against
    the threshold, and the chosen threshold as a vertical line."""
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), sharey=True,
                             squeeze=False)
    for ax, (name, group) in zip(axes[0], curves.items(), strict=True):
        for label, values in group.items():
            ax.plot(thresholds, values, label=label, lw=2 if "balanced" in label else 1.2)
        ax.axvline(chosen, color="black", ls="--", lw=1, label=f"threshold {chosen:g}")
        ax.set_title(name)
        ax.set_xlabel("threshold on the standardised score")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of queries")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
