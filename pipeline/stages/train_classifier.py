"""Stage `train_classifier`: fit the domain classifier (`pipeline.models.classifier`, a small CNN) on
the real training split; the domain feature extractor of evaluation.

Its penultimate layer gives classifier-FID/KID, its logits classifier-IS and the conditional
accuracy of samples (the share the classifier assigns to the class that was asked for).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..idx import load_split, read_classes
from ..io import atomic_dir, stage_paths, write_json
from ..models.classifier import DigitClassifier, predict, to_input
from ..params import Params
from ..progress import log, track

PARAMS = ("profile", "threads", "dataset", "image", "train_classifier")
INPUTS = {"raw": "data/raw/{dataset}"}
OUTPUTS = {"classifier": "data/classifier", "metrics": "reports/classifier.json"}


def _shifted(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to 2 pixels: cheap augmentation that buys a few tenths of a percent."""
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def run(p: Params, device_name: str = "auto", **paths: str | Path) -> dict:
    paths = stage_paths(INPUTS, OUTPUTS, paths, dataset=p.dataset)
    settings = p.train_classifier
    device = resolve_device(device_name, p.profile)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    train_images, train_labels = load_split(paths.raw, "train")
    train_images, train_labels = train_images[:settings.limit], train_labels[:settings.limit]
    test_images, test_labels = load_split(paths.raw, "test")
    n_classes = len(read_classes(paths.raw))
    channels = 3 if train_images.ndim == 4 else 1
    model = DigitClassifier(n_classes, settings.width, channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps_per_epoch = max(1, len(train_images) // settings.batch_size)  # a set smaller than a batch: one batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.epochs * steps_per_epoch)
    labels = torch.as_tensor(train_labels.astype(np.int64))
    start = time.perf_counter()
    model.train()
    for step in track(range(settings.epochs * steps_per_epoch), "train_classifier"):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(train_images), generator=generator)
        rows = order[(step % steps_per_epoch) * settings.batch_size:][:settings.batch_size]
        x = _shifted(to_input(train_images[rows.numpy()], device), generator)
        loss = F.cross_entropy(model(x)[1], labels[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    accuracy = float((predict(model, test_images, device) == test_labels).mean())
    log(f"classifier test accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f}s)")
    with atomic_dir(paths.classifier) as tmp:
        torch.save({"weights": model.state_dict(), "n_classes": n_classes, "width": settings.width,
                    "channels": channels}, tmp / "classifier.pt")
    metrics = {"dataset": p.dataset, "test_accuracy": accuracy, "epochs": settings.epochs,
               "train_images": len(train_images)}
    write_json(paths.metrics, metrics)
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
