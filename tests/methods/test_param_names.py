"""One idea, one name in every method (issue 16): sinkhorn_eps, kmeans_restarts, cluster_weight.

The former names (CLOT/SeLa lam = 1/sinkhorn_eps, SwAV epsilon, OT/soft k-means eps, k-means
n_init, DeepCluster/DeeperCluster readout_inits) still build the same method, with a FutureWarning
that names the new parameter; both names at once is an error; recipes use only the new names;
and a checkpoint that stored the former names loads and predicts as before, without a warning.
"""

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch

from otclust.checkpoint import trained_state, write_checkpoint
from otclust.cli import build_parser
from otclust.commands.common import config_from_args
from otclust.config import FitConfig
from otclust.engine import build_method, load_trained
from otclust.errors import UserError
from otclust.methods import get_method_class
from otclust.methods.base import InputSpec, build_params

# (method, former name, a value under it, new name, the same value under the new name)
RENAMES = [
    ("clot", "lam", 5, "sinkhorn_eps", 0.2),
    ("clot", "lam", 20.0, "sinkhorn_eps", 0.05),
    ("sela", "lam", 25, "sinkhorn_eps", 0.04),
    ("sela", "lam", 10, "sinkhorn_eps", 0.1),
    ("swav", "epsilon", 0.03, "sinkhorn_eps", 0.03),
    ("ot-kmeans", "eps", 0.5, "sinkhorn_eps", 0.5),
    ("soft-kmeans", "eps", 0.5, "sinkhorn_eps", 0.5),
    ("kmeans", "n_init", 3, "kmeans_restarts", 3),
    ("kmeans", "max_iter", 40, "kmeans_iters", 40),
    ("deepcluster", "readout_inits", 3, "kmeans_restarts", 3),
    ("deepercluster", "readout_inits", 3, "kmeans_restarts", 3),
]
IDS = [f"{method}-{old}={value}" for method, old, value, _, _ in RENAMES]
SPEC = dict(n_samples=30, channels=1, image_size=(8, 8), mean=[0.2], std=[0.3])


def spec() -> InputSpec:
    return InputSpec(**SPEC)


def built(method: str, params: dict):
    torch.manual_seed(0)
    return build_method(FitConfig(method=method, clusters=3, params=params), spec())


def test_every_entropic_eps_and_kmeans_restart_count_has_one_name():
    for method in ("clot", "sela", "swav", "ot-kmeans", "soft-kmeans"):
        names = {f.name for f in dataclasses.fields(get_method_class(method).Params)}
        assert "sinkhorn_eps" in names and not names & {"lam", "epsilon", "eps"}, method
    for method in ("kmeans", "deepcluster", "deepercluster", "ot-kmeans", "soft-kmeans", "ae-kmeans"):
        names = {f.name for f in dataclasses.fields(get_method_class(method).Params)}
        assert "kmeans_restarts" in names and not names & {"n_init", "readout_inits"}, method
    for method in ("kmeans", "deepcluster", "deepercluster"):  # Lloyd iterations
        names = {f.name for f in dataclasses.fields(get_method_class(method).Params)}
        assert "kmeans_iters" in names and "max_iter" not in names, method


def test_the_converted_defaults_are_the_old_ones_bit_for_bit():
    """CLOT and SeLa used eps = 1.0 / lam; the new defaults are those very floats."""
    assert get_method_class("clot").Params().sinkhorn_eps == 1.0 / 5.0
    assert get_method_class("sela").Params().sinkhorn_eps == 1.0 / 25.0


@pytest.mark.parametrize("method,old,value,new,new_value", RENAMES, ids=IDS)
def test_a_former_name_warns_and_builds_the_same_method(method, old, value, new, new_value):
    with pytest.warns(FutureWarning, match=rf"{method} parameter {old} is deprecated: use {new}"):
        from_old = built(method, {old: value})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_new = built(method, {new: new_value})
    assert from_old.params == from_new.params
    assert getattr(from_old.params, new) == new_value
    old_state, new_state = from_old.state_dict(), from_new.state_dict()
    assert old_state.keys() == new_state.keys()
    assert all(torch.equal(old_state[key], new_state[key]) for key in old_state)


def test_the_warning_for_lambda_gives_the_converted_value():
    with pytest.warns(FutureWarning, match=r"clot parameter lam is deprecated: use sinkhorn_eps=0\.2 \(sinkhorn_eps = 1/lam\)"):
        build_params(get_method_class("clot").Params, {"lam": 5}, "clot")


@pytest.mark.parametrize("method,old,value,new,new_value", RENAMES, ids=IDS)
def test_both_names_at_once_is_a_one_line_error(method, old, value, new, new_value):
    with pytest.raises(UserError) as error:
        build_params(get_method_class(method).Params, {old: value, new: new_value}, method)
    message = str(error.value)
    assert "\n" not in message and old in message and new in message


@pytest.mark.parametrize("value", [0, -5, "five", True])
def test_a_lambda_that_has_no_eps_is_a_user_error(value):
    with pytest.raises(UserError, match="parameter 'lam' of method 'clot' must be a positive number"):
        build_params(get_method_class("clot").Params, {"lam": value}, "clot")


@pytest.mark.parametrize("method", ["clot", "sela", "swav", "ot-kmeans", "kmeans", "deepcluster"])
def test_an_unknown_name_still_lists_the_valid_ones(method):
    params_class = get_method_class(method).Params
    with pytest.raises(UserError, match="unknown parameter") as error:
        build_params(params_class, {"lamda": 5}, method)
    valid = str(error.value).split("valid ones are ")[1].split(", ")
    assert valid == sorted(f.name for f in dataclasses.fields(params_class))


def test_a_former_name_is_not_accepted_by_another_method():
    """eps is OT k-means' former name only: for CLOT it is unknown, not a silent alias."""
    with pytest.raises(UserError, match="unknown parameter"):
        build_params(get_method_class("clot").Params, {"eps": 0.2}, "clot")


RECIPES = sorted(Path(__file__).resolve().parents[2].glob("configs/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipes_use_only_current_names(recipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = config_from_args(build_parser().parse_args(["fit", "--config", str(recipe)]))
        build_params(get_method_class(config.method).Params, config.params, config.method)


def test_a_param_flag_under_either_name_replaces_the_recipes_value():
    recipe = str(Path(__file__).resolve().parents[2] / "configs" / "clot-digits.yaml")
    for flag, expected in (("lam=10", {"lam": 10}), ("sinkhorn_eps=0.1", {"sinkhorn_eps": 0.1})):
        config = config_from_args(build_parser().parse_args(["fit", "--config", recipe, "--param", flag]))
        assert {k: v for k, v in config.params.items() if k in ("lam", "sinkhorn_eps")} == expected
    both = build_parser().parse_args(["fit", "--config", recipe, "--param", "lam=10", "--param", "sinkhorn_eps=0.1"])
    with pytest.raises(UserError, match="both set"):
        build_params(get_method_class("clot").Params, config_from_args(both).params, "clot")


@pytest.mark.parametrize("method,old,value,new,new_value", RENAMES, ids=IDS)
def test_a_checkpoint_that_stored_a_former_name_loads_and_predicts_the_same(tmp_path, method, old, value, new, new_value):
    """model.pt keeps config.to_dict() as the run was given it: here with the former name, as
    otclust wrote it before the rename. It loads without a warning and predicts the same."""
    trained = built(method, {new: new_value}).eval()
    with torch.no_grad():  # weights and buffers the fresh init would not reproduce
        for tensor in trained.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn_like(tensor))
    old_config = FitConfig(method=method, clusters=3, params={old: value})
    path = tmp_path / "model.pt"
    write_checkpoint(trained_state(trained, old_config), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, config = load_trained(path, device="cpu")
    assert config.params == {new: new_value}
    assert loaded.params == trained.params
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(loaded.predict_proba(images), trained.predict_proba(images))


@pytest.mark.parametrize(
    "method,values,fragment",
    [
        ("clot", {"sinkhorn_eps": "nan"}, "'sinkhorn_eps' of method 'clot' must be a finite number, got 'nan'"),  # YAML's text nan
        ("clot", {"sinkhorn_eps": float("inf")}, "'sinkhorn_eps' of method 'clot' must be a finite number, got inf"),  # YAML's .inf
        ("swav", {"temperature": "-inf"}, "must be a finite number"),
        ("clot", {"sinkhorn_iters": -5}, "'sinkhorn_iters' of method 'clot' must be positive, got -5"),
        ("clot", {"n_heads": 0}, "'n_heads' of method 'clot' must be positive, got 0"),
        ("clot", {"temperature": 0}, "'temperature' of method 'clot' must be positive, got 0.0"),
        ("deepcluster", {"assign_temperature": -1.0}, "must be positive"),
        ("sela", {"sinkhorn_eps": 0}, "must be positive"),
    ],
)
def test_method_numbers_that_cannot_run_are_user_errors(method, values, fragment):
    # They were an IndexError, a solver's ValueError or a NaN loss (blamed on --lr) in mid-training.
    with pytest.raises(UserError, match=re.escape(fragment)):
        build_params(get_method_class(method).Params, values, method)


def test_unset_optional_counts_are_still_accepted():
    assert build_params(get_method_class("clot").Params, {"kmeans_restarts": None, "sinkhorn_iters": 1}, "clot").kmeans_restarts is None
