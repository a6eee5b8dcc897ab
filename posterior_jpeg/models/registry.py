"""Networks by name: each architecture registers its module class and the dataclass of its arguments
under a name, and every network section of a training config or a model file names its architecture
in `arch:` (the other keys are that dataclass's). Training, checkpoints and the sampler build every
network through `build`, so a new architecture is one module (a class, its config, one `register`
line) and a config that names it; importing `posterior_jpeg.models` imports every module of the
package, so nothing else lists it.

What a network of each kind provides:
- "generator" (G, the detail network S, the posterior mean M): forward(y [N, 3, H, W] in [0, 1],
  qtables, noise=None) -> [N, 3, H, W], its noise drawn from the source `models.noise.noise_source`
  makes of `noise` (maps on the noise grid, so that the sampler's position-keyed noise keys them);
  its config has `noise: bool`, False for a deterministic network (a posterior mean M).
- "spread" (V): as `spread.SpreadNet`.
- "critic": forward(x, y=None) -> logits [N].
"""

import dataclasses
from dataclasses import dataclass, field

KINDS = ("generator", "spread", "critic")


@dataclass(frozen=True)
class Architecture:
    kind: str  # one of KINDS
    config: type  # dataclass of its arguments; its `arch` field's default is the architecture's name
    network: type  # the module class, built as network(config)


ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, kind: str, config: type):
    """Class decorator: the module class is architecture `name` of `kind`, its arguments `config`."""
    arch = {f.name: f.default for f in dataclasses.fields(config)}.get("arch")
    if kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r}; expected one of {', '.join(KINDS)}")
    if arch != name:
        raise ValueError(f"{config.__name__} needs a field `arch: str = {name!r}`")
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is registered already")

    def add(network: type) -> type:
        ARCHITECTURES[name] = Architecture(kind, config, network)
        return network

    return add


def names(kind: str) -> list[str]:
    """The architectures registered for `kind`, sorted."""
    return sorted(name for name, entry in ARCHITECTURES.items() if entry.kind == kind)


def config_type(kind: str, name: str) -> type | None:
    """The config dataclass of architecture `name` of `kind`, or None where none is registered."""
    entry = ARCHITECTURES.get(name) if isinstance(name, str) else None
    return entry.config if entry is not None and entry.kind == kind else None


def build(config):
    """A freshly initialised network of the architecture `config.arch` names."""
    entry = ARCHITECTURES.get(getattr(config, "arch", None))
    if entry is None or type(config) is not entry.config:
        raise ValueError(f"no architecture is registered for {config!r}")
    return entry.network(config)


def network_field(kind: str, default: type, optional: bool = False):
    """A config section that holds one network's config: the dataclass of the architecture its `arch`
    names (config.py picks it before merging), `default`'s where no `arch` is given (model files of
    format 1, written before `arch` existed, name none). optional: the section defaults to null."""
    metadata = {"network": kind, "default": default}
    return field(default=None, metadata=metadata) if optional else field(default_factory=default, metadata=metadata)
