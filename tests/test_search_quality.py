"""The equal-latency baseline and the search-quality benchmark's pieces: random
architectures in a latency band, the supernet's one-hot estimates with re-estimated BN
statistics, the data seed apart from the run seed, the report's statistics, and the
benchmark end to end in its smoke mode."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dnas.data.synthetic import synthetic_reid_from_recipe
from dnas.errors import DnasError
from dnas.latency.auto import resolve_latency_cost
from dnas.latency.band import arch_key, sample_in_band
from dnas.retrain.config import ReIDConfig
from dnas.search.config import SearchConfig
from dnas.search.estimate import finetune_subnet, recalibrate_bn
from dnas.space import load_space

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_cost():
    space = load_space("tiny")
    cost = resolve_latency_cost(str(ROOT / "latency_tables/cpu_tiny_b8_fp32.csv"), space, "cpu", supernet="tiny",
                                batch=8, budget_s=0, progress=False)
    return space, cost.model


def test_band_draws_are_distinct_in_band_and_prefix_stable(tiny_cost):
    space, model = tiny_cost
    got = sample_in_band(space, model.arch_ms, 1.62, 0.03, 12, seed=0)
    keys = [arch_key(i) for i, _ in got]
    assert len(set(keys)) == 12
    for idx, lat in got:
        assert abs(lat / 1.62 - 1) <= 0.03 and lat == pytest.approx(model.arch_ms(idx))
    # a band shifted a little keeps the architectures of the overlap, in the same order
    shifted = [arch_key(i) for i, lat in sample_in_band(space, model.arch_ms, 1.63, 0.03, 12, seed=0)]
    common = [k for k in keys if k in shifted]
    assert len(common) >= 6 and common == [k for k in shifted if k in keys]
    # exclusions are never returned; another seed draws another set
    again = sample_in_band(space, model.arch_ms, 1.62, 0.03, 4, seed=0, exclude={keys[0]})
    assert keys[0] not in [arch_key(i) for i, _ in again]
    assert [arch_key(i) for i, _ in sample_in_band(space, model.arch_ms, 1.62, 0.03, 12, seed=1)] != keys


def test_band_without_enough_archs_is_one_clear_error(tiny_cost):
    space, model = tiny_cost
    with pytest.raises(DnasError, match=r"only \d+ of 5 .*0\.500 ms .*widen --tolerance"):
        sample_in_band(space, model.arch_ms, 0.5, 0.03, 5)  # tiny spans about 1.27-1.99 ms
    with pytest.raises(DnasError, match="tolerance in"):
        sample_in_band(space, model.arch_ms, 1.6, 1.5, 5)


def test_data_seed_not_run_seed_chooses_the_synthetic_set():
    search, retrain = SearchConfig(seed=3, synthetic_ids=90), ReIDConfig(seed=0, synthetic_ids=90)
    assert synthetic_reid_from_recipe(search) == synthetic_reid_from_recipe(retrain)
    assert synthetic_reid_from_recipe(search).num_train_ids == 90
    assert synthetic_reid_from_recipe(SearchConfig(data_seed=2)).seed == 2


def test_search_and_retrain_see_the_same_validation_split_whatever_the_seed():
    from dnas.retrain.reid import build_reid_data
    from dnas.runtime import Runtime
    from dnas.search.run import build_search_data

    rt = Runtime(torch.device("cpu"), 0, 1, 0)
    keys = dict(synthetic_ids=14, val_ids_fraction=0.3, val_min_ids=2, p=4, k=2, workers=0)
    search = build_search_data(SearchConfig(seed=5, **keys), rt)
    retrain = build_reid_data(ReIDConfig(seed=1, **keys), rt, 64, 32)
    assert search.validation.num_ids == 4 == retrain.validation.num_ids
    assert search.validation.query == retrain.validation.query
    assert search.validation.gallery == retrain.validation.gallery


def test_search_and_retrain_map_a_recipe_to_the_same_data_config():
    """One mapping (ReIDDataConfig.from_recipe): a search and a retrain recipe with the same
    data keys give the same loaders' settings but for the search's architecture split."""
    import dataclasses

    from dnas.data.loaders import ReIDDataConfig

    keys = {"synthetic_ids": 40, "val_ids_fraction": 0.25, "data_seed": 3, "erasing_prob": 0.0, "flip_prob": 0.3,
            "p": 4, "k": 2, "workers": 0}
    search = ReIDDataConfig.from_recipe(SearchConfig(**keys, seed=5), height=64, width=32, test_batch_size=32,
                                         arch_fraction=0.2)
    retrain = ReIDDataConfig.from_recipe(ReIDConfig(**keys, seed=1), height=64, width=32, test_batch_size=32)
    a, b = dataclasses.asdict(search), dataclasses.asdict(retrain)
    assert {k for k in a if a[k] != b[k]} == {"arch_fraction", "seed"}
    assert search.synthetic_reid.seed == retrain.synthetic_reid.seed == 3 and search.erasing_prob == 0.0


@pytest.mark.parametrize("search, retrain", [("tiny_synthetic", "reid_synthetic"),
                                             ("tiny_synthetic_240", "reid_synthetic_240")])
def test_paired_recipes_describe_one_data_set(search, retrain):
    """A shipped search recipe and the retrain recipe that goes with it load and read the
    same synthetic set, validation split and augmentation."""
    from dnas.config import load_config
    from dnas.resources import find_data_file

    s = load_config(SearchConfig, find_data_file(search, "search", ".yaml"))
    r = load_config(ReIDConfig, find_data_file(retrain, "retrain", ".yaml"))
    for key in ("data", "synthetic_ids", "val_ids_fraction", "val_seed", "data_seed", "erasing_prob", "flip_prob"):
        assert getattr(s, key) == getattr(r, key), key


def test_bn_recalibration_takes_the_statistics_of_the_data():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x, choice):
            return self.bn(x * choice)

    torch.manual_seed(0)
    batches = [(torch.randn(64, 3) * 2 + 5, None) for _ in range(4)]
    net = Net()
    recalibrate_bn(net, batches, 0.5, torch.device("cpu"), batches=3)
    seen = torch.cat([b[0] for b in batches[:3]]) * 0.5
    assert not net.training
    assert torch.allclose(net.bn.running_mean, seen.mean(0), atol=1e-5)
    assert torch.allclose(net.bn.running_var, seen.var(0), rtol=0.05)


def test_finetune_trains_the_chosen_weights_only():
    """finetune_subnet: the loss of the fixed subnet falls; the architecture parameters and
    the weights the choice does not use stay as they were."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.paths = nn.ModuleList([nn.Linear(6, 4), nn.Linear(6, 4)])
            self.alpha = nn.Parameter(torch.zeros(2))
            self.head = nn.Linear(4, 3)

        def weight_parameters(self):
            return [p for n, p in self.named_parameters() if n != "alpha"]

        def forward(self, x, choice, return_features=True):
            feat = self.paths[choice](x)
            return {"logits": self.head(feat), "global_feat": feat}

    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(4)
    batches = [(torch.randn(12, 6) + labels[:, None].float(), labels) for _ in range(3)]
    net = Net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}

    def loss():
        with torch.no_grad():
            return nn.functional.cross_entropy(net(batches[0][0], 1)["logits"], labels).item()

    start = loss()
    finetune_subnet(net, batches, 1, torch.device("cpu"), steps=20, lr=0.05)
    assert loss() < start and not net.training
    assert torch.equal(net.alpha, before["alpha"]) and torch.equal(net.paths[0].weight, before["paths.0.weight"])
    assert not torch.equal(net.paths[1].weight, before["paths.1.weight"])


def test_search_seeds_share_a_band_when_their_latencies_are_close():
    from bench.search_quality import group_bands

    found = {s: {"latency_ms": lat} for s, lat in enumerate([1.60, 1.62, 1.64, 1.50, 1.80])}
    bands = group_bands(found, 0.03)
    assert [b["seeds"] for b in bands] == [[3], [0, 1, 2], [4]]
    assert bands[1]["centre_ms"] == pytest.approx(1.62)


def test_report_statistics_and_targets():
    from bench.search_quality_report import build_report

    def runs(val, test):
        return [{"seed": i, "val_mAP": v, "test_mAP": t} for i, (v, t) in enumerate(zip(val, test))]

    results = {"s": runs([60, 62], [30, 32]), "a": runs([50, 52], [20, 22]), "b": runs([55, 57], [25, 27]),
               "c": runs([40, 42], [10, 12])}
    archs = {k: {"latency_ms": 1.6, "kind": "random" if k != "s" else "searched"} for k in results}
    found = {0: {"key": "s", "latency_ms": 1.6}}
    bands = [{"seeds": [0], "centre_ms": 1.6, "random": ["a", "b", "c"]}]
    estimates = {0: {"s": 9.0, "a": 5.0, "b": 6.0, "c": 1.0}}
    r = build_report(archs, found, bands, results, estimates)
    seed = r["per_search_seed"][0]
    assert seed["val_rank"] == 1 and seed["top_third"] and seed["kendall_tau"] == pytest.approx(1.0)
    assert seed["kendall_tau_random_only"] == pytest.approx(1.0) and seed["kendall_n_random_only"] == 3
    swapped = {0: {"s": 9.0, "a": 6.0, "b": 5.0, "c": 1.0}}  # a and b the wrong way round: 2 of 3 pairs right
    assert build_report(archs, found, bands, results, swapped)["per_search_seed"][0][
        "kendall_tau_random_only"] == pytest.approx(1 / 3)
    assert seed["val_random_mean"] == pytest.approx(148 / 3)
    eff = seed["test_effect"]  # 31 - mean(21, 26, 11) = 35/3; SE^2 = 2/2 + (175/3)/3
    assert eff["diff"] == pytest.approx(35 / 3) and eff["se"] == pytest.approx(math.sqrt(1 + 175 / 9))
    assert r["overall"]["val"]["seed_to_seed_sd"] == pytest.approx(math.sqrt(2))
    assert r["targets"]["val_ranks_networks"]["met"] and not r["targets"]["kendall_tau"]["met"]  # n < 20
    noisy = {k: runs([v[0]["val_mAP"] - 4, v[1]["val_mAP"] + 4], [30, 32]) for k, v in results.items()}
    r = build_report(archs, found, bands, noisy, estimates)  # seed sd 7.1, between-net sd 7.6: not well below
    assert r["overall"]["val"]["seed_to_seed_sd"] == pytest.approx(math.sqrt(50))
    assert not r["targets"]["val_ranks_networks"]["met"]


@pytest.mark.slow
def test_benchmark_smoke_runs_and_resumes(tmp_path):
    work = tmp_path / "sq"
    cmd = [sys.executable, "-m", "bench.search_quality", "--smoke", "--work", str(work), "--results",
           str(tmp_path / "res")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "res.json").read_text())
    assert len(report["per_search_seed"]) == 1 and (tmp_path / "res.md").is_file()
    for row in report["per_search_seed"]:
        assert 1 <= row["val_rank"] <= row["num_random"] + 1 and 0 <= row["test_mean"] <= 100
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 to run" in again.stdout  # a finished benchmark redoes nothing
    assert json.loads((tmp_path / "res.json").read_text())["per_search_seed"] == report["per_search_seed"]
    # the supernet-ranking tool scores the same archs with the smoke search's supernet, no retrain
    search_dir = next((work / "searches").glob("*/s0"))
    rank = subprocess.run([sys.executable, "-m", "bench.supernet_ranking", "--report", str(tmp_path / "res.json"),
                           "--searches", str(search_dir), "--bn-batches", "1", "--out", str(tmp_path / "rank.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rank.returncode == 0, rank.stdout + rank.stderr
    ranked = json.loads((tmp_path / "rank.json").read_text())
    assert len(ranked["supernets"][0]["estimates"]) == len(report["per_arch"]) == len(ranked["archs"])
    assert all(0 <= v <= 100 for v in ranked["supernets"][0]["estimates"].values())
    assert ranked["supernets"][0]["n_within_band"] == 0  # a band of two nets has no tau
    # a fresh checkout has the ledger but no run directories: the estimates come from the ledger
    import shutil

    shutil.rmtree(work / "searches")
    shutil.rmtree(work / "retrains")
    fresh = subprocess.run(cmd + ["--report-only"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "no checkpoint" not in fresh.stdout
    assert json.loads((tmp_path / "res.json").read_text())["estimates"] == report["estimates"]


def test_supernet_ranking_bad_input_is_one_line_and_exit_2(tmp_path):
    from bench.supernet_ranking import main

    empty = tmp_path / "report.json"
    empty.write_text(json.dumps({"per_arch": []}))
    search = tmp_path / "search"
    search.mkdir()
    assert main(["--report", str(empty), "--searches", str(search)]) == 2
    assert main(["--report", str(tmp_path / "missing.json"), "--searches", str(search)]) == 2
    report = tmp_path / "ok.json"
    report.write_text(json.dumps({"per_arch": [{"arch": '{"width": [0]}', "kind": "random", "params": 1, "n": 1,
                                                "val_mean": 50.0, "test_mean": 50.0}]}))
    assert main(["--report", str(report), "--searches", str(search)]) == 2  # no checkpoint-last.pt
    assert not (tmp_path / "out.json").exists()
    before = report.read_text()
    assert main(["--report", str(report), "--searches", str(search), "--out", str(report)]) == 2
    assert report.read_text() == before  # never writes into the report it reads


def test_band_anova_tells_real_differences_from_seed_noise():
    from bench.search_quality_report import band_anova, per_arch_stats

    def runs(*vals):
        return [{"val_mAP": v, "test_mAP": v} for v in vals]

    apart = {"a": runs(70, 71, 69), "b": runs(80, 79, 81), "c": runs(60, 61, 59)}
    res = band_anova(apart, ["a", "b", "c"])
    assert res["p"] < 1e-4 and res["true_between_sd"] == pytest.approx(10, abs=0.5)
    noise = {"a": runs(70, 80, 60), "b": runs(71, 61, 79), "c": runs(69, 79, 62)}
    res = band_anova(noise, ["a", "b", "c"])
    assert res["p"] > 0.5 and res["true_between_sd"] == 0.0
    ci = per_arch_stats(apart)["b"]["val_ci95"]
    assert ci[0] < 80 < ci[1] and ci[1] - ci[0] == pytest.approx(2 * 4.303 * 1 / math.sqrt(3), rel=1e-3)


@pytest.mark.slow
def test_estimates_are_in_the_ledger_before_any_retrain(tmp_path, monkeypatch):
    """A benchmark stopped during its retrains has already put the supernet estimates in the
    ledger (they need the searches' checkpoints, which a fresh checkout lacks)."""
    import bench.search_quality as sq

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sq, "run_retrains", stopped)
    monkeypatch.chdir(ROOT)
    with pytest.raises(KeyboardInterrupt):
        sq.main(["--smoke", "--work", str(tmp_path / "sq")])
    ledger = json.loads((tmp_path / "sq" / "ledger.json").read_text())
    (entry, estimates), = ledger["estimates"].items()
    assert entry in ledger["searches"] and len(estimates) == 2  # the searched arch and one random


def test_seed_residual_correlation_tells_model_luck_from_split_noise():
    from bench.search_quality_report import seed_residual_correlation

    def runs(pairs):
        return [{"val_mAP": v, "test_mAP": t} for v, t in pairs]

    # a lucky seed is lucky on both splits: the spread is the trained model's
    shared = {"a": runs([(70, 60), (74, 64), (66, 56)]), "b": runs([(50, 45), (52, 47)])}
    c = seed_residual_correlation(shared)
    assert c["r"] == pytest.approx(1.0) and c["n_runs"] == 5
    # the validation split moves against the test split: its own sampling noise
    opposite = {"a": runs([(70, 60), (74, 56), (66, 64)]), "b": runs([(50, 47), (52, 45)])}
    assert seed_residual_correlation(opposite)["r"] == pytest.approx(-1.0)
    assert math.isnan(seed_residual_correlation({"a": runs([(70, 60)])})["r"])  # one seed: nothing to compare


def test_band_spread_report_states_the_ratio_of_seed_to_true_spread():
    from bench.band_spread import spread_report, summary_lines

    def runs(*vals):
        return [{"seed": i, "val_mAP": v, "test_mAP": v - 5} for i, v in enumerate(vals)]

    archs = {k: {"latency_ms": 1.6, "params": 40000} for k in "abc"}
    rep = spread_report(archs, {"a": runs(70, 72), "b": runs(80, 82), "c": runs(60, 62)})
    val = rep["anova_val"]
    assert val["seed_to_seed_sd"] == pytest.approx(math.sqrt(2))
    assert val["ratio"] == pytest.approx(val["seed_to_seed_sd"] / val["true_between_sd"]) and val["ratio"] < 0.2
    rep.update(band="band 1.600 ms", seeds=2, retrain="r.yaml")
    lines = summary_lines(rep)
    assert lines[1].lstrip().startswith("b") and "seed sd / true sd 0.1" in lines[-3] and "retrain seeds for a mean within half the true sd: 1" in lines[-3]
    same = spread_report(archs, {"a": runs(70, 80), "b": runs(80, 70), "c": runs(75, 75)})
    assert same["anova_val"]["true_between_sd"] == 0 and same["anova_val"]["ratio"] == math.inf
    assert same["anova_val"]["seeds_for_half"] is None


@pytest.mark.slow
def test_band_spread_smoke_runs_and_resumes(tmp_path):
    cmd = [sys.executable, "-m", "bench.band_spread", "--work", str(tmp_path / "w"), "--latency-ms", "1.65",
           "--random", "2", "--seeds", "2", "--results", str(tmp_path / "res")]
    cmd += [a for kv in ("synthetic_ids=12", "val_ids_fraction=0.34", "val_min_ids=4", "p=4", "epochs=1",
                         "max_steps_per_epoch=2", "eval_every=1", "export_onnx=false") for a in ("--set", kv)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads((tmp_path / "res.json").read_text())
    assert len(rep["per_arch"]) == 2 and all(len(r["runs"]) == 2 for r in rep["per_arch"])
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 retrains to run" in again.stdout


def test_split_agreement_separates_trained_models_from_architectures():
    from bench.search_quality_report import split_agreement

    # each run's val and test agree (the split ranks trained models), but a net's two
    # seeds disagree about the order of the nets (a retrain ranks architectures badly)
    results = {"a": [{"val_mAP": 70, "test_mAP": 71}, {"val_mAP": 50, "test_mAP": 51}],
               "b": [{"val_mAP": 60, "test_mAP": 61}, {"val_mAP": 60, "test_mAP": 61}],
               "c": [{"val_mAP": 50, "test_mAP": 51}, {"val_mAP": 70, "test_mAP": 71}]}
    a = split_agreement(results)
    assert a["same_run"] == pytest.approx(1.0) and a["other_runs"] == pytest.approx(-1.0)
    assert a["n_archs"] == 3 and a["n_seeds"] == 2
    assert math.isnan(split_agreement({"a": results["a"]})["means"])  # too few nets to rank
