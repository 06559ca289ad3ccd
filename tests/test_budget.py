"""The training budget: the default grows with the data, --epochs and --steps override it, and the
methods' schedules follow whatever length the run gets."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otclust import budget
from otclust.cli import build_parser, main
from otclust.commands.common import config_from_args
from otclust.config import FitConfig
from otclust.engine import Trainer
from otclust.errors import UserError
from otclust.methods import get_method_class


def quiet(message):
    pass


def parse_fit(*flags):
    return config_from_args(build_parser().parse_args(["fit", *flags]))


@pytest.mark.parametrize(
    "n,reference_steps",
    [(100, 500), (1_000, 949), (1_797, 1_272), (10_000, 3_000), (70_000, 7_937), (5_000_000, 30_000)],
)
def test_default_budget_is_30_sqrt_n_reference_steps_within_its_floor_and_cap(n, reference_steps):
    assert budget.default_reference_steps(n) == reference_steps
    assert reference_steps == min(30_000, max(500, round(30 * math.sqrt(n))))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 3_000_000), batch=st.integers(2, 4096))
def test_default_epochs_are_the_fewest_whole_epochs_that_see_the_budgets_samples(n, batch):
    epochs = budget.default_epochs(n, batch)
    seen_per_epoch = budget.steps_per_epoch(n, batch) * min(batch, n)
    wanted = budget.default_reference_steps(n) * budget.REFERENCE_BATCH
    if epochs == budget.MAX_DEFAULT_EPOCHS:  # a handful of samples an epoch: capped
        assert seen_per_epoch * budget.MAX_DEFAULT_EPOCHS <= wanted
        return
    assert epochs < budget.MAX_DEFAULT_EPOCHS
    assert epochs * seen_per_epoch >= wanted
    assert epochs == 1 or (epochs - 1) * seen_per_epoch < wanted


@pytest.mark.parametrize("n,epochs", [(1, 3_200), (2, 3_200), (39, 3_200), (40, 3_200), (41, 3_122), (100, 1_280)])
def test_a_handful_of_images_gets_the_passes_of_40_not_tens_of_thousands(n, epochs):
    # 2 images used to get 64,000 one-step epochs (about 45 minutes, extrapolated); from 40 images up nothing changed.
    assert budget.default_epochs(n, 256) == epochs
    assert budget.default_epochs(n, 256, scale=0.5) == math.ceil(epochs / 2)


@given(n1=st.integers(1, 10_000_000), n2=st.integers(1, 10_000_000))
def test_more_data_never_gets_fewer_steps_nor_more_passes(n1, n2):
    small, large = sorted((n1, n2))
    assert budget.default_reference_steps(small) <= budget.default_reference_steps(large)
    # Passes over the data (reference steps x 256 / N) shrink as N grows.
    assert budget.default_reference_steps(small) / small >= budget.default_reference_steps(large) / large


def test_small_and_large_sets_both_get_real_training():
    # 1,000 images: far more than the 200 steps that 50 epochs at batch 256 gave; 70,000: tens of
    # passes, not the hundreds a small set gets.
    assert budget.default_epochs(1_000, 256) * budget.steps_per_epoch(1_000, 256) >= 900
    assert 20 <= budget.default_epochs(70_000, 256) <= 50
    # Every method sees the same samples whatever its batch: DeepCluster's 64 takes 4x the steps.
    assert budget.default_epochs(70_000, 64) == budget.default_epochs(70_000, 256)


def test_digits_default_trains_at_least_as_long_as_the_old_clot_default():
    old_steps = 50 * (1797 // 256)  # clot had no epochs of its own: FitConfig's 50 epochs at batch 256
    config = parse_fit("--method", "clot", "--data", "digits")
    assert config.epochs is None and config.steps is None
    epochs = budget.resolve_epochs(config, 1797)
    assert epochs * budget.steps_per_epoch(1797, config.batch_size) >= old_steps


def test_recipes_keep_their_epochs_and_make_demo_is_unchanged():
    demo = parse_fit("--config", "configs/clot-digits.yaml")
    assert (demo.epochs, demo.steps, demo.batch_size) == (300, None, 256)
    assert budget.resolve_epochs(demo, 1797) == 300


def test_help_says_what_the_default_gives_for_several_sizes(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for n in (1_000, 10_000, 70_000):
        epochs = budget.default_epochs(n, 256)
        assert f"N={n:,}: {epochs} epochs ({epochs * budget.steps_per_epoch(n, 256):,} steps)" in text
    assert "--steps" in text


def test_steps_and_epochs_override_and_replace_each_other(tmp_path):
    assert budget.resolve_epochs(parse_fit("--epochs", "3"), 70_000) == 3
    steps_config = parse_fit("--steps", "1000")
    assert (steps_config.epochs, steps_config.steps) == (None, 1000)
    assert budget.resolve_epochs(steps_config, 70_000) == 4  # 273 steps an epoch: rounded up to whole epochs
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\n")
    assert (parse_fit("--config", str(recipe), "--steps", "50").epochs, parse_fit("--config", str(recipe), "--steps", "50").steps) == (None, 50)
    recipe.write_text("steps: 50\n")
    assert (parse_fit("--config", str(recipe), "--epochs", "2").epochs, parse_fit("--config", str(recipe), "--epochs", "2").steps) == (2, None)
    with pytest.raises(UserError, match="one of --epochs and --steps"):
        parse_fit("--epochs", "2", "--steps", "50")
    with pytest.raises(UserError, match="--steps must be at least 1"):
        parse_fit("--steps", "0")


def test_the_budget_note_says_when_the_default_budget_is_scaled():
    for scale, expected in ((1.0, "(the default budget for 5,000 samples)"), (0.5, "(0.5 x the default budget for 5,000 samples)")):
        lines = []
        Trainer(FitConfig(method="clot", clusters=3, budget_scale=scale), progress=False, log=lines.append)._resolve_budget(5_000)
        (note,) = lines
        assert expected in note and f"training {budget.default_epochs(5_000, 256, scale)} epochs of 19 steps" in note
    lines = []
    Trainer(FitConfig(method="clot", clusters=3), progress=False, log=lines.append)._resolve_budget(400)
    assert " epochs of 1 step (" in lines[0]  # under two batches an epoch is one step


def test_trainer_resolves_the_budget_once_it_knows_n():
    trainer = Trainer(FitConfig(method="clot", clusters=3), progress=False, log=quiet)
    config = trainer._resolve_budget(5_000)
    assert config.epochs == budget.default_epochs(5_000, 256)
    assert trainer.total_steps == config.epochs * (5_000 // 256)
    untrained = Trainer(FitConfig(method="kmeans", clusters=3), progress=False, log=quiet)
    assert untrained._resolve_budget(5_000).epochs == 1  # k-means trains no network


@pytest.mark.parametrize("n,reference_steps", [(1_797, 500), (10_000, 500), (70_000, 794), (1_000_000, 3_000)])
def test_the_short_budget_is_a_tenth_of_the_steps_with_the_same_floor(n, reference_steps):
    assert budget.default_reference_steps(n, short=True) == reference_steps
    assert reference_steps == max(500, round(3 * math.sqrt(n)))


@pytest.mark.parametrize(
    "method,params,epochs",
    [
        ("clot", {"neighbors": 20, "neighbor_source": "input", "n_heads": 5}, 3),  # the pretrained stage's settings: short
        ("clot", {}, 30),  # CLOT on feature vectors without the fixed neighbour graph: the full budget
        ("sela", {}, 30),
    ],
)
def test_clot_on_frozen_features_with_neighbour_views_gets_the_short_budget(tmp_path, monkeypatch, method, params, epochs):
    import numpy as np

    from otclust.data.datasets import load_dataset

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(70_000, 4)).astype(np.float32))
    dataset = load_dataset(f"features:{path}")
    resolved = []

    class Stop(Exception):
        pass

    original = Trainer._resolve_budget

    def resolve(self, n_samples, features=False):
        resolved.append(original(self, n_samples, features).epochs)
        raise Stop

    monkeypatch.setattr(Trainer, "_resolve_budget", resolve)
    with pytest.raises(Stop):
        Trainer(FitConfig(method=method, clusters=3, params=params), progress=False, log=quiet).fit(dataset)
    assert resolved == [epochs]  # short: 794 steps of 273 a pass
    assert budget.default_epochs(70_000, 256) == 30
    assert not get_method_class("clot").short_budget(params, features=False)  # images never get it


def test_steps_run_whole_epochs_and_the_swav_freeze_follows_them(blobs):
    # 120 images at batch 60: 2 steps an epoch; --steps 3 -> 2 epochs, 4 steps. The prototypes
    # freeze for the same share of a run twice as long: twice the steps.
    params = {"freeze_prototypes_fraction": 0.5}
    short_trainer = Trainer(FitConfig(method="swav", clusters=3, steps=3, batch_size=60, seed=0, eval_every=10, params=params), progress=False, log=quiet)
    short = short_trainer.fit(blobs)
    assert len(short.history) == 2 and short.method.iteration == 4 and short.metrics["epochs"] == 2
    assert short.method.freeze_steps == 2
    # The config the run writes (config.yaml) names the epochs it trained, and is valid to rerun.
    assert FitConfig(**short_trainer.config.to_dict()).validate().epochs == 2
    long = Trainer(FitConfig(method="swav", clusters=3, steps=8, batch_size=60, seed=0, eval_every=10, params=params), progress=False, log=quiet).fit(blobs)
    assert long.method.iteration == 8 and long.method.freeze_steps == 4


def test_the_old_swav_step_count_still_works_with_a_warning():
    from otclust.methods.base import InputSpec
    from otclust.methods.swav import Swav, SwavParams

    spec = InputSpec(n_samples=20, channels=1, image_size=(8, 8), mean=[0.2], std=[0.3])
    with pytest.warns(FutureWarning, match="freeze_prototypes_iters is deprecated"):
        method = Swav(3, spec, SwavParams(freeze_prototypes_iters=313))
    method.on_fit_start(type("FakeTrainer", (), {"total_steps": 10})())
    assert method.freeze_steps == 313


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 500), total=st.integers(1, 1000))
def test_spread_epochs_are_evenly_spaced_over_the_run(count, total):
    epochs = budget.spread_epochs(count, total)
    assert len(epochs) == min(count, total) and epochs[0] == 0 and epochs[-1] < total
    gaps = [b - a for a, b in zip(epochs, [*epochs[1:], total])]
    assert max(gaps) - min(gaps) <= 1


def test_sela_labellings_follow_the_run_length():
    from otclust.methods.base import InputSpec
    from otclust.methods.sela import Sela, SelaParams

    method = Sela(2, InputSpec(n_samples=10, feature_dim=3, mean=[0.0] * 3, std=[1.0] * 3), SelaParams(label_updates=10))
    assert method.update_epochs(budget.default_epochs(70_000, 256)) == list(range(10 * 3))[::3]  # 30 epochs: every third
    assert len(method.update_epochs(5)) == 5  # a short run: every epoch


def test_deepcluster_reclusters_as_often_in_a_longer_run(blobs, monkeypatch):
    from otclust.methods.deepcluster import DeepCluster

    resets = []
    original = DeepCluster.reset_linear

    def counting(self, trainer, layer):
        resets.append(trainer.config.epochs)
        return original(self, trainer, layer)

    monkeypatch.setattr(DeepCluster, "reset_linear", counting)
    for epochs in (2, 4):
        config = FitConfig(method="deepcluster", clusters=3, epochs=epochs, batch_size=60, seed=0, eval_every=10, params={"pca_dim": 4, "reclusterings": 2})
        Trainer(config, progress=False, log=quiet).fit(blobs)
    # Two clusterings, each with a fresh classifier, whether the run has 2 epochs or 4.
    assert resets == [2, 2, 4, 4]


def test_deepercluster_old_reassignment_period_still_works_with_a_warning():
    from otclust.methods.base import InputSpec
    from otclust.methods.deepercluster import DeeperCluster, DeeperClusterParams

    spec = InputSpec(n_samples=30, channels=1, image_size=(8, 8), mean=[0.2], std=[0.3])
    with pytest.warns(FutureWarning, match="reassignment is deprecated"):
        method = DeeperCluster(3, spec, DeeperClusterParams(reassignment=3, pca_dim=4))
    assert method.recluster_epochs(10) == {0, 3, 6, 9}
    assert DeeperCluster(3, spec, DeeperClusterParams(reclusterings=2, pca_dim=4)).recluster_epochs(10) == {0, 5}


def test_compare_scales_the_default_budget(tmp_path):
    import argparse

    from otclust.commands.compare import method_config

    args = argparse.Namespace(
        configs_dir=str(tmp_path), split=None, download=None, image_size=None, clusters=None, epochs=None, batch_size=None,
        device=None, backbone=None, cluster_proportions=None, eval_every=None, epochs_scale=0.1, weights=None, readout=None,
    )
    config, recipe = method_config(args, "swav", "digits")
    assert recipe is None and config.epochs is None and config.budget_scale == 0.1
    assert budget.resolve_epochs(config, 70_000) == budget.default_epochs(70_000, 256, 0.1) == 3


@pytest.mark.parametrize(
    "recipe,n_samples,schedule,old",
    [
        # (recipe, N, its schedule in the new terms, what the old fixed count gave)
        ("swav-digits", 1797, lambda c, spe: budget.fraction_of_steps(c.params["freeze_prototypes_fraction"], c.epochs * spe), 7),
        ("swav-fashion-mnist", 70000, lambda c, spe: budget.fraction_of_steps(c.params["freeze_prototypes_fraction"], c.epochs * spe), 273),
        ("soft-kmeans-digits", 1797, lambda c, spe: budget.fraction_of_epochs(c.params["pretrain_fraction"], c.epochs), 100),
        ("deepercluster-digits", 1797, lambda c, spe: budget.spread_epochs(c.params["reclusterings"], c.epochs), list(range(30))),
        # Fashion-MNIST's recipe moved to 20 epochs with neighbours from epoch 3, every 3 (2026-12-03).
        ("clot-fashion-mnist", 70000, lambda c, spe: [budget.epochs_of(c.params[f"neighbor_{k}_fraction"], c.epochs, least=1) for k in ("start", "every")], [3, 3]),
        ("clot-cifar10", 60000, lambda c, spe: [budget.epochs_of(c.params[f"neighbor_{k}_fraction"], c.epochs, least=1) for k in ("start", "every")], [4, 4]),
    ],
)
def test_converted_recipes_keep_their_schedules(recipe, n_samples, schedule, old):
    config = parse_fit("--config", f"configs/{recipe}.yaml")
    assert schedule(config, budget.steps_per_epoch(n_samples, config.batch_size)) == old
