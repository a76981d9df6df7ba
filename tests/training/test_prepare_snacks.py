from pathlib import Path

import datasets
import pytest

from tests.helpers import COLOURS, synthetic_image
from training import prepare_snacks


def make_hub_style_dataset(root: Path) -> Path:
    """The snacks repository's format: parquet shards per split, an Image column and a
    ClassLabel column."""
    names = ["apple", "banana", "cake"]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    for split, count in [("train", 4), ("validation", 2), ("test", 2)]:
        rows = {"image": [], "label": []}
        for label, colour in enumerate(["red", "yellow", "blue"]):
            for i in range(count):
                rows["image"].append(synthetic_image(COLOURS[colour], i, 40))
                rows["label"].append(label)
        ds = datasets.Dataset.from_dict(rows, features=features)
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def test_prepare_writes_the_image_folder_layout(tmp_path):
    source = make_hub_style_dataset(tmp_path / "hub")
    out = tmp_path / "snacks"
    written = prepare_snacks.main(["--source", str(source), "--out", str(out),
                                   "--classes", "apple,banana"])
    assert written == {"train": 8, "val": 4, "test": 4}
    assert sorted(p.name for p in (out / "train").iterdir()) == ["apple", "banana"]
    assert len(list((out / "val" / "banana").glob("*.jpg"))) == 2
    assert not (out / "train" / "cake").exists()


def test_prepare_refuses_unknown_classes_and_unreachable_sources(tmp_path):
    source = make_hub_style_dataset(tmp_path / "hub")
    with pytest.raises(SystemExit, match="unknown classes"):
        prepare_snacks.main(["--source", str(source), "--out", str(tmp_path / "o"),
                             "--classes", "pizza"])
    with pytest.raises(SystemExit, match="internet"):
        prepare_snacks.main(["--source", "Matthijs/snacks", "--out", str(tmp_path / "o")])
