"""The calibration yardstick on posteriors whose answer is known, and the spread network V."""

import io
import math

import pytest
import torch
from PIL import Image

from posterior_jpeg.metrics.calibration import calibration, ideal_psnr_gap, spearman
from posterior_jpeg.models.generator import AnchoredGenerator, GeneratorConfig, build_generator
from posterior_jpeg.models.noise import NoiseSource
from posterior_jpeg.metrics.psnr import luma
from posterior_jpeg.models.spread import (SpreadConfig, SpreadNet, band_deviance, cell_energy, even_normal, split_bands,
                                          table_coarseness, white_noise_band_std)

SIZE = 256


def _coloured(rng: torch.Generator, count: int, coarse: float) -> torch.Tensor:
    """[count, 1, SIZE, SIZE] unit-variance noise with `coarse` of its energy at periods over ~16 px."""
    white = torch.randn(count, 1, SIZE, SIZE, generator=rng, dtype=torch.float64)
    smooth = torch.randn(count, 1, SIZE // 16, SIZE // 16, generator=rng, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(smooth, scale_factor=16, mode="bicubic", align_corners=False)
    smooth = smooth / smooth.std()
    return math.sqrt(coarse) * smooth + math.sqrt(1 - coarse) * white


@pytest.fixture(scope="module")
def posterior():
    """A known Gaussian posterior around M: std by 8x8 tile over a 30x range, coarse and fine energy."""
    rng = torch.Generator().manual_seed(0)
    mean = 0.3 + 0.4 * torch.rand(3, SIZE, SIZE, generator=rng, dtype=torch.float64)
    tiles = torch.exp(torch.empty(1, 1, SIZE // 8, SIZE // 8, dtype=torch.float64).uniform_(
        math.log(0.002), math.log(0.06), generator=rng))
    std = torch.nn.functional.interpolate(tiles, scale_factor=8, mode="nearest")[0]

    def draw(count: int, scale=1.0, coarse=0.4) -> torch.Tensor:
        return mean + scale * _coloured(rng, count, coarse)[:, 0:1].expand(-1, 3, -1, -1)

    return mean, std, draw


def test_samples_of_the_true_posterior_measure_one(posterior):
    mean, std, draw = posterior
    original = draw(1, std)[0]
    result = calibration(draw(8, std), mean, original)
    assert 0.9 < result.overall < 1.1
    assert all(0.75 < q < 1.33 for q in result.quartiles), result.quartiles
    assert all(0.8 < b < 1.25 for b in result.bands), result.bands
    assert result.rank_correlation > 0.75
    assert result.psnr_gap == pytest.approx(ideal_psnr_gap(8), abs=0.15)
    assert ideal_psnr_gap(8) == pytest.approx(10 * math.log10(16 / 9))  # 2.50 dB (the issue says 2.55: P = 9)
    for measured, exchangeable in zip(result.quartiles, result.quartiles_exchangeable):
        assert measured == pytest.approx(exchangeable, rel=0.3)  # the original scores as one more sample
    assert result.rank_correlation == pytest.approx(result.rank_correlation_exchangeable, abs=0.1)


def test_a_perfect_sampler_is_not_one_by_quartile_where_a_tile_is_few_independent_values(posterior):
    """Ranking tiles by the original's own residual favours tiles where it landed near M: with
    coarse residuals and a spread that varies little, a perfect sampler's quartiles are far from 1,
    and the exchangeable figures say so."""
    mean, _, draw = posterior
    std = 0.02 * (1 + 0.2 * torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    result = calibration(draw(8, std, coarse=0.95), mean, draw(1, std, coarse=0.95)[0])
    assert result.quartiles[0] > 1.5 and result.quartiles[3] < 0.8  # the naive target of 1 is missed
    assert result.quartiles_exchangeable[0] > 1.5 and result.quartiles_exchangeable[3] < 0.8
    for measured, exchangeable in zip(result.quartiles, result.quartiles_exchangeable):
        assert measured == pytest.approx(exchangeable, rel=0.3)


def test_each_way_of_being_wrong_shows_in_its_own_figure(posterior):
    mean, std, draw = posterior
    original = draw(1, std)[0]
    narrow = calibration(draw(4, 0.5 * std), mean, original)
    assert 0.2 < narrow.overall < 0.3  # half the spread: a quarter of the energy
    assert narrow.psnr_gap < ideal_psnr_gap(4) - 1.0  # the mean of under-dispersed samples gains little over one
    uniform = calibration(draw(4, std.pow(2).mean().sqrt()), mean, original)  # right energy, wrong places
    assert 0.8 < uniform.overall < 1.25
    assert uniform.quartiles[0] > 4 and uniform.quartiles[3] < 0.8
    assert abs(uniform.rank_correlation) < 0.2
    assert uniform.quartiles_exchangeable[0] < 2 and uniform.rank_correlation_exchangeable < 0.2  # its own spread is flat
    assert uniform.quartiles[0] > 2 * uniform.quartiles_exchangeable[0]  # the original is not one of its samples
    fine = calibration(draw(4, std, coarse=0.0), mean, original)  # right places, wrong scales
    assert fine.bands[0] < 0.5 and fine.bands[2] > 1.2


def test_calibration_refuses_mismatched_shapes():
    image = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="one size"):
        calibration(torch.rand(2, 3, 16, 8), image, image)
    with pytest.raises(ValueError, match="at least 8x8"):
        calibration(torch.rand(2, 3, 4, 4), image[:, :4, :4], image[:, :4, :4])


def test_spearman_is_rank_correlation():
    values = torch.arange(10.0)
    assert spearman(values, values.exp()) == pytest.approx(1.0)
    assert spearman(values, -values) == pytest.approx(-1.0)


def test_bands_add_up_and_white_noise_is_normalised():
    image = torch.rand(2, 1, 40, 52)
    assert torch.allclose(split_bands(image).sum(1, keepdim=True), image, atol=1e-6)
    white = torch.randn(1, 1, 512, 512, generator=torch.Generator().manual_seed(1))
    measured = split_bands(white)[..., 16:-16, 16:-16].pow(2).mean((0, 2, 3)).sqrt()
    assert torch.allclose(measured, white_noise_band_std(), rtol=0.03)


def test_band_deviance_is_lowest_at_the_true_energy_and_matches_sums_where_v_errs():
    residual = 0.05 * torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    truth = cell_energy(residual)
    shifted = {shift: band_deviance(truth.log() + shift, residual).item() for shift in (-0.3, 0.0, 0.3)}
    assert shifted[0.0] < shifted[-0.3] and shifted[0.0] < shifted[0.3]
    noisy = truth.log() + torch.randn(truth.shape, generator=torch.Generator().manual_seed(3))  # V errs
    shifts = torch.linspace(-2, 2, 401)
    best = shifts[torch.tensor([band_deviance(noisy + c, residual) for c in shifts]).argmin()]
    assert (noisy + best).exp().sum() == pytest.approx(truth.sum().item(), rel=0.02)  # the sums match


def _spread_model(dispersion: float = 0.0) -> AnchoredGenerator:
    torch.manual_seed(0)
    mean = build_generator(GeneratorConfig(trunk="plain", features=16, blocks=2, table_embedding=8, noise=False))
    detail = build_generator(GeneratorConfig(trunk="plain", features=16, blocks=2, table_embedding=8))
    config = SpreadConfig(features=8, blocks=1, table_embedding=8, dispersion_intercept=[dispersion] * 3)
    return AnchoredGenerator(mean, detail, antithetic=True, spread=SpreadNet(config)).eval()


class _Negated:
    """The noise of a seeded source with its sign flipped: z -> -z."""

    def __init__(self, seed: int):
        self.source = NoiseSource(1, torch.Generator().manual_seed(seed))

    def like(self, features):
        return -self.source.like(features)


@pytest.mark.parametrize("dispersion", [0.0, 1.0])
def test_a_spread_sample_is_odd_in_the_noise_so_its_mean_is_m(dispersion):
    """With a dispersion, each cell's variance is drawn too, evenly in z: the sample stays odd."""
    model = _spread_model(dispersion)
    y, tables = torch.rand(1, 3, 40, 56), torch.full((1, 2, 8, 8), 30.0)
    with torch.no_grad():
        mean = model.posterior_mean(y, tables)
        plus = model(y, tables, NoiseSource(1, torch.Generator().manual_seed(5)))
        minus = model(y, tables, _Negated(5))
    assert (plus - mean).abs().mean() > 1e-3  # the detail is not nothing
    assert torch.allclose(plus + minus, 2 * mean, atol=1e-5)


def test_the_sample_luma_follows_the_spread_network():
    """Scaling V's variances by 4 doubles the sample's luma residual; the chroma stays S's."""
    model = _spread_model()
    y, tables = torch.rand(1, 3, 48, 48), torch.full((1, 2, 8, 8), 30.0)
    with torch.no_grad():
        mean = model.posterior_mean(y, tables)
        first = model(y, tables, NoiseSource(1, torch.Generator().manual_seed(3))) - mean
        model.spread.conv_out.bias += math.log(4.0)
        second = model(y, tables, NoiseSource(1, torch.Generator().manual_seed(3))) - mean
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((second * weights).sum(1), 2 * (first * weights).sum(1), atol=1e-5)
    chroma = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])  # differences of R, G, B
    assert torch.allclose(torch.einsum("kc,nchw->nkhw", chroma, second),
                          torch.einsum("kc,nchw->nkhw", chroma, first), atol=1e-5)


def test_even_normal_is_unit_normal_and_even():
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drawn = even_normal(noise)
    assert torch.equal(drawn, even_normal(-noise))
    assert abs(drawn.mean().item()) < 0.01 and abs(drawn.var().item() - 1) < 0.02
    assert abs(drawn.pow(3).mean().item()) < 0.03 and abs(drawn.pow(4).mean().item() - 3) < 0.1  # normal, not half-normal


def test_a_dispersion_scatters_the_cell_energies_and_keeps_their_mean():
    """A log-normal variance factor of log std 1 per cell: the log of a sample's cell energy over V's
    prediction varies more (by less than 1: a pixel's variance blends four cells, the bands blur across
    them), its energy over many cells stays as it was (the factor's mean is 1)."""
    y, tables = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)), torch.full((1, 2, 8, 8), 30.0)
    scatter, energy = {}, {}
    for dispersion in (0.0, 1.0):
        model = _spread_model(dispersion)
        with torch.no_grad():
            mean = model.posterior_mean(y, tables)
            predicted = model.spread(mean, tables).double()
            ratios = []
            for seed in range(6):
                sample = model(y, tables, NoiseSource(1, torch.Generator().manual_seed(seed)))
                cells = cell_energy(luma((sample - mean).double()))
                ratios.append((cells.log() - predicted).flatten(2))
        ratios = torch.cat(ratios, 2)[0, :2]  # low and mid band: V's variance exactly (the high band is S's)
        scatter[dispersion], energy[dispersion] = ratios.var(1), ratios.exp().mean(1)
    assert all(0.15 < grown < 1.0 for grown in (scatter[1.0] - scatter[0.0]).tolist()), scatter
    assert torch.allclose(energy[1.0], energy[0.0], rtol=0.2), energy


def test_the_dispersion_fit_recovers_the_scatter_of_a_known_truth():
    """Truths drawn by the model itself with log std 0.8: a fit that starts at 0 lands near 0.8."""
    from posterior_jpeg import calibrate
    from posterior_jpeg.jpeg.file import read_jpeg
    from posterior_jpeg.sampler import PosteriorSampler

    truth_model, model = _spread_model(0.8), _spread_model(0.0)
    sampler, truth_sampler = (PosteriorSampler(m, "test", "cpu", torch.float32) for m in (model, truth_model))
    rng = torch.Generator().manual_seed(2)
    cases, coarseness = {}, {}
    for quality in calibrate.FIT_QUALITIES:
        buffer = io.BytesIO()
        Image.fromarray((torch.rand(96, 96, 3, generator=rng) * 255).byte().numpy()).save(buffer, format="JPEG", quality=quality)
        jpeg = read_jpeg(buffer.getvalue())
        mean = sampler.posterior_mean_of(jpeg)
        truths = [s.image - mean for s in truth_sampler.samples(jpeg, range(100, 104), posterior_mean=mean)]
        cases[quality] = [(jpeg, mean, truth) for truth in truths]
        coarseness[quality] = table_coarseness(jpeg.qtable_tensor(), 1).item()
    fitted = calibrate._fit_dispersion(model.spread, sampler, cases, coarseness)
    low_mid = [sigma for quality in calibrate.FIT_QUALITIES for sigma in fitted[quality][:2]]  # V's variance alone
    assert 0.6 < sum(low_mid) / len(low_mid) < 1.0 and all(0.25 < sigma < 1.4 for sigma in low_mid), fitted
    assert model.spread.config.mixes
