"""The figures and the report of ``bench/search_quality.py`` (docs/method.md section 10).

Every figure names its split: ``val`` is the validation split carved from the training
identities (what selection and the conclusions use), ``test`` the test query/gallery
(reported beside it, never used to choose). An architecture's figure is its mean over
retrain seeds; a searched net's effect is its mean minus the mean of its band's random
architectures, with the standard error of that difference (its own seed-to-seed
variance over its seeds plus the between-architecture variance of the random means over
their number) and a 95% interval (+-1.96 SE).
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from dnas.io import atomic_write_json, atomic_write_text

SPLITS = ("val", "test")


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def _var(xs: list[float]) -> float:
    return statistics.variance(xs) if len(xs) > 1 else 0.0


def _ci95(m: float, sd: float, n: int) -> list[float]:
    """Student-t 95% interval of a mean of ``n`` values."""
    if n < 2 or math.isnan(sd):
        return [math.nan, math.nan]
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return [m - half, m + half]


def per_arch_stats(results: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for key, runs in results.items():
        row = {"n": len(runs)}
        for split in SPLITS:
            m, sd = _mean_sd([r[f"{split}_mAP"] for r in runs])
            row[f"{split}_mean"], row[f"{split}_sd"] = m, sd
            row[f"{split}_ci95"] = _ci95(m, sd, len(runs))
        out[key] = row
    return out


def band_anova(results: dict[str, list[dict]], keys: list[str], split: str = "val") -> dict:
    """Do the networks of one band differ at all? One-way ANOVA over their retrain seeds
    (F and p), and the between-network sd of the true means, estimated as the sd of the
    means less their sampling noise (pooled seed-to-seed variance / seeds per network)."""
    from scipy.stats import f_oneway

    groups = [[r[f"{split}_mAP"] for r in results[k]] for k in keys if len(results.get(k) or []) >= 2]
    if len(groups) < 2:
        return {"n_archs": len(groups), "F": math.nan, "p": math.nan, "true_between_sd": math.nan}
    res = f_oneway(*groups)
    within = statistics.fmean(_var(g) for g in groups)
    means = [statistics.fmean(g) for g in groups]
    n_per = statistics.fmean(len(g) for g in groups)
    true_var = max(0.0, _var(means) - within / n_per)
    return {"n_archs": len(groups), "F": float(res.statistic), "p": float(res.pvalue),
            "seed_to_seed_sd": math.sqrt(within), "means_sd": _var(means) ** 0.5,
            "true_between_sd": math.sqrt(true_var)}


def seed_residual_correlation(results: dict[str, list[dict]]) -> dict:
    """Is a retrain seed's luck the trained model's or the split's? Pearson r between the
    validation and the test deviation of each run from its network's mean over seeds.
    The two splits share no identity, so noise from sampling a small split is
    independent between them: r near 1 says the seed-to-seed spread is between trained
    models (a larger split cannot remove it), r near 0 that the split is what is noisy."""
    dv, dt = [], []
    for runs in results.values():
        if len(runs) < 2:
            continue
        mv = statistics.fmean(r["val_mAP"] for r in runs)
        mt = statistics.fmean(r["test_mAP"] for r in runs)
        dv += [r["val_mAP"] - mv for r in runs]
        dt += [r["test_mAP"] - mt for r in runs]
    sxx, syy = sum(a * a for a in dv), sum(b * b for b in dt)
    r = sum(a * b for a, b in zip(dv, dt)) / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan
    return {"r": r, "n_runs": len(dv)}


def kendall_tau(x: list[float], y: list[float]) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p-value (scipy)."""
    from scipy.stats import kendalltau

    res = kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)


def split_agreement(results: dict[str, list[dict]]) -> dict:
    """Does the validation split rank what it is shown as the test split does? Kendall's tau
    over the networks between the validation and the test mAP of (1) the means over seeds,
    (2) one run (the same retrain seed on both splits, averaged over the seeds: the trained
    models), (3) one run's validation against the mean test mAP of the net's other runs
    (averaged over the seeds: what one retrain tells of an architecture). (1) and (2) near 1
    with (3) far below say the split ranks trained models and the retrain seed limits the
    ranking of architectures."""
    keys = [k for k, runs in results.items() if len(runs) >= 2]
    n_seeds = min((len(results[k]) for k in keys), default=0)
    if len(keys) < 3 or n_seeds < 2:
        return {"n_archs": len(keys), "means": math.nan, "same_run": math.nan, "other_runs": math.nan}
    means = kendall_tau([statistics.fmean(r["val_mAP"] for r in results[k]) for k in keys],
                        [statistics.fmean(r["test_mAP"] for r in results[k]) for k in keys])[0]
    same, other = [], []
    for i in range(n_seeds):
        val = [results[k][i]["val_mAP"] for k in keys]
        same.append(kendall_tau(val, [results[k][i]["test_mAP"] for k in keys])[0])
        rest = [statistics.fmean(r["test_mAP"] for j, r in enumerate(results[k][:n_seeds]) if j != i) for k in keys]
        other.append(kendall_tau(val, rest)[0])
    return {"n_archs": len(keys), "n_seeds": n_seeds, "means": means, "same_run": statistics.fmean(same),
            "other_runs": statistics.fmean(other)}


def within_band_tau(bands: list[list[str]], x: dict[str, float], y: dict[str, float]) -> tuple[float, int]:
    """Kendall's tau-b of ``x`` against ``y`` within each band (arch keys), averaged over the
    bands with weights equal to their numbers of pairs: pairs across bands (different
    latencies) never count. Returns the tau and the number of architectures."""
    num = den = 0.0
    n = 0
    for keys in bands:
        if len(keys) < 3:
            continue
        tau, _ = kendall_tau([x[k] for k in keys], [y[k] for k in keys])
        pairs = len(keys) * (len(keys) - 1) / 2
        num, den, n = num + tau * pairs, den + pairs, n + len(keys)
    return (num / den if den else math.nan), n


def _effect(searched: dict, random_means: list[float], split: str) -> dict:
    m, sd, n = searched[f"{split}_mean"], searched[f"{split}_sd"], searched["n"]
    d = m - statistics.fmean(random_means)
    se = math.sqrt((0.0 if math.isnan(sd) else sd ** 2 / n) + _var(random_means) / len(random_means))
    return {"diff": d, "se": se, "ci95": [d - 1.96 * se, d + 1.96 * se]}


def build_report(archs: dict, found: dict, bands: list[dict], results: dict, estimates: dict, space=None) -> dict:
    """Per search seed and overall figures, the targets' verdicts and the summary lines."""
    stats = per_arch_stats({k: v for k, v in results.items() if v})  # a stopped benchmark: finished retrains only
    bands = [{**b, "random": [k for k in b["random"] if k in stats],
              "seeds": [t for t in b["seeds"] if found[t]["key"] in stats]} for b in bands]
    seeds, taus = [], []
    band_keys = [list(dict.fromkeys(b["random"] + [found[t]["key"] for t in b["seeds"]])) for b in bands]
    val_means = {k: v["val_mean"] for k, v in stats.items()}
    for b in bands:
        rand = b["random"]
        for s in b["seeds"]:
            key = found[s]["key"]
            row = {"search_seed": s, "band_ms": b["centre_ms"], "latency_ms": found[s]["latency_ms"],
                   "arch": key, "num_random": len(rand), "search": found[s].get("search", {})}
            for split in SPLITS:
                mine = stats[key][f"{split}_mean"]
                others = [stats[k][f"{split}_mean"] for k in rand]
                row[f"{split}_mean"], row[f"{split}_sd"] = mine, stats[key][f"{split}_sd"]
                row[f"{split}_rank"] = 1 + sum(o > mine for o in others)
                row[f"{split}_random_mean"] = statistics.fmean(others)
                row[f"{split}_effect"] = _effect(stats[key], others, split)
            row["top_third"] = row["val_rank"] <= math.ceil((len(rand) + 1) / 3)
            tau, n = within_band_tau(band_keys, estimates[s], val_means)
            row["kendall_tau"], row["kendall_n"] = tau, n
            # the random nets alone: the searched ones were picked by this supernet's beliefs
            tau_r, n_r = within_band_tau([b2["random"] for b2 in bands], estimates[s], val_means)
            row["kendall_tau_random_only"], row["kendall_n_random_only"] = tau_r, n_r
            taus.append(tau)
            seeds.append(row)
    random_keys = list(dict.fromkeys(k for b in bands for k in b["random"]))
    overall = {}
    for split in SPLITS:
        sm = [r[f"{split}_mean"] for r in seeds]
        rm = [stats[k][f"{split}_mean"] for k in random_keys]
        d = statistics.fmean(sm) - statistics.fmean(rm)
        se = math.sqrt(_var(sm) / len(sm) + _var(rm) / len(rm))
        within = math.sqrt(statistics.fmean(stats[k][f"{split}_sd"] ** 2 for k in stats
                                            if not math.isnan(stats[k][f"{split}_sd"]))) if any(
            not math.isnan(stats[k][f"{split}_sd"]) for k in stats) else math.nan
        overall[split] = {"searched_mean": statistics.fmean(sm), "searched_sd": _var(sm) ** 0.5,
                          "random_mean": statistics.fmean(rm), "random_sd_between": _var(rm) ** 0.5,
                          "diff": d, "se": se, "ci95": [d - 1.96 * se, d + 1.96 * se],
                          "seed_to_seed_sd": within}
    n_top = sum(r["top_third"] for r in seeds)
    targets = {
        "top_third": {"count": n_top, "of": len(seeds), "needed": math.ceil(0.8 * len(seeds)),
                      "met": n_top >= math.ceil(0.8 * len(seeds))},
        "test_above_random": {"diff": overall["test"]["diff"], "se": overall["test"]["se"],
                              "met": overall["test"]["diff"] > overall["test"]["se"]},
        "val_ranks_networks": {"seed_to_seed_sd": overall["val"]["seed_to_seed_sd"],
                               "between_sd": overall["val"]["random_sd_between"],
                               "rule": "seed-to-seed sd at most half the between-network sd",
                               "met": overall["val"]["seed_to_seed_sd"] <= 0.5 * overall["val"]["random_sd_between"]},
        "kendall_tau": {"mean": statistics.fmean(taus), "per_seed": taus,
                        "n_archs": [r["kendall_n"] for r in seeds],
                        "met": statistics.fmean(taus) >= 0.3 and min(r["kendall_n"] for r in seeds) >= 20},
    }
    per_arch = [{"arch": k, "kind": archs[k].get("kind"), "latency_ms": archs[k]["latency_ms"],
                 "params": archs[k].get("params"), **stats[k],
                 "runs": results[k]} for k in archs if k in stats]
    all_keys = [k for keys in band_keys for k in keys]
    params = {k: float(archs[k].get("params", math.nan)) for k in stats}
    report = {"seed_residual_correlation": seed_residual_correlation({k: results[k] for k in stats}),
              "split_agreement": split_agreement({k: results[k] for k in stats}),
              "kendall_params_within_band": within_band_tau(band_keys, params, val_means)[0],
              "band_anova": [{"band_ms": b["centre_ms"], **band_anova(results, b["random"])} for b in bands],
              "kendall_all_bands": {str(s): kendall_tau([estimates[s][k] for k in all_keys],
                                                        [val_means[k] for k in all_keys])[0] for s in estimates},
              "per_search_seed": seeds, "overall": overall, "targets": targets, "bands": bands,
              "per_arch": sorted(per_arch, key=lambda r: -r["val_mean"]),
              "estimates": {str(s): e for s, e in estimates.items()}}
    report["summary_lines"] = summary_lines(report)
    return report


def _pm(m: float, sd: float) -> str:
    return f"{m:.1f}" + ("" if math.isnan(sd) else f" +- {sd:.1f}")


def _ci(ci) -> str:
    return "" if not ci or any(math.isnan(x) for x in ci) else f"{ci[0]:.1f}..{ci[1]:.1f}"


def summary_lines(r: dict) -> list[str]:
    t, o = r["targets"], r["overall"]
    lines = ["search quality (mAP in %, mean +- sd over retrain seeds; val: validation split carved from the "
             "training ids, used for every conclusion; test: test query/gallery, reported only)"]
    for s in r["per_search_seed"]:
        lines.append(f"  search seed {s['search_seed']}: {s['latency_ms']:.3f} ms | val {_pm(s['val_mean'], s['val_sd'])}"
                     f" rank {s['val_rank']}/{s['num_random'] + 1} (random {s['val_random_mean']:.1f}) | test "
                     f"{_pm(s['test_mean'], s['test_sd'])} rank {s['test_rank']}/{s['num_random'] + 1} | tau "
                     f"{s['kendall_tau']:+.2f} (n={s['kendall_n']}; random nets only "
                     f"{s['kendall_tau_random_only']:+.2f}, n={s['kendall_n_random_only']})")
    for split in ("val", "test"):
        x = o[split]
        lines.append(f"  {split}: searched {x['searched_mean']:.1f} vs random {x['random_mean']:.1f}: diff "
                     f"{x['diff']:+.1f} +- {x['se']:.1f} (SE; 95% CI {x['ci95'][0]:+.1f}..{x['ci95'][1]:+.1f}); "
                     f"one net's seed-to-seed sd {x['seed_to_seed_sd']:.1f} vs between-net sd "
                     f"{x['random_sd_between']:.1f}")
    for b in r.get("band_anova", []):
        if b["n_archs"] >= 2:
            lines.append(f"  band {b['band_ms']:.3f} ms, {b['n_archs']} random nets (val): do they differ? ANOVA "
                         f"F {b['F']:.1f}, p {b['p']:.2g}; seed-to-seed sd {b['seed_to_seed_sd']:.1f}, sd of "
                         f"the means {b['means_sd']:.1f}, of the true means (less seed noise) "
                         f"{b['true_between_sd']:.1f}")
    c = r.get("seed_residual_correlation")
    if c and not math.isnan(c["r"]):
        lines.append(f"  a retrain seed's deviation from its net's mean, val against test: r {c['r']:+.2f} "
                     f"({c['n_runs']} runs; near 1: the spread is between trained models, not the split's noise)")
    a = r.get("split_agreement")
    if a and not math.isnan(a["means"]):
        lines.append(f"  val against test, Kendall tau over {a['n_archs']} nets: means over seeds {a['means']:+.2f}, "
                     f"one run on both splits {a['same_run']:+.2f}, one run's val against the other runs' test "
                     f"{a['other_runs']:+.2f} (the split ranks trained models; one retrain ranks architectures "
                     "only as well as the last figure)")
    lines.append(f"  within-band Kendall tau against stand-alone val mAP: supernet estimates "
                 f"{t['kendall_tau']['mean']:+.2f} (mean over search seeds); parameter count "
                 f"{r['kendall_params_within_band']:+.2f} (a reference predictor)")
    lines.append(f"  targets: top third {t['top_third']['count']}/{t['top_third']['of']} "
                 f"(need {t['top_third']['needed']}): {'met' if t['top_third']['met'] else 'MISSED'}; "
                 f"test diff > SE: {'met' if t['test_above_random']['met'] else 'MISSED'}; "
                 f"val ranks networks (seed sd {t['val_ranks_networks']['seed_to_seed_sd']:.1f} <= half the "
                 f"between-net {t['val_ranks_networks']['between_sd']:.1f}): "
                 f"{'met' if t['val_ranks_networks']['met'] else 'MISSED'}; "
                 f"Kendall tau mean {t['kendall_tau']['mean']:+.2f} >= 0.3: "
                 f"{'met' if t['kendall_tau']['met'] else 'MISSED'}")
    return lines


def write_report(report: dict, prefix: Path) -> None:
    """``PREFIX.json`` (everything) and ``PREFIX.md`` (the tables)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(prefix.with_suffix(".json"), report)
    md = ["# Search quality: searched networks against random ones of the same latency", "",
          f"Command: `{report.get('command', '')}`", "",
          f"Conditions: {report.get('conditions', '')}; wall clock {report.get('wall_s', 0) / 60:.1f} min; "
          f"latency cost `{report.get('latency_cost', '')}`.", "", "```", *report["summary_lines"], "```", "",
          "## Per search seed", "",
          "| seed | latency ms | val mAP | val rank | random val | test mAP | test rank | random test | "
          "test diff (95% CI) | Kendall tau (n) | tau, random nets only (n) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["per_search_seed"]:
        e = s["test_effect"]
        md.append(f"| {s['search_seed']} | {s['latency_ms']:.3f} | {_pm(s['val_mean'], s['val_sd'])} | "
                  f"{s['val_rank']}/{s['num_random'] + 1} | {s['val_random_mean']:.1f} | "
                  f"{_pm(s['test_mean'], s['test_sd'])} | {s['test_rank']}/{s['num_random'] + 1} | "
                  f"{s['test_random_mean']:.1f} | {e['diff']:+.1f} ({e['ci95'][0]:+.1f}..{e['ci95'][1]:+.1f}) | "
                  f"{s['kendall_tau']:+.2f} ({s['kendall_n']}) | "
                  f"{s['kendall_tau_random_only']:+.2f} ({s['kendall_n_random_only']}) |")
    md += ["", "## The searches (the supernet itself, from each run's summary.json)", "",
           "| seed | argmax latency ms | params (no classifier) | decided (normalised entropy <= 0.5) | "
           "mean normalised entropy | supernet best val mAP | supernet test mAP |", "|---|---|---|---|---|---|---|"]
    for s in report["per_search_seed"]:
        o = s.get("search") or {}
        if o:
            md.append(f"| {s['search_seed']} | {s['latency_ms']:.3f} | {o['params'] / 1e3:.1f} k | "
                      + ", ".join(f"{a} {v}" for a, v in o["decided"].items()) + " | "
                      + ", ".join(f"{a} {v:.2f}" for a, v in o["entropy_mean"].items())
                      + f" | {o['supernet_best_val_mAP']:.1f} | {o['supernet_test_mAP']:.1f} |")
    md += ["", "## Every architecture (mean +- sd over retrain seeds; val 95% CI of the mean, Student t)", "",
           "| arch | kind | latency ms | params | retrain seeds | val mAP | val 95% CI | test mAP | "
           "supernet estimates (val, per search seed) |", "|---|---|---|---|---|---|---|---|---|"]
    for a in report["per_arch"]:
        est = [f"{e[a['arch']]:.1f}" for e in report["estimates"].values() if a["arch"] in e]
        md.append(f"| `{json.loads(a['arch'])}` | {a['kind']} | {a['latency_ms']:.3f} | {a.get('params') or 0:,} | "
                  f"{a['n']} | "
                  f"{_pm(a['val_mean'], a['val_sd'])} | {_ci(a.get('val_ci95'))} | "
                  f"{_pm(a['test_mean'], a['test_sd'])} | {' '.join(est)} |")
    atomic_write_text(prefix.with_suffix(".md"), "\n".join(md) + "\n")
