"""Networks: the stochastic generator G(z, y, q), the spread network V, the ResNet critic, the frozen
VGG19 features, their noise and the registry that builds them by name.

Every module of this package is imported here, so that each architecture it registers is known
wherever a config or a model file names it: a new architecture is one new module, listed nowhere.
"""

import importlib
import pkgutil

from .critic import Critic, CriticConfig
from ..errors import MissingWeightsError
from .features import VGGFeatures
from .generator import PRESETS, Generator, GeneratorConfig, build_generator
from .noise import seeded_noise
from .registry import build, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "PRESETS",
    "Critic",
    "CriticConfig",
    "Generator",
    "GeneratorConfig",
    "MissingWeightsError",
    "VGGFeatures",
    "build",
    "build_generator",
    "register",
    "seeded_noise",
]
