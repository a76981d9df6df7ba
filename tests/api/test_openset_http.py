"""The open-set protocol of ``training.openset`` through the real service: known kinds in the
gallery, new kinds enrolled from one photo over HTTP, photos of kinds nobody enrolled; the
service's answers are the offline rule's, query for query, on real grocery photos."""

import numpy as np
import pytest

from models.base import DEFAULT_CHECKPOINT
from models.checkpoint import load_checkpoint
from models.decision import shot_calibration
from tests.api.helpers import running, upload
from training.openset import best_answers, classify, default_heldout

pytestmark = pytest.mark.slow  # embeds a few hundred real photos

PER_CLASS = 6  # gallery photos per known class


def test_one_shot_kinds_and_unknowns_through_http_match_the_offline_rule(grocery, tmp_path):
    classes = sorted(d.name for d in (grocery / "train").iterdir())
    heldout = default_heldout(classes)
    new, unknown = heldout[:4], heldout[4:8]
    gallery = tmp_path / "gallery"
    for name in (c for c in classes if c not in heldout):
        (gallery / name).mkdir(parents=True)
        for photo in sorted((grocery / "train" / name).glob("*.jpg"))[:PER_CLASS]:
            (gallery / name / photo.name).symlink_to(photo)
    calibration = shot_calibration(load_checkpoint(DEFAULT_CHECKPOINT).meta.extra)
    assert calibration is not None  # the shipped checkpoint is calibrated
    queries = [(name, path.read_bytes()) for name in new + unknown
               for path in sorted((grocery / "test" / name).glob("*.jpg"))[:4]]
    with running(DEFAULT_CHECKPOINT, tmp_path / "data", gallery) as client:
        for name in new:  # one shot each, enrolled as a user would
            shot = sorted((grocery / "train" / name).glob("*.jpg"))[0].read_bytes()
            assert client.post("/enroll", files=upload(shot),
                               data={"label": name}).status_code == 201
        answers = [client.post("/classify", files=upload(data)).json() for _, data in queries]
        # The offline rule on the service's own vectors and label statistics.
        service = client.app.state.service
        stats = service.gallery.store.label_stats()
        vectors = np.stack([service.embedding.embed_inputs(
            [service.embedding.decode(data)[1]])[0] for _, data in queries])
    assert dict(zip(stats.labels, stats.counts.tolist(), strict=True))[new[0]] == 1
    best, score, offline = classify(vectors, stats.sums, stats.counts, stats.labels,
                                    calibration, calibration.threshold)
    assert [a["rule"] for a in answers] == ["shot-calibrated"] * len(queries)
    assert [a["label"] for a in answers] == list(offline)
    assert [a["closest_label"] for a in answers] == list(best)
    np.testing.assert_allclose([a["score"] for a in answers], score, atol=1e-4)
    offline_answers = best_answers(vectors, stats.sums, stats.counts, stats.labels, calibration)
    np.testing.assert_allclose([a["margin"] for a in answers], offline_answers.margin,
                               atol=1e-4)
    np.testing.assert_allclose([a["confidence"] for a in answers],
                               calibration.confidence(offline_answers.score,
                                                      offline_answers.margin), atol=1e-4)
    for answer in answers:
        assert answer["threshold"] == calibration.threshold
        assert 0.0 < answer["confidence"] < 1.0
        assert answer["candidates"][0]["photos"] >= 1
    # The rule names one-shot kinds that plain cosines give to the many-photo labels.
    truth = np.array([name for name, _ in queries], dtype=object)
    is_new = np.isin(truth, new)
    cosine_best, _, _ = classify(vectors, stats.sums, stats.counts, stats.labels, None, 0.0)
    assert np.mean(best[is_new] == truth[is_new]) > np.mean(cosine_best[is_new] == truth[is_new])
