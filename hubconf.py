"""torch.hub entry point: the frozen encoder of any checkpoint this repo writes (every method), the original AMDIM
code wrote, or a seed repository published (MoCo, SwAV, CMC: seeds.py).

    enc = torch.hub.load("/path/to/amdim", "encoder", checkpoint="runs/c10/amdim_cpt.pth", source="local")
    feats = enc.features(images)      # images (B, 3, S, S), normalised as in training -> (B, enc.n_features)

S is enc.image_size (32, 64 or 128); the normalisation is the training dataset's (augment/datasets tables:
mean/std per channel of the recipe, or DIGITS' own). Features are what the evaluation classifiers and kNN read:
AMDIM's global embedding r1, or a ResNet backbone's pooled features.
"""
import torch
import torch.nn as nn

import checkpoint as checkpoints

dependencies = ["torch", "torchvision"]


class FrozenEncoder(nn.Module):
    """A trained method reduced to its feature extractor: eval mode, no gradients."""

    def __init__(self, method):
        super().__init__()
        self.method = method.eval().requires_grad_(False)
        self.hyperparams = dict(method.hyperparams)
        self.n_features = method.n_features
        self.image_size = self.hyperparams["encoder_size"]

    @torch.no_grad()
    def features(self, images):
        """images: (B, 3, image_size, image_size) float, normalised -> (B, n_features) float features."""
        return self.method.features(images)

    def forward(self, images):
        return self.features(images)

    def train(self, mode=True):
        # Stays frozen: BatchNorm keeps the checkpoint's statistics even inside a module put in train mode.
        return super().train(False)


def encoder(checkpoint, map_location="cpu"):
    """The frozen encoder of `checkpoint` (a path): see FrozenEncoder.features."""
    return FrozenEncoder(checkpoints.load_model(checkpoint, map_location))
