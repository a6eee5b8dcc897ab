"""The training objectives as data (losses.TERMS): what the table declares, which terms each step
computes, how they are weighed, and a loss added from this file alone that trains, logs and moves G."""

import json
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posterior_jpeg import checkpoints, losses, training
from posterior_jpeg.config import LossConfig, TrainConfig, load_config, load_structured
from posterior_jpeg.losses import Schedule, Term

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
QUIET = ["progress=false", "device=cpu", "log_with=none", "val_every=1000"]


def tiny(*overrides):
    return load_config(TINY, ["out_dir=unused", *QUIET, *overrides])


def names(terms):
    return [term.name for term in terms]


def test_every_term_names_keys_the_loss_config_has():
    """A term's weight is a schedule of LossConfig, its period an integer key, its variant a key whose
    default is one of the values the table declares for it; every objective belongs to a stage."""
    defaults = LossConfig()
    objectives = {objective for stage in training.OBJECTIVES.values() for objective in stage}
    for term in losses.TERMS:
        assert term.objective in objectives, term
        assert term.weight is None or isinstance(getattr(defaults, term.weight), Schedule), term
        assert term.every is None or isinstance(getattr(defaults, term.every), int), term
        assert not term.lazy or term.every is not None, term
    for key, values in losses.variants().items():
        assert getattr(defaults, key) in values and len(set(values)) == len(values), key


def test_the_table_decides_which_terms_each_step_computes():
    cfg = tiny()  # moments and R1 every 4 steps; no perceptual, no second moment
    absent = {"xbar", "vgg", "coefficients"}
    assert names(training._due(cfg, "generator", 1, absent | {"samples"})) == ["g_adv", "consistency"]
    assert names(training._due(cfg, "generator", 4, absent)) == ["g_adv", "consistency", "first_moment"]
    assert names(training._due(cfg, "critic", 1)) == ["d_loss"]
    assert names(training._due(cfg, "critic", 4)) == ["d_loss", "r1"]
    assert names(training._due(cfg, "posterior_mean", 1)) == ["mse"]
    # a term with weight 0 is not computed; a watched one is, to be logged
    off = tiny("loss.r1={kind: constant, start: 0, end: 0}", "loss.adversarial={kind: constant, start: 0, end: 0}")
    assert names(training._due(off, "critic", 4)) == ["d_loss"]
    assert names(training._due(off, "generator", 1, absent | {"samples"})) == ["g_adv", "consistency"]
    # a cosine weight that starts at 0 is computed once it is positive
    rising = tiny("loss.perceptual={kind: cosine, start: 0, end: 1}")
    assert "perceptual" not in names(training._due(rising, "generator", 0, absent - {"vgg"}))
    assert "perceptual" in names(training._due(rising, "generator", 1, absent - {"vgg"}))
    # the variant the config names is the one computed; what it needs is prepared for it alone
    second = ("loss.second_moment={kind: constant, start: 1, end: 1}",)
    eq7, std = tiny(*second), tiny(*second, "loss.second_moment_kind=std")
    assert "second_moment" not in names(training._due(eq7, "generator", 4, absent))  # eq. 7 needs xbar
    assert "second_moment" in names(training._due(eq7, "generator", 4, absent - {"xbar"}))
    assert "second_moment" in names(training._due(std, "generator", 4, absent))  # the std variant does not
    assert training._may_need(eq7, "xbar") and not training._may_need(std, "xbar")
    assert not training._may_need(cfg, "vgg") and training._may_need(rising, "vgg")
    assert not training._may_need(cfg, "coefficients")
    assert training._may_need(tiny("loss.consistency_kind=dct"), "coefficients")
    assert not training._may_need(tiny("stage=posterior_mean", "loss.consistency_kind=dct"), "coefficients")


class _Recorder:
    """An optimizer that records the gradient it was given."""

    def __init__(self, parameter):
        self.parameter, self.grad = parameter, None

    def step(self):
        self.grad = self.parameter.grad.clone()

    def zero_grad(self, set_to_none=True):
        self.parameter.grad = None


def test_each_term_is_weighed_by_its_schedule_and_a_lazy_one_by_its_period():
    cfg = tiny("loss.first_moment={kind: constant, start: 0.25, end: 0.25}",
               "loss.r1={kind: constant, start: 0.5, end: 0.5}", "loss.r1_every=4")
    parameter = torch.ones(3, requires_grad=True)
    terms = [Term("plain", "generator", lambda p: p.sum(), ("p",), "first_moment"),
             Term("lazy", "generator", lambda p, gamma: gamma * p.sum(), ("p",), "r1", "r1_every", lazy=True,
                  weighs_itself=True),
             Term("fixed", "generator", lambda p: 3 * p.sum(), ("p",))]
    optimizer = _Recorder(parameter)
    trainer = types.SimpleNamespace(cfg=cfg, step=4, accelerator=types.SimpleNamespace(backward=torch.Tensor.backward))
    total, logged = training._descend(trainer, optimizer, terms, training.Inputs({"p": lambda got: parameter}))
    assert {name: value.item() for name, value in logged.items()} == {"plain": 3.0, "lazy": 1.5, "fixed": 9.0}
    assert total.item() == 0.25 * 3 + 4 * 1.5 + 9.0
    assert torch.equal(optimizer.grad, torch.full((3,), 0.25 + 4 * 0.5 + 3.0)) and parameter.grad is None


def test_each_input_is_made_once_and_only_when_a_term_takes_it():
    made = []

    def maker(name):
        def make(got):
            made.append(name)
            return got["base"] + 1 if name == "derived" else 1
        return make

    inputs = training.Inputs({name: maker(name) for name in ("base", "derived", "unused")})
    assert inputs["derived"] == 2 and inputs["derived"] == 2 and inputs["base"] == 1
    assert made == ["derived", "base"]


# A new loss, from this file alone: its function, its table line, its config key.
def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontal neighbours."""
    return (images[..., 1:] - images[..., :-1]).abs().mean()


@dataclass
class LossWithTotalVariation(LossConfig):
    total_variation: Schedule = field(default_factory=lambda: Schedule("constant", 0.0, 0.0))  # weight of G's total variation


@dataclass
class ConfigWithTotalVariation(TrainConfig):
    loss: LossWithTotalVariation = field(default_factory=LossWithTotalVariation)  # weights of the objective


def _run(tmp_path: Path, weight: float) -> tuple[list[dict], dict]:
    """A 2-step tiny run with the total variation weighted `weight`: its log lines and G's weights."""
    out = tmp_path / f"weight_{weight}"
    cfg = load_structured(ConfigWithTotalVariation, TINY, [
        f"out_dir={out}", *QUIET, "steps=2", "log_every=1", "checkpoint_every=2",
        f"loss.total_variation={{kind: constant, start: {weight}, end: {weight}}}"])
    training.train(cfg)
    records = [json.loads(line) for line in (out / training.METRICS_FILE).read_text().splitlines()]
    return records, load_file(str(checkpoints.latest_checkpoint(out) / "generator.safetensors"))


def test_a_loss_added_from_a_test_file_is_logged_and_moves_g_and_at_weight_0_is_not_computed(tmp_path, monkeypatch):
    calls = []

    def counted(images):
        calls.append(images.shape)
        return total_variation(images)

    monkeypatch.setattr(losses, "TERMS", (*losses.TERMS, Term("total_variation", "generator", counted, ("fake",),
                                                              "total_variation")))
    records, weighed = _run(tmp_path, 10.0)
    assert len(calls) == 2 and all(r["total_variation"] > 0 for r in records)
    calls.clear()
    records, unweighed = _run(tmp_path, 0.0)
    assert calls == [] and not any("total_variation" in r for r in records)
    assert weighed.keys() == unweighed.keys()
    assert any(not torch.equal(weighed[key], unweighed[key]) for key in weighed)


def test_a_term_whose_config_key_is_missing_is_not_silently_skipped(monkeypatch):
    monkeypatch.setattr(losses, "TERMS", (*losses.TERMS, Term("typo", "generator", total_variation, ("fake",), "typo")))
    with pytest.raises(AttributeError, match="typo"):
        training._due(tiny(), "generator", 1)
