"""Stage `train_classifier`: a small CNN on the real training split, the domain feature extractor.

Its penultimate layer gives classifier-FID/KID, its logits classifier-IS and the conditional
accuracy of samples (the share the classifier assigns to the class that was asked for).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .devices import resolve_device
from .idx import load_split
from .io import InputError, atomic_dir, write_json
from .params import Params
from .progress import log, track

PARAMS = ("profile", "dataset", "train_classifier")


class DigitClassifier(nn.Module):
    """Two conv blocks and a 128-d penultimate layer, for 28 x 28 grey images in [0, 1]."""

    def __init__(self, n_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, 128), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(128, n_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 28, 28) in [0, 1] -> penultimate features (B, 128) and logits (B, n_classes)."""
        penultimate = self.features(images)
        return penultimate, self.out(self.dropout(penultimate))


def to_input(images: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1]."""
    return torch.as_tensor(np.asarray(images), device=device).float().div(255.0)[:, None]


@torch.no_grad()
def predict(model: DigitClassifier, images: np.ndarray, device, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    return np.concatenate([model(to_input(images[i:i + batch_size], device))[1].argmax(1).cpu().numpy()
                           for i in range(0, len(images), batch_size)]) if len(images) else np.zeros(0, int)


def _shifted(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to 2 pixels: cheap augmentation that buys a few tenths of a percent."""
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def load(path: str | Path, device="cpu") -> DigitClassifier:
    """The train_classifier stage's model, or InputError naming what cannot be read."""
    path = Path(path) / "classifier.pt"
    if not path.is_file():
        raise InputError(path, "does not exist", "train_classifier")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        model = DigitClassifier(state["n_classes"], state["width"])
        model.load_state_dict(state["weights"])
    except Exception as error:  # torch raises many kinds for a damaged file
        raise InputError(path, f"is not a readable classifier ({type(error).__name__}: {error})",
                         "train_classifier") from None
    return model.to(device).eval()


def run(p: Params, device_name: str = "auto", raw_root: str | Path = "data/raw",
        out: str | Path = "data/classifier", metrics_path: str | Path = "reports/classifier.json") -> dict:
    settings = p.train_classifier
    device = resolve_device(device_name, p.profile)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    train_images, train_labels = load_split(p.dataset, "train", raw_root)
    test_images, test_labels = load_split(p.dataset, "test", raw_root)
    n_classes = int(train_labels.max()) + 1
    model = DigitClassifier(n_classes, settings.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps_per_epoch = len(train_images) // settings.batch_size
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
    with atomic_dir(out) as tmp:
        torch.save({"weights": model.state_dict(), "n_classes": n_classes, "width": settings.width}, tmp / "classifier.pt")
    metrics = {"dataset": p.dataset, "test_accuracy": accuracy, "epochs": settings.epochs}
    write_json(metrics_path, metrics)
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
