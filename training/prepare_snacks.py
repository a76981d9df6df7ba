"""Download the Hugging Face snacks dataset and write it as an image-folder tree.

    python -m training.prepare_snacks --out data/snacks [--classes apple,banana]

writes ``OUT/{train,validation->val,test}/<class>/<index>.jpg``, the layout that
``training.train``, ``training.evaluate`` and the service's gallery read. ``--source`` may
name another dataset on the hub or a local folder in the same format (parquet files with an
``image`` and a class-label ``label`` column), which is how the tests run it offline.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from models.preprocessing import to_rgb
from training.data import class_list

log = logging.getLogger("training.prepare_snacks")
SNACKS = "Matthijs/snacks"
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def prepare(source: str, out: Path, classes: list[str] | None = None,
            quality: int = 92) -> dict[str, int]:
    """Write every split of ``source`` under ``out``; returns images written per split."""
    try:
        import datasets
    except ImportError:
        raise SystemExit("this needs the 'datasets' package: pip install datasets") from None
    try:
        dataset = datasets.load_dataset(source)
    except Exception as exc:  # network, auth or format errors all end the same way here
        raise SystemExit(
            f"could not load dataset {source!r}: {exc}\n"
            "Downloading from Hugging Face needs internet access."
        ) from None
    written: dict[str, int] = {}
    for split, data in dataset.items():
        names = data.features["label"].names
        wanted = set(classes) if classes else set(names)
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"unknown classes {sorted(unknown)}; the dataset has {names}")
        target = out / SPLIT_NAMES.get(split, split)
        count = 0
        for index, row in enumerate(tqdm(data, desc=f"writing {split}", unit="img")):
            name = names[row["label"]]
            if name not in wanted:
                continue
            folder = target / name
            folder.mkdir(parents=True, exist_ok=True)
            to_rgb(row["image"]).save(folder / f"{index:05d}.jpg", quality=quality)
            count += 1
        written[SPLIT_NAMES.get(split, split)] = count
        log.info("%s: %d images in %s", split, count, target)
    return written


def main(argv: list[str] | None = None) -> dict[str, int]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m training.prepare_snacks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", type=class_list, help="comma-separated subset, e.g. apple,banana")
    p.add_argument("--source", default=SNACKS, help="hub dataset id or local folder")
    args = p.parse_args(argv)
    return prepare(args.source, args.out, args.classes)


if __name__ == "__main__":
    main()
