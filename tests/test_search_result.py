"""What a search found (dnas.search.result): params without the classifier, and the
confidence of the decisions relative to the number of options (normalised entropy,
top-second margin), on a tiny supernet with hand-set logits (no search run)."""
import math

import pytest
import torch

from dnas.models import PlainNet, Supernet
from dnas.search.result import format_result, normalised_entropy, search_result, top_margin
from dnas.space import SearchSpace, load_space


@pytest.fixture(scope="module")
def net():
    """A tiny supernet (31 classes, not the space's 10) whose width logits are set by hand:
    units of 2, 3 and 3 options."""
    net = Supernet(load_space("tiny"), num_classes=31).eval()
    probs = [[0.5, 0.5], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]
    with torch.no_grad():
        for logits, p in zip(net.logits()["width"], probs):
            logits.copy_(torch.tensor(p).log())
    return net


@pytest.fixture(scope="module")
def found(net):
    return search_result(net)


def test_params_leave_the_classifier_out(net, found):
    space = net.space
    for key, indices in (("argmax", net.argmax_indices()), ("widest", space.sample_indices("max")),
                         ("smallest", space.sample_indices("min"))):
        plain = PlainNet(SearchSpace.from_dict(space.arch_from_indices(indices)))
        classifier = sum(p.numel() for p in plain.head.classifier.parameters())
        assert classifier > 0
        assert found[key]["params"] == sum(p.numel() for p in plain.parameters()) - classifier, key
    assert found["widest"]["params"] == 65_728  # tiny's widest arch: 67,018 with its 10-class classifier


def test_normalised_entropy_and_margin():
    assert normalised_entropy(torch.tensor([1.0, 0.0, 0.0])) == 0.0
    assert normalised_entropy(torch.full((5,), 0.2)) == pytest.approx(1.0)
    assert normalised_entropy(torch.tensor([0.5, 0.5])) == pytest.approx(1.0)
    assert normalised_entropy(torch.tensor([0.5, 0.25, 0.25])) == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert top_margin(torch.tensor([0.2, 0.7, 0.1])) == pytest.approx(0.5)
    assert top_margin(torch.tensor([0.5, 0.5])) == 0.0


def test_confidence_is_relative_to_the_number_of_options(found):
    width = found["confidence"]["width"]
    ent = [1.0, 1.5 * math.log(2) / math.log(3),
           -(0.9 * math.log(0.9) + 0.1 * math.log(0.05)) / math.log(3)]
    margin = [0.0, 0.25, 0.85]
    assert width["units"] == 3 and width["options"] == [2, 3, 3]
    assert width["entropy_mean"] == pytest.approx(sum(ent) / 3, abs=1e-6)
    assert width["entropy_max"] == pytest.approx(1.0, abs=1e-6)
    assert width["margin_mean"] == pytest.approx(sum(margin) / 3, abs=1e-6)
    assert width["margin_min"] == pytest.approx(0.0, abs=1e-6)
    # the top options of the first two units have p = 0.5, which is not a decision: only the third is
    assert width["decided"] == 1
    expansion = found["confidence"]["expansion"]  # zero logits: uniform, nothing decided
    assert expansion["decided"] == 0 and expansion["entropy_mean"] == pytest.approx(1.0)
    assert expansion["margin_min"] == pytest.approx(0.0, abs=1e-6)
    assert set(width) == {"entropy_mean", "entropy_max", "margin_mean", "margin_min", "decided", "units", "options"}


def test_format_result_lines(found):
    lines = format_result(found)
    line = next(ln for ln in lines if ln.strip().startswith("width:"))
    assert "1/3 decided (normalised entropy <= 0.5)" in line
    assert "entropy mean 0.77, highest 1.00" in line and "top-second margin mean 0.37, lowest 0.00" in line
    assert any("65.7 k params" in ln for ln in lines if "widest" in ln)
