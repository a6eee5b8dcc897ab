"""Networks: the stochastic generator G(z, y, q), the ResNet critic, and the frozen VGG19 features."""

from .discriminator import Discriminator, DiscriminatorConfig, build_discriminator
from .features import MissingWeightsError, VGGFeatures, vgg19_cache_path
from .generator import PRESETS, Generator, GeneratorConfig, build_generator, seeded_generators

__all__ = [
    "PRESETS",
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "MissingWeightsError",
    "VGGFeatures",
    "build_discriminator",
    "build_generator",
    "seeded_generators",
    "vgg19_cache_path",
]
