"""Factories a user might point `fopt export --module` at (imported by name in the tests)."""

import torch.nn as nn


def small_net(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def not_a_module(num_classes: int):
    return {"num_classes": num_classes}
