import pytest
import torch

from otclust.errors import UserError
from otclust.ot.priors import estimate_sizes, match_prior_to_mass, parse_cluster_proportions, size_penalty


def test_parse_modes(tmp_path):
    assert parse_cluster_proportions("uniform", 3) == ("uniform", None)
    assert parse_cluster_proportions("auto", 3) == ("auto", None)
    assert parse_cluster_proportions("auto:0.1", 3) == ("auto", None)
    assert size_penalty("auto:0.1") == 0.1
    assert size_penalty("auto") is None and size_penalty("uniform") is None
    mode, sizes = parse_cluster_proportions("2,1,1", 3)
    assert mode == "known" and torch.allclose(sizes, torch.tensor([0.5, 0.25, 0.25]))
    file = tmp_path / "sizes.txt"
    file.write_text("0.2\n0.8\n")
    assert torch.allclose(parse_cluster_proportions(str(file), 2)[1], torch.tensor([0.2, 0.8]))


@pytest.mark.parametrize("spec", ["0.5,0.5", "a,b,c", "0,1,1", "nonsense", "auto:", "auto:-1", "auto:x"])
def test_bad_proportions_are_user_errors(spec):
    with pytest.raises(UserError):
        parse_cluster_proportions(spec, 3)


@pytest.mark.parametrize("spec", ["nan,1", "inf,1", "1,-inf"])
def test_non_finite_proportions_are_refused(spec):
    # They used to pass, and the OT solver raised its ValueError in the middle of training.
    with pytest.raises(UserError, match="must all be positive finite numbers"):
        parse_cluster_proportions(spec, 2)


def test_a_proportions_file_that_is_not_text_or_not_comma_separated(tmp_path):
    numpy_file = tmp_path / "props.npy"
    numpy_file.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}")  # was a UnicodeDecodeError
    with pytest.raises(UserError, match=f"file {numpy_file} is not text: write the sizes as numbers separated by commas"):
        parse_cluster_proportions(str(numpy_file), 2)
    spaced = tmp_path / "props.txt"
    spaced.write_text("0.3 0.7\n")
    with pytest.raises(UserError, match="got '0.3 0.7' in "):  # the content to fix, not only the file's name
        parse_cluster_proportions(str(spaced), 2)


def test_known_prior_goes_to_the_clusters_by_rank_of_predicted_mass():
    sizes = torch.tensor([0.8, 0.15, 0.05])
    # The model fills cluster 2 most, then 0: the 80% size must follow cluster 2, not index 0.
    matched = match_prior_to_mass(sizes, torch.tensor([0.3, 0.1, 0.6]))
    assert torch.allclose(matched, torch.tensor([0.15, 0.05, 0.8]))
    assert torch.isclose(matched.sum(), torch.tensor(1.0))


def test_auto_sizes_follow_predictions_but_never_vanish():
    sizes = estimate_sizes(torch.tensor([0.7, 0.3, 0.0, 0.0]), floor=0.2)
    assert torch.isclose(sizes.sum(), torch.tensor(1.0))
    assert (sizes >= 0.2 / 4 / sizes.new_tensor(1.1)).all()
    assert sizes[0] > sizes[1] > sizes[2]
