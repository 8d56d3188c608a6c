"""The domain classifier: a small CNN whose penultimate layer gives classifier-FID/KID, whose
logits give classifier-IS and the conditional accuracy of samples. The train_classifier stage
fits it; the metrics load it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import InputError


class DigitClassifier(nn.Module):
    """Two conv blocks and a 128-d penultimate layer, for grey (channels 1) or RGB (3) images of
    any size in [0, 1]: the blocks' output is pooled to 7 x 7 (what 28 x 28 images give,
    unchanged by the pooling)."""

    def __init__(self, n_classes: int = 10, width: int = 32, channels: int = 1):
        super().__init__()
        self.channels = channels
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(2 * width * 7 * 7, 128), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(128, n_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, channels, H, W) in [0, 1] -> penultimate features (B, 128) and logits (B, n_classes)."""
        penultimate = self.features(images)
        return penultimate, self.out(self.dropout(penultimate))


def to_input(images: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [0, 1]; (B, H, W, 3) -> (B, 3, H, W)."""
    x = torch.as_tensor(np.asarray(images), device=device).float().div(255.0)
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]


@torch.no_grad()
def predict(model: DigitClassifier, images: np.ndarray, device, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    return np.concatenate([model(to_input(images[i:i + batch_size], device))[1].argmax(1).cpu().numpy()
                           for i in range(0, len(images), batch_size)]) if len(images) else np.zeros(0, int)


def load(path: str | Path, device="cpu") -> DigitClassifier:
    """The train_classifier stage's model, or InputError naming what cannot be read."""
    path = Path(path) / "classifier.pt"
    if not path.is_file():
        raise InputError(path, "does not exist", "train_classifier")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        model = DigitClassifier(state["n_classes"], state["width"], state.get("channels", 1))  # grey before colour
        model.load_state_dict(state["weights"])
    except Exception as error:  # torch raises many kinds for a damaged file
        raise InputError(path, f"is not a readable classifier ({type(error).__name__}: {error})",
                         "train_classifier") from None
    return model.to(device).eval()
