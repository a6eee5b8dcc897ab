"""Generator, critic and VGG features: shapes, noise reproducibility, table conditioning, sizes."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision.models.vgg import cfgs, make_layers

from posterior_jpeg.errors import PosteriorJpegError
from posterior_jpeg.jpeg.tables import ijg_tables
from posterior_jpeg.jpeg import codec
from posterior_jpeg import losses
from posterior_jpeg.losses import consistency_dct, consistency_pixel
from posterior_jpeg.models import (
    PRESETS,
    Critic,
    CriticConfig,
    Generator,
    GeneratorConfig,
    VGGFeatures,
    build_generator,
    seeded_noise,
)
from posterior_jpeg.models.critic import detail_layer
from posterior_jpeg.models.generator import normalise_tables

TINY = {
    "rrdb": GeneratorConfig(trunk="rrdb", features=16, blocks=2, growth=8, table_embedding=8),
    "plain": GeneratorConfig(trunk="plain", features=16, blocks=2, table_embedding=8),
    "plain_full_res": GeneratorConfig(trunk="plain", features=16, blocks=2, table_embedding=8, full_res_features=4),
}


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tables(quality: int, batch: int = 1) -> torch.Tensor:
    return torch.from_numpy(ijg_tables(quality)).float().expand(batch, -1, -1, -1)


@pytest.fixture(params=sorted(TINY))
def tiny_generator(request):
    torch.manual_seed(0)
    return Generator(TINY[request.param]).eval()


@pytest.fixture
def images(natural_rgb):
    def make(height, width, count=1):
        arrays = [natural_rgb(height, width, seed) for seed in range(count)]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0

    return make


@pytest.mark.parametrize("size", [(37, 53), (32, 32), (48, 40), (16, 81)])
def test_any_size_in_gives_the_same_size_out(tiny_generator, images, size):
    y = images(*size, count=2)
    with torch.no_grad():
        out = tiny_generator(y, tables(20, 2), seeded_noise([0, 1]))
    assert out.shape == y.shape
    assert torch.isfinite(out).all()


def test_same_seed_same_sample_and_different_seeds_differ(tiny_generator, images):
    y = images(32, 32)
    q = tables(10)
    with torch.no_grad():
        first = tiny_generator(y, q, seeded_noise([7]))
        again = tiny_generator(y, q, seeded_noise([7]))
        other = tiny_generator(y, q, seeded_noise([8]))
        by_name = tiny_generator(y, q, noise=seeded_noise([7]))  # "generator" names G alone
    assert torch.equal(first, again) and torch.equal(first, by_name)
    assert (first - other).abs().max() > 1e-6


def test_sample_does_not_depend_on_the_rest_of_the_batch(tiny_generator, images):
    batch = images(48, 40, count=3)
    q = torch.cat([tables(10), tables(50), tables(90)])
    with torch.no_grad():
        together = tiny_generator(batch, q, seeded_noise([3, 4, 5]))
        alone = tiny_generator(batch[1:2], q[1:2], seeded_noise([4]))
        reordered = tiny_generator(batch.flip(0), q.flip(0), seeded_noise([5, 4, 3]))
    torch.testing.assert_close(together[1:2], alone)
    torch.testing.assert_close(together.flip(0), reordered)


def test_one_generator_or_global_rng_is_reproducible(tiny_generator, images):
    y = images(32, 32, count=2)
    q = tables(30, 2)
    with torch.no_grad():
        a = tiny_generator(y, q, torch.Generator().manual_seed(1))
        b = tiny_generator(y, q, torch.Generator().manual_seed(1))
        torch.manual_seed(5)
        c = tiny_generator(y, q)
        torch.manual_seed(5)
        d = tiny_generator(y, q)
    assert torch.equal(a, b)
    assert torch.equal(c, d)
    assert (a[0] - a[1]).abs().max() > 1e-6  # one generator still gives each batch element fresh noise


def test_noise_rng_count_must_match_batch(tiny_generator, images):
    with pytest.raises(ValueError, match="2 noise RNGs for a batch of 3"):
        tiny_generator(images(32, 32, count=3), tables(50, 3), seeded_noise([0, 1]))


def test_film_makes_the_output_depend_on_the_tables(tiny_generator, images):
    y = images(32, 32)
    with torch.no_grad():
        low = tiny_generator(y, tables(10), seeded_noise([0]))
        high = tiny_generator(y, tables(90), seeded_noise([0]))
    assert (low - high).abs().max() > 1e-5


def test_table_blind_generator_ignores_the_tables(images):
    torch.manual_seed(0)
    blind = Generator(replace(TINY["rrdb"], table_embedding=0)).eval()
    y = images(32, 32)
    with torch.no_grad():
        low = blind(y, tables(10), seeded_noise([0]))
        high = blind(y, tables(90), seeded_noise([0]))
    assert torch.equal(low, high)


def test_table_normalisation():
    q = torch.full((2, 8, 8), 255.0)
    q[0] = 1.0
    features = normalise_tables(q, batch=3)
    assert features.shape == (3, 128)
    assert torch.equal(features[:, :64], torch.zeros(3, 64))
    torch.testing.assert_close(features[:, 64:], torch.ones(3, 64))
    gray = normalise_tables(torch.full((1, 1, 8, 8), 16.0), batch=1)  # one table: luma stands in for chroma
    torch.testing.assert_close(gray, torch.full((1, 128), np.log(16) / np.log(255)))
    with pytest.raises(ValueError):
        normalise_tables(torch.ones(4, 4, 8, 8), batch=4)


@pytest.mark.parametrize("mode", ["4:2:0", "4:4:4"])
def test_consistency_gradients_reach_every_generator_parameter(tiny_generator, images, mode):
    y = images(32, 48, count=2)
    q = tables(25, 2)
    coefficients = codec.encode(y, q, mode)
    fake = tiny_generator(y, q, seeded_noise([0, 1]))
    loss = consistency_pixel(fake, y, q, mode) + consistency_dct(fake + 0.05, coefficients, q, mode)
    loss.backward()
    for name, parameter in tiny_generator.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name  # noise scales and FiLM heads included


def test_paper_and_plain_parameter_counts():
    paper = build_generator(replace(PRESETS["paper"], table_embedding=0))
    assert abs(parameter_count(paper) - 16.8e6) / 16.8e6 < 0.01
    conditioned = build_generator("paper")  # FiLM adds ~0.2M on top
    assert 0 < parameter_count(conditioned) - parameter_count(paper) < 0.3e6
    plain = build_generator(replace(PRESETS["plain"], table_embedding=0))
    assert abs(parameter_count(plain) - 14.4e6) / 14.4e6 < 0.01


def test_presets_and_config_validation():
    assert 1e6 < parameter_count(build_generator("demo")) < 3e6
    assert parameter_count(build_generator("tiny")) < 1e5
    with pytest.raises(ValueError, match="trunk"):
        GeneratorConfig(trunk="unet")
    with pytest.raises(ValueError, match="preset"):
        build_generator("huge")
    with pytest.raises(ValueError, match="positive"):
        GeneratorConfig(full_res_features=-1)


def test_every_network_is_built_by_its_registered_name():
    """The residual generator, the spread network and the critic, each from the config that names it;
    the residual generator compiles its trunk alone (the sampler's `compile`)."""
    from posterior_jpeg.models import registry
    from posterior_jpeg.models.spread import SpreadConfig, SpreadNet

    assert registry.names("generator") == ["residual"] and registry.names("critic") == ["resnet"]
    assert registry.names("spread") == ["band_spread"]
    for config, network in ((TINY["plain"], Generator), (SpreadConfig(features=8, blocks=1), SpreadNet),
                            (CriticConfig(features=8, max_features=16, size=32), Critic)):
        assert type(registry.build(config)) is network and registry.config_type(registry.ARCHITECTURES[
            config.arch].kind, config.arch) is type(config)
    generator = build_generator(TINY["plain"])
    generator.compile(backend="eager")
    assert generator.trunk._compiled_call_impl is not None and generator._compiled_call_impl is None


def test_full_resolution_head_starts_near_the_identity(images):
    y = images(40, 56, count=2)
    """The residual of a fresh G is small with either head: training starts from y."""
    for name in ("plain", "plain_full_res"):
        torch.manual_seed(0)
        out = Generator(TINY[name])(y, tables(10, 2), seeded_noise([0, 1]))
        assert 0 < (out - y).abs().mean() < 0.05


@pytest.mark.parametrize("size", [(128, 128), (64, 96), (32, 32)])
def test_critic_gives_one_logit_per_image(size):
    critic = Critic(CriticConfig(features=8, max_features=32, size=128))
    logits = critic(torch.rand(3, 3, *size))
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


def test_critic_conditioning_on_y():
    critic = Critic(CriticConfig(features=8, max_features=16, size=32, conditional=True))
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    logits = critic(x, y)
    assert logits.shape == (2,)
    assert not torch.equal(logits, critic(x, torch.rand(2, 3, 32, 32)))
    with pytest.raises(ValueError, match="needs"):
        critic(x)
    with pytest.raises(ValueError, match="takes no"):
        Critic(CriticConfig(features=8, size=32))(x, y)
    with pytest.raises(ValueError, match="power of two"):
        CriticConfig(size=100)


def test_critic_is_per_sample():
    """No normalisation across the batch: an image's logit does not depend on its batch mates."""
    torch.manual_seed(0)
    critic = Critic(CriticConfig(features=8, max_features=32, size=64))
    x = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(critic(x)[1:2], critic(x[1:2]))


def test_vgg_random_weights_give_conv5_4_features():
    features = VGGFeatures(weights="random")
    images = torch.rand(2, 3, 32, 48, requires_grad=True)
    out = features(images)
    assert out.shape == (2, 512, 2, 3)
    out.square().mean().backward()
    assert images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in features.parameters())


def test_vgg_layout_matches_torchvision_and_loads_its_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = make_layers(cfgs["E"])[:35]
    state = {f"features.{key}": value for key, value in reference.state_dict().items()}
    torch.save(state, tmp_path / "vgg19.pth")  # torchvision's key names
    save_file(reference.state_dict(), tmp_path / "vgg19.safetensors")  # just the features
    images = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((images - mean) / std)
        for name in ("vgg19.pth", "vgg19.safetensors"):
            torch.testing.assert_close(VGGFeatures(weights=tmp_path / name)(images), expected)


def test_vgg_rejects_a_file_that_is_not_vgg19(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(PosteriorJpegError, match="does not hold VGG19 weights"):
        VGGFeatures(weights=path)


def test_detail_layer_keeps_only_high_frequencies():
    flat = torch.full((1, 3, 16, 16), 0.7)
    assert detail_layer(flat, 10.0).abs().max() < 1e-6
    checkerboard = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(1, 3, 16, 16)
    assert detail_layer(checkerboard, 10.0).abs().mean() > 3.0  # +-0.5 around the local mean, x10 (0.48 at 5x5)
    with pytest.raises(ValueError, match="detail_gain"):
        CriticConfig(detail_gain=-1.0)


def _separation_after_training(detail_gain: float, steps: int = 80) -> float:
    """Train a small critic on textured crops (real) against their blurred copies (fake); return
    mean logit(real) - mean logit(fake) on held-out crops."""
    torch.manual_seed(0)
    critic = Critic(CriticConfig(features=16, max_features=32, size=32, detail_gain=detail_gain))
    optimizer = torch.optim.Adam(critic.parameters(), lr=2e-4, betas=(0.0, 0.99))

    def batch(n):
        base = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8), size=32, mode="bilinear")
        real = (base + 0.05 * torch.randn(n, 3, 32, 32)).clamp(0, 1)  # smooth content + fine grain
        fake = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(real, (1, 1, 1, 1), mode="reflect"), 3, 1)
        return real, fake

    for _ in range(steps):
        real, fake = batch(8)
        loss = losses.adversarial_d(critic(real), critic(fake))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    real, fake = batch(64)
    with torch.no_grad():
        return (critic(real).mean() - critic(fake).mean()).item()


def test_detail_layer_lets_the_critic_see_lost_detail_quickly():
    """The reason for the option: with it the critic separates grainy from blurred crops within 80
    steps; the paper's critic, same steps and learning rate, barely starts to."""
    with_detail, without = _separation_after_training(10.0), _separation_after_training(0.0)
    assert with_detail > 1.0
    assert with_detail > 5 * abs(without)


@pytest.mark.parametrize("trunk", ["rrdb", "plain"])
def test_noise_free_generator_is_deterministic_and_has_no_noise_parameters(images, trunk):
    config = GeneratorConfig(trunk=trunk, features=16, blocks=2, growth=8, table_embedding=8, noise=False)
    torch.manual_seed(0)
    generator = Generator(config).eval()
    assert not any("noise" in name for name, _ in generator.named_parameters())
    y = images(32, 32)
    with torch.no_grad():
        first = generator(y, tables(10), seeded_noise([0]))
        second = generator(y, tables(10), seeded_noise([1]))
    assert torch.equal(first, second)
    noisy = Generator(GeneratorConfig(**{**vars(config), "noise": True}))
    assert parameter_count(noisy) > parameter_count(generator)


def test_anchored_generator_starts_at_its_posterior_mean_and_trains_only_the_detail(images):
    from posterior_jpeg.models.generator import AnchoredGenerator

    torch.manual_seed(0)
    mean = Generator(replace(TINY["plain"], noise=False))
    with torch.no_grad():  # an M that visibly changes y
        mean.conv_out.weight.mul_(30)
    model = AnchoredGenerator(mean, Generator(TINY["plain_full_res"])).train()
    assert not mean.training
    y, q = images(32, 32, 2), tables(10, 2)
    m = model.posterior_mean(y, q)
    assert (m - y).abs().mean() > 1e-3
    sample = model(y, q, seeded_noise([0, 1]))
    assert (sample - m).abs().mean() < 0.1 * (m - y).abs().mean()  # S starts near the identity
    sample.square().mean().backward()
    assert all(p.grad is None for p in model.mean.parameters())
    assert all(p.grad is not None for p in model.detail.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="noise-free"):
        AnchoredGenerator(Generator(TINY["plain"]), Generator(TINY["plain"]))


def test_antithetic_anchored_generator_is_odd_in_the_noise_around_its_mean(images):
    """G(z) - M = -(G(-z) - M): the mean over symmetric noise is M exactly, and what S adds for every
    z alike (a fixed pattern) cancels; without antithetic it does not."""
    from posterior_jpeg.models.generator import AnchoredGenerator

    torch.manual_seed(0)
    mean = Generator(replace(TINY["plain"], noise=False))
    detail = Generator(TINY["plain_full_res"])
    with torch.no_grad():  # an S with visible z-independent and z-dependent parts
        detail.conv_full_res.bias.fill_(0.05)
        detail.conv_full_res.weight.mul_(30)
        for block in detail.trunk.blocks:
            block.noise_scale.fill_(3.0)
    y, q = images(32, 32, 2), tables(10, 2)

    class Fixed:  # hands out given maps in order: a source of z, or of -z
        def __init__(self, maps, sign):
            self.maps, self.sign = iter(maps), sign

        def like(self, features):
            return self.sign * next(self.maps)

    maps = [torch.randn(2, 1, 8, 8) for _ in range(TINY["plain_full_res"].blocks)]
    for antithetic in (True, False):
        model = AnchoredGenerator(mean, detail, antithetic=antithetic).eval()
        with torch.no_grad():
            m = model.posterior_mean(y, q)
            plus, minus = model(y, q, Fixed(maps, 1.0)), model(y, q, Fixed(maps, -1.0))
            seeded = model(y, q, seeded_noise([3, 4]))
        average_offset = ((plus + minus) / 2 - m).abs().max()
        if antithetic:
            assert average_offset < 1e-5
            assert (plus - m).abs().mean() > 1e-3  # it still varies with z
            assert (seeded - m).abs().mean() > 1e-3
        else:
            assert average_offset > 0.01  # the z-independent part stays in every sample
