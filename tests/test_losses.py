"""Each loss term against a hand computation, and the weight schedules."""

import math

import pytest
import torch

from posterior_jpeg import losses
from posterior_jpeg.jpeg import codec
from posterior_jpeg.jpeg.dct import dct_blocks
from posterior_jpeg.jpeg.tables import ijg_tables
from posterior_jpeg.models import Critic, CriticConfig, VGGFeatures

Q50 = torch.from_numpy(ijg_tables(50)).float()  # luma DC step 16, chroma DC step 17


def gray(level: int, height: int = 16, width: int = 16) -> torch.Tensor:
    """A flat image at an 8-bit gray level: Y = level, Cb = Cr = 128 exactly."""
    return torch.full((1, 3, height, width), level / 255.0)


def test_adversarial_losses_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])
    # softplus(-0) = log 2, softplus(-log 3) = log(1 + 1/3)
    assert losses.adversarial_g(logits).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    real = torch.tensor([0.0, math.log(3.0)])
    fake = torch.tensor([-math.log(3.0)])
    # real: (log 2 + log 4/3) / 2; fake: softplus(-log 3) = log(4/3)
    expected = (math.log(2) + math.log(4 / 3)) / 2 + math.log(4 / 3)
    assert losses.adversarial_d(real, fake).item() == pytest.approx(expected)


def test_adversarial_losses_push_the_right_way():
    fake = torch.zeros(4, requires_grad=True)
    losses.adversarial_g(fake).backward()
    assert (fake.grad < 0).all()  # G wants higher fake logits
    real = torch.zeros(4, requires_grad=True)
    fake = torch.zeros(4, requires_grad=True)
    losses.adversarial_d(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()


def test_critic_losses_are_float32_whatever_the_precision_of_the_logits():
    """The critic may run under bf16 autocast: its logits come as they are, the losses are fp32."""
    logits = torch.tensor([0.3, -1.7, 2.2])
    low = logits.bfloat16()
    assert losses.adversarial_g(low).dtype == losses.adversarial_d(low, low).dtype == torch.float32
    assert losses.adversarial_g(low).item() == losses.adversarial_g(low.float()).item()
    images = torch.rand(3, 2, requires_grad=True)
    penalty = losses.r1_penalty(images, (images.bfloat16() * 2).sum(1), gamma=1.0)
    assert penalty.dtype == torch.float32 and penalty.item() == pytest.approx(0.5 * 4 * 2)


def test_r1_of_a_linear_critic_is_gamma_half_squared_weight_norm():
    weight = torch.randn(3, 4, 5, requires_grad=True)
    images = torch.rand(2, 3, 4, 5, requires_grad=True)
    logits = (images * weight).flatten(1).sum(1) + 7.0
    penalty = losses.r1_penalty(images, logits, gamma=4.0)
    expected = 2.0 * weight.detach().pow(2).sum()  # grad_x D = w for every image
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    penalty.backward()  # create_graph: the penalty reaches the critic's parameters
    torch.testing.assert_close(weight.grad, 4.0 * weight.detach())


def test_r1_of_a_quadratic_critic():
    images = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 3.0]]]], requires_grad=True)  # [2, 1, 1, 2]
    logits = images.pow(2).flatten(1).sum(1)
    # grad = 2x: ||.||^2 = 4 * (1 + 4) = 20 and 4 * 9 = 36; gamma / 2 * mean = 0.5 * 28
    assert losses.r1_penalty(images, logits, gamma=1.0).item() == pytest.approx(14.0)


def test_r1_backpropagates_through_the_resnet_critic():
    torch.manual_seed(0)
    critic = Critic(CriticConfig(features=8, max_features=16, size=32))
    real = torch.rand(2, 3, 32, 32, requires_grad=True)
    penalty = losses.r1_penalty(real, critic(real), gamma=1.0)
    penalty.backward()
    assert penalty.item() > 0
    for name, parameter in critic.named_parameters():
        if name != "fc.bias":  # the logit's offset does not change its gradient in x
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert critic.conv_in.weight.grad.abs().sum() > 0


def test_pixel_consistency_is_zero_on_a_consistent_image_and_mse_off_it(natural_rgb):
    x = torch.from_numpy(natural_rgb(24, 40)).permute(2, 0, 1)[None].float() / 255.0
    _, y = codec.roundtrip(x, Q50, "4:2:0")
    assert losses.consistency_pixel(x, y, Q50, "4:2:0").item() == 0.0  # y is x's own JPEG
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert losses.consistency_pixel(noisy, y, Q50, "4:2:0").item() > 1e-4
    level = gray(160)
    torch.testing.assert_close(codec.roundtrip(level, Q50, "4:4:4")[1], level)  # flat 8-bit gray survives JPEG
    # 0.01 off everywhere: MSE 1e-4 in [0, 1] units
    assert losses.consistency_pixel(level, level + 0.01, Q50, "4:4:4").item() == pytest.approx(1e-4, rel=1e-3)


def unquantized_dct(x: torch.Tensor, qtables: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The DCT of x in quantization steps, before rounding, per component."""
    planes = codec.component_planes(x, mode)
    steps = codec.component_tables(qtables, x.shape[0], len(planes))
    return [dct_blocks(codec.plane_blocks(p) - 128.0) / steps[:, c, None, None] for c, p in enumerate(planes)]


@pytest.mark.parametrize("mode", ["4:2:0", "4:4:4", "4:2:2", "gray"])
def test_dct_consistency_is_zero_inside_the_intervals_and_squared_distance_outside(natural_rgb, mode):
    x = torch.from_numpy(natural_rgb(40, 56, seed=3)).permute(2, 0, 1)[None].float() / 255.0
    assert losses.consistency_dct(x, codec.encode(x, Q50, mode), Q50, mode).item() == 0.0
    generator = torch.Generator().manual_seed(0)
    exact = unquantized_dct(x, Q50, mode)
    # stored values anywhere within (almost) half a step of the true DCT: still consistent
    inside = [u + 0.98 * (torch.rand(u.shape, generator=generator) - 0.5) for u in exact]
    assert losses.consistency_dct(x, inside, Q50, mode).item() == 0.0
    # every stored value 0.6 steps away: 0.1 step outside each interval, squared
    outside = [u + 0.6 * torch.sign(torch.randn(u.shape, generator=generator)) for u in exact]
    assert losses.consistency_dct(x, outside, Q50, mode).item() == pytest.approx(0.01, rel=1e-3)


def test_dct_consistency_by_hand_on_a_flat_image():
    level = gray(160)  # Y = 160: DC = 8 * (160 - 128) = 256 = 16 steps of 16, all AC zero
    coefficients = codec.encode(level, Q50, "gray")
    assert coefficients[0].shape == (1, 2, 2, 8, 8)
    assert coefficients[0][0, :, :, 0, 0].eq(16).all()
    assert losses.consistency_dct(level, coefficients, Q50, "gray").item() == 0.0
    inside = [coefficients[0].clone()]
    inside[0][0, 0, 0, 0, 0] += 0.49  # u = 16 within [16.49 - 0.5, 16.49 + 0.5]
    assert losses.consistency_dct(level, inside, Q50, "gray").item() == 0.0
    outside = [coefficients[0].clone()]
    outside[0][0, 0, 0, 0, 0] += 2  # u = 16 lies 2 - 0.5 = 1.5 steps outside [17.5, 18.5]
    outside[0][0, 1, 1, 0, 1] -= 1  # an AC: 0 vs [-1.5, -0.5], 0.5 steps out
    expected = (1.5**2 + 0.5**2) / (4 * 64)  # averaged over all 4 blocks x 64 coefficients
    assert losses.consistency_dct(level, outside, Q50, "gray").item() == pytest.approx(expected, rel=1e-4)
    # colour: the same error in Y among 3 components of 4 blocks each (4:4:4)
    colour = codec.encode(level, Q50, "4:4:4")
    colour[0][0, 0, 0, 0, 0] += 2
    assert losses.consistency_dct(level, colour, Q50, "4:4:4").item() == pytest.approx(1.5**2 / (3 * 4 * 64), rel=1e-4)


def test_dct_consistency_gradient_points_back_into_the_interval():
    level = gray(160).requires_grad_(True)
    coefficients = codec.encode(level, Q50, "gray")  # carries level's graph: the loss must not use it
    coefficients[0][..., 0, 0] += 2  # every DC says "brighter"
    losses.consistency_dct(level, coefficients, Q50, "gray").backward()
    assert (level.grad < 0).all()  # descending the loss brightens the image


def test_dct_consistency_checks_components_and_shapes():
    level = gray(160)
    coefficients = codec.encode(level, Q50, "4:2:0")
    with pytest.raises(ValueError, match="components"):
        losses.consistency_dct(level, coefficients[:1], Q50, "4:2:0")
    with pytest.raises(ValueError, match="blocks"):
        losses.consistency_dct(gray(160, 32, 32), coefficients, Q50, "4:2:0")


def test_first_moment_by_hand():
    samples = torch.tensor([1.0, 3.0, 0.0, 4.0]).view(2, 2, 1, 1, 1)  # means 2 and 2
    x = torch.tensor([2.0, 5.0]).view(2, 1, 1, 1)
    assert losses.first_moment(samples, x).item() == pytest.approx((0.0 + 9.0) / 2)


def test_second_moment_by_hand():
    samples = torch.tensor([1.0, 3.0, 0.0, 0.0]).view(2, 2, 1, 1, 1)  # unbiased variances 2 and 0
    x = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    xbar = torch.tensor([0.0, 0.0]).view(2, 1, 1, 1)  # (x - xbar)^2 = 1 and 4
    assert losses.second_moment(samples, x, xbar).item() == pytest.approx((abs(1 - 2) + abs(4 - 0)) / 2)
    xbar = xbar.requires_grad_(True)
    samples = samples.requires_grad_(True)
    losses.second_moment(samples, x, xbar).backward()
    assert xbar.grad is None  # the MMSE estimate is a fixed target
    assert samples.grad.abs().sum() > 0


def test_std_maximisation_by_hand_and_on_collapsed_samples():
    samples = torch.tensor([1.0, 3.0, 2.0, 2.0]).view(2, 2, 1, 1, 1)  # stds sqrt(2) and 0
    assert losses.std_maximisation(samples).item() == pytest.approx(-(math.sqrt(2) + 1e-4) / 2, abs=1e-6)
    collapsed = torch.full((1, 4, 3, 2, 2), 0.5, requires_grad=True)
    losses.std_maximisation(collapsed).backward()
    assert torch.isfinite(collapsed.grad).all()


def test_perceptual_is_feature_mse():
    fake = torch.tensor([[1.0, 2.0]], requires_grad=True)
    real = torch.tensor([[0.0, 0.0]])
    doubling = torch.nn.Linear(2, 2, bias=False)
    doubling.weight.data = 2.0 * torch.eye(2)
    assert losses.perceptual(doubling, fake, real).item() == pytest.approx((4.0 + 16.0) / 2)


def test_perceptual_with_vgg_reaches_the_generator_output():
    torch.manual_seed(0)
    features = VGGFeatures(weights="random")
    real = torch.rand(1, 3, 32, 32)
    fake = (real + 0.1 * torch.randn_like(real)).requires_grad_(True)
    loss = losses.perceptual(features, fake, real)
    assert loss.item() > 0
    loss.backward()
    assert fake.grad.abs().sum() > 0
    assert losses.perceptual(features, real, real).item() == 0.0


def test_cosine_schedule_up_and_down():
    up = losses.Schedule("cosine", 0.1, 10.0)
    assert up(0, 100) == pytest.approx(0.1)
    assert up(50, 100) == pytest.approx(5.05)
    assert up(25, 100) == pytest.approx(0.1 + 9.9 * (1 - math.cos(math.pi / 4)) / 2)
    assert up(100, 100) == pytest.approx(10.0)
    assert up(250, 100) == pytest.approx(10.0)  # clipped past the end
    assert up(-5, 100) == pytest.approx(0.1)
    down = losses.Schedule("cosine", 1e-4, 1e-7)
    assert down(0, 10) == pytest.approx(1e-4)
    assert down(5, 10) == pytest.approx((1e-4 + 1e-7) / 2)
    assert down(10, 10) == pytest.approx(1e-7)


def test_constant_schedule():
    assert losses.Schedule("constant", 0.3, 99.0)(70, 100) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        losses.Schedule("linear", 0.0, 1.0)
