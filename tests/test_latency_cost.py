"""Differentiable expected latency (LatencyModel) and the latency losses."""
import math
import time

import pytest
import torch

from dnas.errors import ConfigError, LatencyTableError
from dnas.latency.cost import LatencyModel
from dnas.latency.keys import derived_entries, parse_key
from dnas.latency.loss import LatencyLoss, latency_loss
from dnas.latency.table import LatencyTable
from dnas.models import Supernet
from dnas.space import SearchSpace, load_space
from latency_fixtures import measured_tiny_table, synthetic_table


def _archs(space, n=6):
    yield space.sample_indices("min")
    yield space.sample_indices("max")
    for seed in range(n):
        yield space.sample_indices("random", seed=seed)


@pytest.mark.parametrize("name", ["tiny", "fbnetv2"])
@pytest.mark.parametrize("attention", ["dcs", "self", "none"])
def test_one_hot_choice_gives_the_table_sum_of_the_derived_arch(name, attention):
    space = load_space(name)
    table = synthetic_table(space)
    model = LatencyModel(table, space, attention=attention)
    net = Supernet(space, attention=attention)
    for idx in _archs(space):
        arch = SearchSpace.from_dict(space.arch_from_indices(idx))
        direct = math.fsum(table.lookup(e.key) for e in derived_entries(arch, attention=attention))
        assert model.arch_ms(idx) == pytest.approx(direct, rel=1e-12)
        assert float(model.expected_ms(net.onehot_choice(idx))) == pytest.approx(direct, rel=1e-5)


def test_measured_cpu_table_one_hot_matches():
    space = load_space("tiny")
    table = LatencyTable.load(measured_tiny_table(), space)
    model = LatencyModel(table, space)
    net = Supernet(space)
    for idx in _archs(space, 3):
        assert float(model.expected_ms(net.onehot_choice(idx))) == pytest.approx(model.arch_ms(idx), rel=1e-5)


def test_expected_latency_is_the_mean_over_sampled_archs():
    """Softmax probabilities: the exact expectation of the table sum (Monte Carlo check)."""
    space = load_space("tiny")
    model = LatencyModel(synthetic_table(space), space)
    net = Supernet(space)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    probs = net.probs_choice()
    expected = float(model.expected_ms(probs).detach())
    draws = []
    for _ in range(3000):
        idx = {"width": [int(torch.multinomial(p, 1, generator=gen)) for p in probs.width],
               "expansion": [int(torch.multinomial(p, 1, generator=gen)) for p in probs.expansion]}
        draws.append(float(model.expected_ms(net.onehot_choice(idx))))
    mean = sum(draws) / len(draws)
    sem = (sum((d - mean) ** 2 for d in draws) / len(draws)) ** 0.5 / len(draws) ** 0.5
    assert abs(expected - mean) < 4 * sem + 1e-9


def test_gradients_flow_to_every_multi_option_logit():
    space = load_space("tiny")
    net = Supernet(space)
    model = LatencyModel.for_supernet(synthetic_table(space), net)
    lat = model.expected_ms(net.sample_choice(tau=1.0))
    lat.backward()
    for g, p in enumerate(net.arch_width_logits):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"width group {g}"
    for b, p in enumerate(net.arch_expansion_logits):
        if p.numel() > 1:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"block {b}"


@pytest.mark.parametrize("name", ["tiny", "xlarge"])
def test_narrower_options_lower_the_expected_latency(name):
    space = load_space(name)
    net = Supernet(space)
    model = LatencyModel(synthetic_table(space), space)

    def lat_with_bias(bias: float) -> float:
        with torch.no_grad():
            for p in net.arch_parameters():
                if p.dim() == 1 and p.numel() > 1:
                    p.copy_(bias * torch.linspace(-1, 1, p.numel()))  # options are sorted ascending
        return float(model.expected_ms(net.probs_choice()).detach())

    narrow, uniform, wide = lat_with_bias(-3.0), lat_with_bias(0.0), lat_with_bias(3.0)
    lo, hi = model.bounds_ms()
    assert lo < narrow < uniform < wide < hi
    # one gradient step on the latency alone moves the distribution to cheaper options
    lat_with_bias(0.0)
    opt = torch.optim.SGD(list(net.arch_parameters()), lr=1000.0 / hi)
    opt.zero_grad()
    model.expected_ms(net.probs_choice()).backward()
    opt.step()
    assert float(model.expected_ms(net.probs_choice()).detach()) < uniform


def test_calibration_dcs_and_classifier_options():
    space = load_space("tiny")
    table = synthetic_table(space)
    net = Supernet(space)
    idx = space.sample_indices("max")
    raw = LatencyModel(table, space, calibrated=False)
    raw_ms = raw.arch_ms(idx)
    table.set_calibration(0.25, 2.0)
    cal = LatencyModel(table, space)
    assert float(cal.expected_ms(net.onehot_choice(idx))) == pytest.approx(0.25 + 2 * raw_ms, rel=1e-5)
    assert cal.arch_ms(idx) == pytest.approx(0.25 + 2 * raw_ms)
    assert cal.arch_ms(idx, calibrated=False) == raw.arch_ms(idx) == pytest.approx(raw_ms)
    no_dcs = LatencyModel(table, space, attention="none", calibrated=False)
    assert raw_ms - no_dcs.arch_ms(idx) == pytest.approx(raw.breakdown(idx)["dcs"])
    no_cls = LatencyModel(table, space, num_classes=0, calibrated=False)
    assert raw_ms - no_cls.arch_ms(idx) == pytest.approx(raw.breakdown(idx)["classifier"])


def test_missing_entry_fails_at_construction_naming_the_key():
    space = load_space("tiny")
    table = synthetic_table(space)
    victim = next(k for k in table.entries if k.startswith("dcs/"))
    del table.entries[victim]
    with pytest.raises(LatencyTableError, match=victim):
        LatencyModel(table, space)
    with pytest.raises(LatencyTableError, match="out_chs=751"):
        LatencyModel(synthetic_table(space), space, num_classes=751)
    with pytest.raises(LatencyTableError, match="structure hash"):
        LatencyModel(synthetic_table(space), load_space("fbnetv2"))


def test_float64_choice_and_speed_on_xlarge():
    space = load_space("xlarge")
    net = Supernet(space)
    model = LatencyModel.for_supernet(synthetic_table(space, num_classes=[net.num_classes]), net)
    with torch.no_grad():
        choice = net.probs_choice()
    c64 = choice.map(torch.Tensor.double)
    assert float(model.expected_ms(c64)) == pytest.approx(float(model.expected_ms(choice)), rel=1e-5)
    model.expected_ms(choice)
    t0 = time.perf_counter()
    for _ in range(20):
        model.expected_ms(choice)
    assert (time.perf_counter() - t0) / 20 < 0.05  # a few dozen small ops per call


# -- losses ---------------------------------------------------------------------------
def test_multiplicative_loss_matches_fbnet_form_with_log1p():
    task = torch.tensor(2.0, requires_grad=True)
    lat = torch.tensor(9.0, requires_grad=True)
    out = latency_loss(task, lat, "multiplicative")
    assert float(out.detach()) == pytest.approx(2.0 * 0.2 * math.log(10.0) ** 0.6)
    out.backward()
    assert lat.grad > 0 and task.grad > 0


def test_multiplicative_loss_is_finite_and_increasing_below_one_ms():
    lat = torch.tensor(0.3, requires_grad=True)
    out = latency_loss(torch.tensor(1.0), lat, "multiplicative", alpha=0.2, beta=0.6)
    out.backward()
    assert math.isfinite(float(out.detach())) and float(out.detach()) > 0 and float(lat.grad) > 0


def test_additive_and_hard_losses():
    task = torch.tensor(1.5)
    assert float(latency_loss(task, torch.tensor(4.0), "additive", lam=0.5, target_ms=2.0)) == pytest.approx(2.5)
    below = torch.tensor(1.9, requires_grad=True)
    out = latency_loss(task, below, "hard", target_ms=2.0)
    out.backward()
    assert float(out.detach()) == pytest.approx(1.5) and float(below.grad) == 0.0
    above = torch.tensor(3.0, requires_grad=True)
    out = latency_loss(task, above, "hard", target_ms=2.0, lam=2.0)
    out.backward()
    assert float(out.detach()) == pytest.approx(1.5 + 2.0 * 0.5) and float(above.grad) > 0


@pytest.mark.parametrize("kind,params,match", [
    ("exponential", {}, "expected one of"),
    ("multiplicative", {"gamma": 1.0}, "unknown parameter"),
    ("hard", {}, "'target_ms' is required"),
    ("additive", {"target_ms": -1.0}, "expected a number >= 0"),
    ("additive", {"target_ms": 0.0}, "must be > 0"),
])
def test_loss_parameter_errors(kind, params, match):
    with pytest.raises(ConfigError, match=match):
        LatencyLoss(kind, params)


def test_search_step_with_latency_loss_reaches_the_arch_logits():
    space = load_space("tiny")
    net = Supernet(space)
    model = LatencyModel.for_supernet(synthetic_table(space), net)
    crit = LatencyLoss("hard", {"target_ms": 0.5 * model.bounds_ms()[0]})
    choice = net.sample_choice(tau=5.0)
    logits = net(torch.randn(2, *space.input_size), choice)
    loss = crit(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])), model.expected_ms(choice))
    loss.backward()
    assert all(p.grad is not None for p in net.arch_width_logits)
    assert float(crit.penalty_only(model.expected_ms(choice).detach())) > 0


def test_table_of_the_previous_attention_ops_is_refused():
    """A table profiled before the DCS-Attention ops changed (old keys, old hash) is refused."""
    import hashlib
    import json

    space = load_space("tiny")
    table = synthetic_table(space)
    canon = json.dumps({k: space.data[k] for k in ("input_size", "stem", "stages", "head")},
                       sort_keys=True, separators=(",", ":"))
    table.meta["space_hash"] = hashlib.sha256(canon.encode()).hexdigest()  # the hash before OPS_VERSION
    with pytest.raises(LatencyTableError, match="structure hash"):
        LatencyModel(table, space)
    table.meta["space_hash"] = space.structure_hash()
    old = {k: v for k, v in table.entries.items() if not k.startswith("dcs/")}
    for k in table.entries:
        if k.startswith("dcs/attention=dcs/"):
            _, f = parse_key(k)
            old[f"dcs/in_chs={f['in_chs']}/res={f['res'][0]}x{f['res'][1]}"] = 1.0  # the old key form
    table.entries = old
    with pytest.raises(LatencyTableError, match="attention=dcs/form=linear"):
        LatencyModel(table, space)
    with pytest.raises(LatencyTableError, match="form=softmax"):
        LatencyModel(synthetic_table(space), space.with_attention(form="softmax"))
