"""Train the triplet-loss Siamese encoder on an image-folder dataset.

    python -m training.train --data ../shared/data/grocery --epochs 15 --out runs/encoder.pt

One encoder embeds anchor, positive and negative alike (shared weights). Triplets are mined
online inside P x K batches (batch-hard or semi-hard) or drawn at random offline.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.backbones import DEFAULT_BACKBONE, backbone_stages
from models.base import cpu_fields
from models.checkpoint import CheckpointMeta, atomic_torch_save, save_checkpoint
from models.encoder import Encoder, EncoderConfig, build_encoder
from models.preprocessing import Preprocessing, eval_transform, train_transform
from models.runtimes.eager import TorchEmbedder, resolve_device
from training.data import (
    ImageDataset,
    ImageFolder,
    Sample,
    class_list,
    scan_image_folder,
    split_dir,
)
from training.embedding import default_workers, embed_folder
from training.losses import (
    ProxyAnchorLoss,
    mined_triplet_loss,
    multi_similarity_loss,
    similarity_distillation_loss,
)
from training.metrics import retrieval_metrics
from training.miners import batch_hard, random_triplets, semi_hard
from training.samplers import PKSampler

log = logging.getLogger("training.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path,
                   help="<root>/<class>/* or <root>/{train,val,test}/<class>/*")
    p.add_argument("--out", type=Path, default=Path("runs/encoder.pt"),
                   help="best checkpoint path; <out>.last holds the state for --resume")
    p.add_argument("--classes", type=class_list, help="comma-separated subset of classes")
    p.add_argument("--exclude-classes", type=class_list, default=[],
                   help="comma-separated classes to hold out")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--p", type=int, default=16, help="classes per batch")
    p.add_argument("--k", type=int, default=4, help="images per class per batch")
    p.add_argument("--loss", choices=["triplet", "multi-similarity", "proxy-anchor"],
                   default="triplet",
                   help="multi-similarity weighs every informative pair of a P x K batch; "
                        "proxy-anchor learns one proxy per class, started at the class means "
                        "(--mining and --margin are for triplet)")
    p.add_argument("--proxy-lr", type=float, default=1e-2,
                   help="learning rate of the proxy-anchor loss's proxies")
    p.add_argument("--mining", choices=["batch-hard", "semi-hard", "offline"],
                   default="batch-hard")
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the projection head")
    p.add_argument("--backbone-lr-mult", type=float, default=0.1,
                   help="backbone learning rate = lr x this")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--freeze-stages", type=int, default=3,
                   help="freeze this many backbone stages from the input side (stem counts)")
    p.add_argument("--head-init", choices=["pca", "random"], default="pca",
                   help="pca: start the projection as the PCA of the ImageNet features")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="weight of the similarity-preserving loss toward the ImageNet features")
    p.add_argument("--augment", type=float, default=1.0, help="augmentation strength, 0 = none")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over the data")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train images held out when the data has no val split")
    p.add_argument("--val-gallery-per-class", type=int, default=8,
                   help="training photos per class searched by the val queries")
    p.add_argument("--half", action="store_true", help="store the checkpoint weights as fp16")
    p.add_argument("--resume", action="store_true", help="continue from <out>.last")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone init (tests)")
    return p.parse_args(argv)


def load_splits(args: argparse.Namespace) -> tuple[ImageFolder, ImageFolder | None]:
    train_root = split_dir(args.data, "train")
    train = scan_image_folder(train_root, include=args.classes, exclude=args.exclude_classes)
    val_root = split_dir(args.data, "val")
    if val_root is not None:
        seen = [c for c in train.classes if (val_root / c).is_dir()]
        val = scan_image_folder(val_root, include=seen) if seen else None
        # Labels must mean the same class in both folders.
        if val is not None:
            remap = {i: train.classes.index(c) for i, c in enumerate(val.classes)}
            val = ImageFolder(val.root, train.classes,
                              [Sample(s.path, remap[s.label]) for s in val.samples])
        return train, val
    return carve_validation(train, args.val_fraction, args.seed)


def carve_validation(
    folder: ImageFolder, fraction: float, seed: int
) -> tuple[ImageFolder, ImageFolder | None]:
    """Hold out ``fraction`` of each class (at least 2, from classes with 6+ images) as a
    validation set, so that every validation image has a same-class neighbour."""
    if fraction <= 0:
        return folder, None
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(folder.classes)):
        items = [s for s in folder.samples if s.label == label]
        rng.shuffle(items)
        n_val = max(2, round(len(items) * fraction)) if len(items) >= 6 else 0
        val += items[:n_val]
        train += items[n_val:]
    return (ImageFolder(folder.root, folder.classes, train),
            ImageFolder(folder.root, folder.classes, val) if val else None)


class TripletDataset(Dataset):
    """Offline mode: fixed random (anchor, positive, negative) triples of images."""

    def __init__(self, folder: ImageFolder, transform, triplets: list[tuple[int, int, int]]):
        self.images = ImageDataset(folder, transform)
        self.triplets = triplets

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.stack([self.images[i][0] for i in self.triplets[index]])


def freeze_stages(backbone: nn.Module, count: int) -> list[nn.Module]:
    frozen = backbone_stages(backbone)[:count]
    for stage in frozen:
        stage.requires_grad_(False)
    return frozen


@torch.no_grad()
def backbone_features(encoder: Encoder, folder: ImageFolder, pre: Preprocessing,
                      device: torch.device, workers: int) -> torch.Tensor:
    """The backbone's unnormalised features of every photo of ``folder`` (CPU, float32),
    computed once for both the PCA head and the proxies' start."""
    features_only = Encoder(encoder.backbone, encoder.feature_dim, None)
    embedder = TorchEmbedder(features_only, pre, device)
    # Unnormalised features: the PCA must see the backbone's real geometry.
    features_only.forward = features_only.features  # type: ignore[method-assign]
    return torch.from_numpy(embed_folder(embedder, folder, workers=workers,
                                         desc="ImageNet features"))


@torch.no_grad()
def init_head_pca(head: nn.Module, feats: torch.Tensor) -> None:
    """Set the projection to the top principal directions of the ImageNet features, so
    training starts from the pretrained geometry instead of a random projection."""
    assert isinstance(head, nn.Linear)
    mean = feats.mean(0)
    _, _, v = torch.linalg.svd(feats - mean, full_matrices=False)
    components = v[: head.out_features]
    if components.shape[0] < head.out_features:  # fewer images than dimensions
        extra = torch.randn(head.out_features - components.shape[0], feats.shape[1])
        components = torch.cat([components, torch.nn.functional.normalize(extra, dim=1) * 0.01])
    head.weight.copy_(components.to(head.weight))
    head.bias.copy_((-components @ mean).to(head.bias))


@torch.no_grad()
def class_mean_embeddings(head: nn.Module, feats: torch.Tensor, labels: list[int],
                          num_classes: int) -> torch.Tensor:
    """Each class's mean embedding (unit length) under ``head`` as it is now: the
    encoder's own embedding of each photo, from its backbone features."""
    weight = next(head.parameters())
    embeddings = torch.nn.functional.normalize(head(feats.to(weight)).float().cpu(), dim=1)
    sums = torch.zeros(num_classes, embeddings.shape[1])
    sums.index_add_(0, torch.as_tensor(labels), embeddings)
    return torch.nn.functional.normalize(sums, dim=1)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means fp32. On CPUs without native bf16 (no AVX512-BF16/AMX), bf16 autocast is
    emulated and ~10x slower than fp32 (measured on AVX2 cores), so auto keeps fp32 there."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    flags = set(cpu_fields().get("flags", "").split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def gallery_sample(folder: ImageFolder, per_class: int) -> ImageFolder:
    """The first ``per_class`` images of each class: a small validation gallery."""
    taken: dict[int, int] = {}
    samples = []
    for sample in folder.samples:
        if taken.get(sample.label, 0) < per_class:
            taken[sample.label] = taken.get(sample.label, 0) + 1
            samples.append(sample)
    return ImageFolder(folder.root, folder.classes, samples)


def validate(encoder: Encoder, val: ImageFolder | None, gallery: ImageFolder | None,
             pre: Preprocessing, device: torch.device, workers: int) -> dict[str, float]:
    """Validation queries retrieved against a gallery of training photos (the service's
    situation), or leave-one-out within the validation set when there is no gallery."""
    if val is None or len(val) < 2:
        return {}
    embedder = TorchEmbedder(encoder, pre, device)
    embeddings = embed_folder(embedder, val, workers=workers, desc="validating")
    try:
        if gallery is None:
            return retrieval_metrics(embeddings, np.asarray(val.labels))
        g = embed_folder(embedder, gallery, workers=workers, desc="validation gallery")
        return retrieval_metrics(embeddings, np.asarray(val.labels), g,
                                 np.asarray(gallery.labels))
    except ValueError:
        return {}


def make_loader(args: argparse.Namespace, train: ImageFolder,
                augment) -> tuple[DataLoader, PKSampler | None]:
    """Offline: fixed random triplets, shuffled. Online: P x K batches for the miners."""
    if args.mining == "offline":
        count = args.steps_per_epoch * args.p * args.k // 3 or len(train)
        triplets = random_triplets(train.labels, count, torch.Generator().manual_seed(args.seed))
        loader = DataLoader(TripletDataset(train, augment, triplets), shuffle=True,
                            batch_size=max(1, args.p * args.k // 3), num_workers=args.workers,
                            drop_last=True)
        return loader, None
    sampler = PKSampler(train.labels, args.p, args.k, seed=args.seed)
    if args.steps_per_epoch:
        sampler.num_batches = args.steps_per_epoch
    return DataLoader(ImageDataset(train, augment), batch_sampler=sampler,
                      num_workers=args.workers), sampler


@dataclass
class Schedule:
    """Learning rates by step: each group's base rate times :func:`lr_factor`."""

    base_lrs: list[float]
    total_steps: int
    warmup_steps: int

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * lr_factor(step, self.total_steps, self.warmup_steps)


def train_one_epoch(encoder: Encoder, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, schedule: Schedule, step: int,
                    args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None,
                    teacher: Encoder | None, proxy_loss: ProxyAnchorLoss | None,
                    desc: str) -> tuple[dict[str, float], int]:
    """One pass over ``loader``: mine triplets (or weigh all pairs, or score against the
    proxies) in each batch, step. Returns the epoch's mean loss, share of active triplets
    (anchors that kept a pair; photos within the proxy margin) and distillation loss, and
    the next step number."""
    sums = {"loss": 0.0, "active": 0.0, "distill": 0.0}
    bar = tqdm(loader, desc=desc, unit="batch")
    for batch in bar:
        if args.mining == "offline":
            images = batch.transpose(0, 1).reshape(-1, *batch.shape[2:])  # [A; P; N]
            n = batch.shape[0]
            index = torch.arange(n, device=device)
            mined = (index, index + n, index + 2 * n)
        else:
            images, labels = batch
            labels = labels.to(device)
        images = images.to(device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        schedule.apply(optimizer, step)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            embeddings = encoder(images)
            teacher_embeddings = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_embeddings = teacher(images)
        if proxy_loss is not None:
            loss, active = proxy_loss(embeddings, labels)
        elif args.loss == "multi-similarity":
            loss, active = multi_similarity_loss(embeddings, labels)
        else:
            if args.mining == "batch-hard":
                mined = batch_hard(embeddings, labels)
            elif args.mining == "semi-hard":
                mined = semi_hard(embeddings, labels, args.margin)
            loss, active = mined_triplet_loss(embeddings, mined, args.margin)
        if teacher_embeddings is not None:
            distill = similarity_distillation_loss(embeddings, teacher_embeddings)
            loss = loss + args.distill_weight * distill
            sums["distill"] += float(distill.detach())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(encoder.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        sums["loss"] += float(loss.detach())
        sums["active"] += active
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", active=f"{active:.2f}")
    return {k: v / max(1, len(loader)) for k, v in sums.items()}, step


@dataclass
class ResumeState:
    """What ``--resume`` continues from: saved after every epoch to ``<out>.last``."""

    epoch: int = 0  # epochs done
    best: float = -1.0  # best validation score so far
    history: list[dict] = field(default_factory=list)
    initial_head: dict[str, torch.Tensor] = field(default_factory=dict)

    def save(self, path: Path, encoder: Encoder, optimizer: torch.optim.Optimizer,
             loss_module: nn.Module | None = None) -> None:
        loss_state = loss_module.state_dict() if loss_module is not None else {}
        atomic_torch_save({"model": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                           "loss": loss_state,
                           "epoch": self.epoch, "best": self.best, "history": self.history,
                           "rng": torch.get_rng_state(), "initial_head": self.initial_head},
                          path)

    @classmethod
    def load(cls, path: Path, encoder: Encoder, optimizer: torch.optim.Optimizer,
             device: torch.device, loss_module: nn.Module | None = None) -> ResumeState:
        """Restore the weights, the loss's own parameters, the optimizer and torch's RNG."""
        state = torch.load(path, map_location=device, weights_only=True)
        encoder.load_state_dict(state["model"])
        if loss_module is not None:
            if not state.get("loss"):
                raise SystemExit(f"{path} was not saved by a run with this loss's own "
                                 "parameters (e.g. proxy-anchor's proxies): resume it with "
                                 "the --loss it was started with")
            loss_module.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        return cls(state["epoch"], state["best"], state["history"], state["initial_head"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.loss != "triplet" and args.mining == "offline":
        raise SystemExit(f"--loss {args.loss} needs P x K batches, not --mining offline")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    pre = Preprocessing(image_size=args.image_size)
    train, val = load_splits(args)
    # A split layout's val photos come from other sessions than train: search them against
    # train photos. A carved-out val shares sessions with train, so it stays leave-one-out.
    val_gallery = (gallery_sample(train, args.val_gallery_per_class)
                   if val is not None and split_dir(args.data, "val") is not None else None)
    log.info("train: %d images in %d classes; val: %d images; device %s",
             len(train), len(train.classes), len(val) if val else 0, device)

    encoder = build_encoder(EncoderConfig(args.backbone, args.embedding_dim),
                            pretrained=not args.no_pretrained).to(device)
    last_path = args.out.with_name(args.out.name + ".last")
    # The starting point's features, where the PCA head or the proxies start from them.
    feats = (backbone_features(encoder, train, pre, device, args.workers)
             if not args.resume and (args.head_init == "pca" or args.loss == "proxy-anchor")
             else None)
    if args.head_init == "pca" and feats is not None:
        init_head_pca(encoder.head, feats)
    # Kept in the checkpoint so the fine-tuned weights can be interpolated back toward the
    # starting point (python -m training.interpolate).
    initial_head = {k: v.detach().cpu().clone() for k, v in encoder.head.state_dict().items()}
    # The teacher is the encoder as it starts (ImageNet backbone + PCA head), frozen.
    teacher = None
    if args.distill_weight > 0:
        teacher = copy.deepcopy(encoder).eval().requires_grad_(False)
    proxy_loss = None
    if args.loss == "proxy-anchor":
        start = None if feats is None else class_mean_embeddings(
            encoder.head, feats, train.labels, len(train.classes))
        proxy_loss = ProxyAnchorLoss(len(train.classes), args.embedding_dim, init=start)
        proxy_loss = proxy_loss.to(device)
    frozen = freeze_stages(encoder.backbone, args.freeze_stages)
    # channels_last is ~2x faster for these convolutions on CPU and GPU alike.
    encoder = encoder.to(memory_format=torch.channels_last)

    backbone_params = [p for p in encoder.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": encoder.head.parameters(), "lr": args.lr},
         {"params": backbone_params, "lr": args.lr * args.backbone_lr_mult}],
        weight_decay=args.weight_decay,
    )
    if proxy_loss is not None:
        optimizer.add_param_group({"params": proxy_loss.parameters(), "lr": args.proxy_lr,
                                   "weight_decay": 0.0})
    augment = train_transform(pre, args.augment) if args.augment > 0 else eval_transform(pre)
    loader, sampler = make_loader(args, train, augment)
    schedule = Schedule([group["lr"] for group in optimizer.param_groups],
                        len(loader) * args.epochs, round(args.warmup_epochs * len(loader)))
    dtype = autocast_dtype(args.precision, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16 and device.type == "cuda")

    state = ResumeState(initial_head=initial_head)
    if args.resume:
        state = ResumeState.load(last_path, encoder, optimizer, device, proxy_loss)
        log.info("resumed from %s at epoch %d", last_path, state.epoch)

    started = time.time()
    step = state.epoch * len(loader)
    for epoch in range(state.epoch, args.epochs):
        encoder.train()
        for stage in frozen:
            stage.eval()  # frozen BatchNorm keeps its ImageNet statistics
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch_stats, step = train_one_epoch(encoder, loader, optimizer, scaler, schedule, step,
                                            args, device, dtype, teacher, proxy_loss,
                                            desc=f"epoch {epoch + 1}/{args.epochs}")
        epoch_stats.update(epoch=epoch + 1, seconds=round(time.time() - started, 1))
        val_metrics = validate(encoder, val, val_gallery, pre, device, args.workers)
        epoch_stats.update({f"val_{k}": v for k, v in val_metrics.items()})
        state.history.append(epoch_stats)
        log.info("epoch %d: loss %.4f, active %.2f, val recall@1 %s", epoch + 1,
                 epoch_stats["loss"], epoch_stats["active"], val_metrics.get("recall@1", "n/a"))
        # No usable validation data: keep the latest epoch.
        score = val_metrics["recall@1"] if val_metrics else float(epoch + 1)
        if score > state.best:
            state.best = score
            meta = CheckpointMeta(
                encoder=EncoderConfig(args.backbone, args.embedding_dim), preprocessing=pre,
                class_names=train.classes, train_args=_jsonable(vars(args)),
                metrics={"best_epoch": epoch + 1, "val": val_metrics, "history": state.history,
                         "train_images": len(train)},
                extra={"initial_head": state.initial_head,
                       "pretrained_backbone": not args.no_pretrained},
            )
            save_checkpoint(args.out, encoder, meta, half=args.half)
            log.info("saved best checkpoint to %s", args.out)
        state.epoch = epoch + 1
        state.save(last_path, encoder, optimizer, proxy_loss)
    log.info("done in %.0f s; best checkpoint %s", time.time() - started, args.out)
    return {"history": state.history, "best": state.best, "encoder": encoder}


def _jsonable(values: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


if __name__ == "__main__":
    main()
