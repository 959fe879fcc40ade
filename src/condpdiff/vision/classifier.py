"""A small CNN trained on real Fashion-MNIST: it labels generated images, so "the base model draws a
sneaker when asked for one" is a measured rate, not a look at a grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 16, 16)
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 8, 8)
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1))  # (B, 64, 1, 1)
        self.head = nn.Linear(64, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int,
                     batch_size: int = 64, lr: float = 2e-3) -> Classifier:
    """Adam on batches drawn with replacement from images (N, 1, H, W) in [-1, 1]."""
    torch.manual_seed(seed)
    model, generator = Classifier(int(labels.max()) + 1), torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.inference_mode()
def predict(model: Classifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, images) == labels).float().mean().item()


def recognition(model: Classifier, samples: torch.Tensor, asked: torch.Tensor, classes: int) -> dict:
    """How often samples drawn for the classes `asked` are labelled as those classes: overall, per class
    (None for a class never asked: JSON has no NaN), and the confusion matrix (row: the class asked for,
    column: the class labelled)."""
    predicted = predict(model, samples)
    recognised = (predicted == asked).float()
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((asked, predicted), torch.ones_like(asked), accumulate=True)
    return {"recognised": recognised.mean().item(),
            "recognised_per_class": [recognised[asked == c].mean().item() if (asked == c).any() else None
                                     for c in range(classes)],
            "confusion_asked_by_labelled": confusion.tolist()}
