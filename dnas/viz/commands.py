"""The four ``dnas-visualize`` subcommands as library calls: each writes its PNGs and the
numbers behind them (CSV / JSON / NPZ) into an output directory (paper section 4.7,
Appendices A and B; see :mod:`dnas.viz`)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dnas.errors import DnasError
from dnas.runlog import read_csv_rows, save_figure
from dnas.viz.loading import LoadedModel, ReIDImages, embed


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _models_json(models: Sequence[LoadedModel]) -> list[dict]:
    return [{"label": m.label, "path": m.path, "weights": m.weights} for m in models]


# -- gradcam -------------------------------------------------------------------------------
def choose_queries(data: ReIDImages, ids: Sequence[int] | None, num: int, seed: int) -> list[int]:
    """Query indices: every query image of ``ids``, else ``num`` seeded ones with a true match."""
    q_pids = np.asarray([p for _, p, _ in data.query])
    if ids:
        missing = sorted(set(ids) - set(q_pids.tolist()))
        if missing:
            raise DnasError(f"--ids {' '.join(map(str, missing))}: no query image of this identity in {data.spec}; "
                            f"the query holds {len(set(q_pids.tolist()))} identities, e.g. "
                            f"{' '.join(map(str, sorted(set(q_pids.tolist()))[:8]))}")
        wanted = set(ids)
        return [i for i, p in enumerate(q_pids) if p in wanted]
    cams: dict[int, set] = {}
    for _, p, c in data.gallery:
        cams.setdefault(p, set()).add(c)
    with_match = [i for i, (_, p, c) in enumerate(data.query) if cams.get(p, set()) - {c}]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(with_match, size=min(num, len(with_match)), replace=False).tolist())


def best_true_matches(qf: torch.Tensor, gf: torch.Tensor, query: Sequence, gallery: Sequence) -> list[int]:
    """Per query, the gallery index of its nearest image of the same identity from another camera."""
    from dnas.reid.metrics import pairwise_distance

    dist = pairwise_distance(qf.float(), gf.float()).numpy()
    out = []
    for i, (_, pid, cam) in enumerate(query):
        cand = [j for j, (_, p, c) in enumerate(gallery) if p == pid and c != cam]
        if not cand:
            raise DnasError(f"--target match: query {query[i][0]} has no true match in the gallery "
                            "(same identity, another camera); use --target logit or other --ids")
        out.append(cand[int(np.argmin(dist[i, cand]))])
    return out


def gradcam_command(models: Sequence[LoadedModel], data: ReIDImages, out: Path, *, num: int = 8,
                    ids: Sequence[int] | None = None, seed: int = 0, target: str = "logit",
                    grid: tuple[int, int] | None = None, device: torch.device = torch.device("cpu"),
                    progress: bool = True) -> dict:
    """Grad-CAM of the same query images for each model: ``gradcam.png``, ``gradcam.csv``
    (one row per image and model), ``gradcam_maps.npz`` (label -> (N, H, W)), ``gradcam.json``."""
    from dnas.viz.gradcam import draw_gradcam, gradcam_maps

    chosen = choose_queries(data, ids, num, seed)
    items = [data.query[i] for i in chosen]
    images, pictures = data.tensors(items), data.pictures(items)
    gallery = [g for g in data.gallery if g[1] in {p for _, p, _ in items}]
    maps, rows, meta = {}, [], []
    for m in models:
        refs, match = None, [-1] * len(items)
        if target == "match":
            qf, gf = embed(m, data, items, device, progress), embed(m, data, gallery, device, progress)
            match = best_true_matches(qf, gf, items, gallery)
            refs = gf[match]
        r = gradcam_maps(m.model.to(device), images, target, refs, grid=grid)
        maps[m.label] = r["maps"]
        meta.append({"label": m.label, "layer": r["layer"], "grid": r["grid"]})
        for n, (path, pid, cam) in enumerate(items):
            peak = np.unravel_index(int(np.argmax(r["maps"][n])), r["maps"][n].shape)
            rows.append({"image": path, "query_index": chosen[n], "pid": pid, "camid": cam, "model": m.label,
                         "target": target, "target_class": int(r["classes"][n]),
                         "target_match": gallery[match[n]][0] if match[n] >= 0 else "",
                         "target_score": f"{r['scores'][n]:.6g}", "map_mean": f"{float(r['maps'][n].mean()):.6g}",
                         "peak_row": int(peak[0]), "peak_col": int(peak[1])})
    what = "predicted identity logit" if target == "logit" else "similarity to the best true match"
    captions = [f"id {pid} cam {cam + 1}" for _, pid, cam in items]
    save_figure(draw_gradcam(pictures, maps, captions, f"Grad-CAM ({what}), {data.spec} query"), out / "gradcam.png")
    _write_csv(out / "gradcam.csv", rows)
    np.savez_compressed(out / "gradcam_maps.npz", **{f"{i}_{m['label']}": maps[m["label"]]
                                                      for i, m in enumerate(meta)})
    summary = {"target": target, "data": data.spec, "data_fingerprint": data.fingerprint,
               "images": [it[0] for it in items], "query_indices": chosen,
               "input_size": [data.height, data.width], "models": [{**a, **b} for a, b in zip(_models_json(models),
                                                                                              meta)]}
    _write_json(out / "gradcam.json", summary)
    return summary


# -- tsne ----------------------------------------------------------------------------------
def tsne_command(models: Sequence[LoadedModel], data: ReIDImages, out: Path, *, split: str = "test",
                 num_ids: int = 10, seed: int = 0, knn: int = 5, perplexity: float | None = None, lda: int = 0,
                 device: torch.device = torch.device("cpu"), progress: bool = True) -> dict:
    """t-SNE of the images of ``num_ids`` identities per model: ``tsne.png``, ``tsne.csv``
    (one row per image, ``<label>_x``/``<label>_y`` per model), ``tsne.json``. With ``lda``
    the t-SNE and the figures in the title use the standardised LDA projection (the
    embedding's figures are in the JSON too)."""
    from dnas.viz.tsne import choose_identities, draw_tsne, fisher_ratio, knn_accuracy, lda_features, tsne_2d

    items_all = data.split(split)
    pids_all = np.asarray([p for _, p, _ in items_all])
    ids = choose_identities(pids_all, num_ids, seed, exclude=(-1,) if split == "train" else (-1, 0))
    if len(ids) < 2:
        raise DnasError(f"--split {split} of {data.spec}: fewer than 2 identities with 2 images; "
                        "t-SNE needs at least 2")
    items = [it for it in items_all if it[1] in set(ids.tolist())]
    pids = np.asarray([p for _, p, _ in items])
    panels, table = [], [{"image": p, "pid": pid, "camid": c} for p, pid, c in items]
    for m in models:
        f = embed(m, data, items, device, progress).numpy()
        raw = {"embedding_knn_accuracy": knn_accuracy(f, pids, knn), "embedding_fisher_ratio": fisher_ratio(f, pids)}
        shown = lda_features(f, pids, lda) if lda else f
        coords, used = tsne_2d(shown, seed, perplexity)
        panel = {"label": m.label, "coords": coords, "knn_k": knn, "perplexity": used, "features_dim": shown.shape[1],
                 "knn_accuracy": knn_accuracy(shown, pids, knn) if lda else raw["embedding_knn_accuracy"],
                 "fisher_ratio": fisher_ratio(shown, pids) if lda else raw["embedding_fisher_ratio"], **raw}
        panels.append(panel)
        for row, (x, y) in zip(table, coords):
            row[f"{m.label}_x"], row[f"{m.label}_y"] = f"{x:.5g}", f"{y:.5g}"
    what = f"LDA-projected embeddings ({panels[0]['features_dim']} dims, standardised)" if lda else "embeddings"
    title = f"t-SNE of the {what}: {len(ids)} identities, {len(items)} images ({split} split of {data.spec})"
    save_figure(draw_tsne(panels, pids, title), out / "tsne.png")
    _write_csv(out / "tsne.csv", table)
    summary = {"data": data.spec, "data_fingerprint": data.fingerprint, "split": split,
               "identities": ids.tolist(), "num_images": len(items),
               "separability_on": ("the standardised LDA projection" if lda else "the embeddings")
               + " (not the 2-D t-SNE map)", "lda_components": lda,
               "models": [{**meta, **{k: v for k, v in p.items() if k not in ("label", "coords")}}
                          for meta, p in zip(_models_json(models), panels)]}
    _write_json(out / "tsne.json", summary)
    return summary


# -- rank ----------------------------------------------------------------------------------
def rank_command(model: LoadedModel, data: ReIDImages, out: Path, *, num: int = 5, topk: int = 10,
                 max_queries: int = 0, device: torch.device = torch.device("cpu"), progress: bool = True) -> dict:
    """Ranked lists of the worst and the best queries by AP: ``rank_worst.png``,
    ``rank_best.png``, ``rank.csv`` (one row per query), ``rank.json``."""
    from dnas.reid.metrics import evaluate_features
    from dnas.viz.rank import draw_ranked, ranked_lists, worst_and_best

    query = data.query
    if max_queries and len(query) > max_queries:  # evenly spaced, as the evaluation's eval_max_queries
        query = [query[i] for i in np.linspace(0, len(query) - 1, max_queries).round().astype(int)]
    qf, gf = embed(model, data, query, device, progress), embed(model, data, data.gallery, device, progress)
    q_pids, q_cams = (np.asarray([it[k] for it in query]) for k in (1, 2))
    g_pids, g_cams = (np.asarray([it[k] for it in data.gallery]) for k in (1, 2))
    res = ranked_lists(qf, gf, q_pids, g_pids, q_cams, g_cams, topk)
    worst, best = worst_and_best(res["ap"], num)
    for name, chosen, what in (("rank_worst.png", worst, "worst"), ("rank_best.png", best, "best")):
        if not len(chosen):
            continue
        tops = [res["top"][i][res["top"][i] >= 0] for i in chosen]
        rows = [{"label": f"query id {q_pids[i]} cam {q_cams[i] + 1}\nAP {100 * res['ap'][i]:.1f}%",
                 "match": res["top_match"][i], "dist": res["top_dist"][i]} for i in chosen]
        fig = draw_ranked(data.pictures([query[i] for i in chosen]),
                          [data.pictures([data.gallery[j] for j in t]) for t in tops], rows,
                          f"{model.label}: the {len(chosen)} {what} queries by AP, top-{topk} gallery "
                          "(green: same identity, red: another)")
        save_figure(fig, out / name)
    table = [{"query_index": i, "image": query[i][0], "pid": int(q_pids[i]), "camid": int(q_cams[i]),
              "ap": "" if not np.isfinite(res["ap"][i]) else f"{res['ap'][i]:.6g}",
              "first_match_rank": int(res["first_match"][i]) + 1 if res["first_match"][i] >= 0 else "",
              "top_gallery": " ".join(str(j) for j in res["top"][i] if j >= 0),
              "top_match": "".join("1" if t else "0" for t in res["top_match"][i][res["top"][i] >= 0])}
             for i in range(len(query))]
    _write_csv(out / "rank.csv", table)
    valid = np.isfinite(res["ap"])
    reference = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams)
    summary = {"data": data.spec, "data_fingerprint": data.fingerprint, "model": _models_json([model])[0],
               "num_queries": len(query),
               "num_with_match": int(valid.sum()), "topk": topk,
               "mean_ap": float(res["ap"][valid].mean()) if valid.any() else None,
               "evaluation_mAP": float(reference["mAP"]), "evaluation_rank1": float(reference["rank1"]),
               "worst": [{"query_index": int(i), "ap": float(res["ap"][i])} for i in worst],
               "best": [{"query_index": int(i), "ap": float(res["ap"][i])} for i in best]}
    _write_json(out / "rank.json", summary)
    return summary


# -- curves --------------------------------------------------------------------------------
def curves_command(run: Path, out: Path) -> dict:
    """A run's ``metrics.csv`` as the labelled grid: ``curves.png`` and ``curves.json``
    (the panels with the values drawn, percent already applied, and the data fingerprint
    the run recorded, ``None`` for a run from before fingerprints)."""
    from dnas.viz.curves import curve_panels, draw_curves

    csv_path = run / "metrics.csv"
    if not csv_path.is_file() and run.name == "final" and (run.parent / "metrics.csv").is_file():
        run, csv_path = run.parent, run.parent / "metrics.csv"
    if not csv_path.is_file():
        raise DnasError(f"{run}: no metrics.csv; expected a dnas-search or dnas-retrain run directory")
    rows = read_csv_rows(csv_path)
    if not rows or "epoch" not in rows[0]:
        raise DnasError(f"{csv_path}: no epoch rows (expected a header with 'epoch' and one row per epoch)")
    panels = curve_panels(rows)
    fig = draw_curves(panels, f"training curves of {run.name}")
    if fig is None:
        raise DnasError(f"{csv_path}: none of its columns is a known metric with a value")
    save_figure(fig, out / "curves.png")
    from dnas.data.fingerprint import recorded_fingerprint

    summary = {"run": str(run), "data_fingerprint": recorded_fingerprint(run), "epochs": len(rows), "panels": panels}
    _write_json(out / "curves.json", summary)
    return summary
