"""Back up the whole gallery as one file, and restore it into an empty data directory.

    python -m app.backup export gallery.tar                 # DATA_DIR from the environment
    python -m app.backup import gallery.tar --data-dir /srv/new-data

The file is a tar archive: ``manifest.json`` (items with their labels and hashes,
tombstones), one ``.npz`` of embeddings per checkpoint fingerprint, and every photo, the
gallery folder's included. A service started on the restored directory with the same
checkpoint searches at once and embeds nothing again; with another checkpoint it re-embeds
from the restored photos, as after any checkpoint change. Export reads the database in one
transaction, so it may run beside a live service.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np

from app.core.config import Settings
from app.stores.base import Item
from app.stores.sqlite import Snapshot, SqliteDatabase
from models.atomic import atomic_write

FORMAT, VERSION = "fewshot-gallery-backup", 1


class BackupError(ValueError):
    """The backup file is not one of ours, or does not fit its own manifest."""


def export_gallery(data_dir: Path, out: Path) -> dict[str, int]:
    store = SqliteDatabase(data_dir)
    try:
        snapshot = store.snapshot()
        photos = {item.sha256: store.image_path(item) for item in snapshot.items}
    finally:
        store.close()
    missing = [item.id for item in snapshot.items if not photos[item.sha256].is_file()]
    if missing:
        raise BackupError(f"the photos of items {missing[:10]} are missing from "
                          f"{data_dir} or the gallery folder: a backup would lose them")
    fingerprints = sorted({f for _, f, _ in snapshot.embeddings})
    manifest = {
        "format": FORMAT, "version": VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "items": [dataclasses.asdict(item) for item in snapshot.items],
        "tombstones": snapshot.tombstones,
        "embeddings": [{"fingerprint": f, "file": f"embeddings/{n}.npz"}
                       for n, f in enumerate(fingerprints)],
    }
    with atomic_write(out, suffix=".tar") as tmp, tarfile.open(tmp, "w") as tar:
        _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=1).encode())
        for entry in manifest["embeddings"]:
            rows = [(i, v) for i, f, v in snapshot.embeddings if f == entry["fingerprint"]]
            buffer = io.BytesIO()
            np.savez(buffer, ids=np.array([i for i, _ in rows], np.int64),
                     vectors=np.stack([v for _, v in rows]))
            _add_bytes(tar, entry["file"], buffer.getvalue())
        for sha, path in photos.items():
            tar.add(path, arcname=f"photos/{sha}", recursive=False)
    return {"items": len(snapshot.items), "photos": len(photos),
            "checkpoints": len(fingerprints), "bytes": out.stat().st_size}


def import_gallery(backup: Path, data_dir: Path) -> dict[str, int]:
    """Restore ``backup`` into ``data_dir``, which must hold no gallery yet. Gallery-folder
    photos still present on this machine (same path, same bytes) stay referenced there;
    the others are stored in the data directory as enrolled photos."""
    with tarfile.open(backup, "r") as tar:
        manifest = json.loads(_read(tar, "manifest.json"))
        if manifest.get("format") != FORMAT or int(manifest.get("version", 0)) > VERSION:
            raise BackupError(f"{backup} is not a gallery backup this version can read")
        store = SqliteDatabase(data_dir)
        try:
            if store.all_items():
                raise BackupError(f"{data_dir} already holds a gallery: import into an empty "
                                  "data directory")
            items, moved = [], 0
            for raw in manifest["items"]:
                item = Item(**raw)
                data = _read(tar, f"photos/{item.sha256}")
                if hashlib.sha256(data).hexdigest() != item.sha256:
                    raise BackupError(f"photo of item {item.id} does not match its hash")
                if not (item.source == "gallery" and _same_file(Path(item.path), item.sha256)):
                    extension = Path(item.path).suffix or ".img"
                    path, _ = store.save_image(data, item.sha256, extension)
                    moved += item.source == "gallery"
                    item = dataclasses.replace(item, source="enrolled", path=path)
                items.append(item)
            embeddings = []
            for entry in manifest["embeddings"]:
                with np.load(io.BytesIO(_read(tar, entry["file"]))) as stored:
                    embeddings += [(int(i), entry["fingerprint"], v.astype(np.float32))
                                   for i, v in zip(stored["ids"], stored["vectors"],
                                                   strict=True)]
            store.restore(Snapshot(items, embeddings,
                                   [tuple(t) for t in manifest["tombstones"]]))
        finally:
            store.close()
    return {"items": len(items), "embeddings": len(embeddings),
            "gallery_photos_stored": moved}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise BackupError(f"the backup has no {name}") from None
    handle = tar.extractfile(member) if member.isfile() else None
    if handle is None:
        raise BackupError(f"{name} in the backup is not a file")
    return handle.read()


def _same_file(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(prog="python -m app.backup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("file", type=Path, help="the backup file to write or read")
    p.add_argument("--data-dir", type=Path, help="the service's DATA_DIR (default: settings)")
    args = p.parse_args(argv)
    data_dir = args.data_dir or Settings().data_dir
    try:
        if args.action == "export":
            counts = export_gallery(data_dir, args.file)
        else:
            counts = import_gallery(args.file, data_dir)
    except (BackupError, ValueError, KeyError, TypeError, OSError, tarfile.TarError) as exc:
        raise SystemExit(f"{args.action} failed: {exc}") from None
    print(f"{args.action}ed {args.file} ({data_dir}): "
          + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    main()
