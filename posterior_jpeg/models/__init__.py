"""Networks: the stochastic generator G(z, y, q), the ResNet critic, and the frozen VGG19 features."""

from .critic import Critic, CriticConfig, build_critic
from ..errors import MissingWeightsError
from .features import VGGFeatures
from .generator import PRESETS, Generator, GeneratorConfig, build_generator, seeded_noise

__all__ = [
    "PRESETS",
    "Critic",
    "CriticConfig",
    "Generator",
    "GeneratorConfig",
    "MissingWeightsError",
    "VGGFeatures",
    "build_critic",
    "build_generator",
    "seeded_noise",
]
