"""dnas-visualize on a tiny retrained synthetic model (issue 15): every subcommand writes
its figures and the numbers behind them; the numbers are checked against the library
(per-query AP against dnas.reid.metrics, kNN accuracy and Fisher ratio against their
definitions, Grad-CAM maps at the input size, the ViT token reshape on a timm ViT), the
curves grid draws percent and leaves out what was not measured, and bad input is one
line with exit status 2 and nothing written."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dnas.cli import derive as derive_cli
from dnas.cli import retrain as retrain_cli
from dnas.cli import visualize as viz_cli
from dnas.reid.metrics import evaluate
from dnas.viz.curves import curve_panels, grid_shape
from dnas.viz.gradcam import TokensToGrid, gradcam_maps, patch_grid
from dnas.viz.tsne import fisher_ratio, knn_accuracy

# 6 epochs without random erasing: about 10 s on 2 cores, enough to separate identities
# better than the untrained network (5-NN accuracy about 70% against 55%)
TRAIN = ["--set", "epochs=6", "--set", "warmup_epochs=1", "--set", "eval_every=3", "--set", "eval_max_queries=40",
         "--set", "erasing_prob=0", "--set", "export_onnx=false", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these tiny nets gain nothing from two, and lose much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A derived tiny net (untrained) and the same arch retrained on the synthetic set."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:  # the cache of conftest's _isolated_cache
            mp.setenv("DNAS_CACHE", str(tmp_path_factory.getbasetemp() / "dnas-cache"))
            base = tmp_path_factory.mktemp("viz")
            arch = base / "random"
            assert derive_cli.main(["--supernet", "tiny", "--sample", "max", "--no-onnx", "--out", str(arch)]) == 0
            run = base / "trained"
            argv = ["reid", "--arch", str(arch), "--data", "synthetic", "--out", str(run), *TRAIN]
            assert retrain_cli.main(argv) == 0
    finally:
        torch.set_num_threads(before)
    return {"random": arch, "trained": run}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _visualize(*argv):
    return viz_cli.main([str(a) for a in argv])


def test_gradcam_compare_maps_have_the_image_size(models, tmp_path, capsys):
    out = tmp_path / "cam"
    assert _visualize("gradcam", models["trained"], "--compare", models["random"], "--labels", "trained", "random",
                      "--num", 4, "--target", "match", "--out", out) == 0
    for name in ("gradcam.png", "gradcam.csv", "gradcam_maps.npz", "gradcam.json", ".dnas-output.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "gradcam.json").read_text())
    h, w = summary["input_size"]
    assert [m["label"] for m in summary["models"]] == ["trained", "random"]
    assert all(m["layer"] == "head.conv" and m["grid"] is None for m in summary["models"])
    maps = np.load(out / "gradcam_maps.npz")
    assert sorted(maps.files) == ["0_trained", "1_random"]
    for key in maps.files:
        assert maps[key].shape == (4, h, w)
        assert np.isfinite(maps[key]).all() and maps[key].min() >= 0 and maps[key].max() <= 1 + 1e-6
    rows = _rows(out / "gradcam.csv")
    assert len(rows) == 8 and {r["model"] for r in rows} == {"trained", "random"}
    per_model = {m: [r["image"] for r in rows if r["model"] == m] for m in ("trained", "random")}
    assert per_model["trained"] == per_model["random"] == summary["images"]  # the same images side by side
    for r in rows:  # the match is the same identity from another camera; the score a cosine
        match_pid, match_cam = r["target_match"].rsplit("/", 1)[1].split("_")[:2]
        assert int(match_pid) == int(r["pid"]) and int(match_cam[1]) - 1 != int(r["camid"])
        assert -1 <= float(r["target_score"]) <= 1 and 0 <= int(r["peak_row"]) < h
    with Image.open(out / "gradcam.png") as im:
        assert im.size[0] > 200 and im.size[1] > 200


def test_gradcam_logit_target_of_chosen_ids(models, tmp_path):
    out = tmp_path / "cam"
    # the retrain recipe's synthetic set has 90 training ids: the test ids are 91..130
    assert _visualize("gradcam", models["trained"] / "final", "--ids", 91, 92, "--out", out) == 0
    rows = _rows(out / "gradcam.csv")
    assert rows and {int(r["pid"]) for r in rows} == {91, 92}
    num_classes = json.loads((models["trained"] / "final" / "summary.json").read_text())["num_classes"]
    assert all(0 <= int(r["target_class"]) < num_classes and r["target_match"] == "" for r in rows)


def test_tsne_one_row_per_image_and_trained_separates_better(models, tmp_path):
    out = tmp_path / "tsne"
    assert _visualize("tsne", models["trained"], "--compare", models["random"], "--labels", "trained", "random",
                      "--num-ids", 8, "--out", out) == 0
    summary = json.loads((out / "tsne.json").read_text())
    rows = _rows(out / "tsne.csv")
    ids = set(summary["identities"])
    assert len(ids) == 8 and len(rows) == summary["num_images"]
    assert {int(r["pid"]) for r in rows} == ids and len({r["image"] for r in rows}) == len(rows)
    assert all(math.isfinite(float(r[f"{m}_{c}"])) for r in rows for m in ("trained", "random") for c in "xy")
    trained, random = summary["models"]
    for m in (trained, random):
        assert 0 <= m["knn_accuracy"] <= 1 and m["fisher_ratio"] > 0, m
    assert trained["knn_accuracy"] > random["knn_accuracy"], (trained, random)
    assert trained["fisher_ratio"] > random["fisher_ratio"], (trained, random)
    assert (out / "tsne.png").is_file()


def test_tsne_lda_projection_as_in_the_paper(models, tmp_path):
    out = tmp_path / "tsne"
    assert _visualize("tsne", models["trained"], "--num-ids", 5, "--lda", 3, "--out", out) == 0
    summary = json.loads((out / "tsne.json").read_text())
    m = summary["models"][0]
    assert summary["lda_components"] == 3 and m["features_dim"] == 3
    assert 0 <= m["knn_accuracy"] <= 1 and 0 <= m["embedding_knn_accuracy"] <= 1
    # LDA fitted on the shown images separates them at least as well as the embedding
    assert m["fisher_ratio"] > m["embedding_fisher_ratio"]


def test_knn_accuracy_and_fisher_ratio_definitions():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    far = np.eye(4)[labels] * 10 + rng.normal(0, 0.1, (24, 4))
    assert knn_accuracy(far, labels, k=3) == 1.0
    same = rng.normal(0, 1, (24, 4))
    same -= np.stack([same[labels == c].mean(0) for c in labels])  # every class mean at 0
    assert fisher_ratio(same, labels) == pytest.approx(0.0, abs=1e-12)
    # two points per class, far apart classes: the one other image of each class is its nearest
    pairs = np.array([[0.0], [0.1], [5.0], [5.1]])
    assert knn_accuracy(pairs, np.array([0, 0, 1, 1]), k=1) == 1.0
    assert knn_accuracy(pairs, np.array([0, 1, 0, 1]), k=1) == 0.0
    between, within = 4 * 2.5 ** 2, 4 * 0.05 ** 2  # class means 0.05 and 5.05, overall mean 2.55
    assert fisher_ratio(pairs, np.array([0, 0, 1, 1])) == pytest.approx(between / within, rel=1e-3)


def test_rank_picks_worst_and_best_by_ap_as_the_metrics_do(models, tmp_path):
    from dnas.reid import extract_features, pairwise_distance
    from dnas.viz.loading import load_model, resolve_data

    out = tmp_path / "rank"
    assert _visualize("rank", models["trained"], "--num", 3, "--topk", 5, "--out", out) == 0
    for name in ("rank_worst.png", "rank_best.png", "rank.csv", "rank.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "rank.json").read_text())
    rows = _rows(out / "rank.csv")
    assert len(rows) == summary["num_queries"]
    aps = {int(r["query_index"]): float(r["ap"]) for r in rows if r["ap"] != ""}
    assert summary["mean_ap"] == pytest.approx(summary["evaluation_mAP"], abs=1e-9)
    assert summary["mean_ap"] == pytest.approx(np.mean(list(aps.values())), abs=1e-6)
    worst = [q["query_index"] for q in summary["worst"]]
    best = [q["query_index"] for q in summary["best"]]
    assert [aps[i] for i in worst] == pytest.approx(sorted(aps.values())[:3], abs=1e-6)
    assert [aps[i] for i in best] == pytest.approx(sorted(aps.values(), reverse=True)[:3], abs=1e-6)
    # one query by hand: its AP from dnas.reid.metrics on its own distance row
    model = load_model(models["trained"])
    data = resolve_data("synthetic", [model])
    q = worst[0]
    qf = extract_features(model.model, data.loader([data.query[q]]), "cpu", flip=False)[0]
    gf = extract_features(model.model, data.loader(data.gallery), "cpu", flip=False)[0]
    dist = pairwise_distance(qf, gf).numpy()
    g_pids = np.array([p for _, p, _ in data.gallery])
    g_cams = np.array([c for _, _, c in data.gallery])
    ref = evaluate(dist, [data.query[q][1]], g_pids, [data.query[q][2]], g_cams)["mAP"]
    assert aps[q] == pytest.approx(ref, abs=1e-5)
    top = [int(j) for j in rows[q]["top_gallery"].split()]
    flags = rows[q]["top_match"]
    assert len(top) == 5 and all((g_pids[j] == data.query[q][1]) == (f == "1") for j, f in zip(top, flags))
    assert all(not (g_pids[j] == data.query[q][1] and g_cams[j] == data.query[q][2]) for j in top)  # no junk


def test_curves_subcommand_and_run_plot(models, tmp_path):
    run = models["trained"]
    assert (run / "plots" / "curves.png").is_file()
    out = tmp_path / "curves"
    assert _visualize("curves", run, "--out", out) == 0
    summary = json.loads((out / "curves.json").read_text())
    panels = {p["title"]: p for p in summary["panels"]}
    metrics = _rows(run / "metrics.csv")
    m_ap = {s["column"]: s for s in panels["mAP"]["series"]}
    evaluated = [r for r in metrics if r.get("val_mAP")]
    assert m_ap["val_mAP"]["epochs"] == [int(r["epoch"]) for r in evaluated]
    assert m_ap["val_mAP"]["values"] == pytest.approx([100 * float(r["val_mAP"]) for r in evaluated])
    assert panels["mAP"]["ylabel"] == "mAP (%)"
    ibb = {s["column"]: s for s in panels["IB bound (IBB)"]["series"]}
    off = [int(r["epoch"]) for r in metrics if float(r["ibb"]) == 0.0]
    assert off and not set(off) & set(ibb["ibb"]["epochs"])  # warm-up zeros are not drawn
    with Image.open(out / "curves.png") as im:
        rows, cols = grid_shape(len(panels))
        assert rows >= 2 and im.size[0] < 3 * im.size[1]  # a grid, not a strip


def test_curve_panels_leave_out_missing_values():
    rows = [{"epoch": "0", "arch_loss": "0", "ibb_epoch": "nan", "val_mAP": "", "tau": "5", "lr": "0.1"},
            {"epoch": "1", "arch_loss": "0.9", "ibb_epoch": "0.2", "val_mAP": "0.25", "tau": "4.5", "lr": "0.05"},
            {"epoch": "2", "arch_loss": "0.8", "ibb_epoch": "0.3", "val_mAP": "0.5", "tau": "4", "lr": "0.01",
             "epoch_time_s": "3"}]
    panels = {p["title"]: p["series"] for p in curve_panels(rows, ["arch_loss", "ibb_epoch", "val_mAP", "tau",
                                                                    "epoch_time_s"])}
    assert panels["Architecture-split loss"][0]["epochs"] == [1, 2]
    assert panels["IB bound (IBB)"][0]["values"] == pytest.approx([0.2, 0.3])
    assert panels["mAP"][0]["values"] == pytest.approx([25.0, 50.0])
    assert panels["epoch_time_s"][0]["epochs"] == [2]  # an unknown column gets its own panel
    assert "Learning rate" not in panels  # not asked for
    assert grid_shape(8) == (3, 3) and grid_shape(2) == (1, 2)


def test_vit_tokens_reshape_to_the_patch_grid():
    tokens = torch.arange(2 * 211 * 3, dtype=torch.float32).reshape(2, 211, 3)  # cls + 21x10 (TransReID 256x128)
    grid = TokensToGrid((21, 10))(tokens)
    assert grid.shape == (2, 3, 21, 10)
    assert torch.equal(grid[1, :, 4, 7], tokens[1, 1 + 4 * 10 + 7])
    with pytest.raises(Exception, match="21x10"):
        TokensToGrid((21, 10))(tokens[:, :100])


def test_gradcam_of_a_tiny_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=(32, 16), patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    assert patch_grid(vit) == (4, 2)
    images = torch.randn(3, 3, 32, 16)
    r = gradcam_maps(vit, images, "logit")
    assert r["grid"] == (4, 2) and r["layer"] == "blocks.1.norm1"
    assert r["maps"].shape == (3, 32, 16) and np.isfinite(r["maps"]).all()
    assert r["classes"].tolist() == vit(images).argmax(1).tolist()


def test_gradcam_of_a_reid_net_wrapping_a_vit():
    """A Re-ID net holding a timm ViT as ``backbone`` (as dnas.backbones does): grid and layer found."""
    from timm.models.vision_transformer import VisionTransformer

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = VisionTransformer(img_size=(24, 16), patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                              num_classes=0)
            self.classifier = torch.nn.Linear(16, 4)

        def forward(self, x, return_features=False):
            e = self.backbone(x)
            out = {"embedding": e, "logits": self.classifier(e)}
            return out if return_features else out["logits"]

    torch.manual_seed(0)
    net = Wrapped()
    images = torch.randn(2, 3, 24, 16)
    refs = net(torch.randn(2, 3, 24, 16), return_features=True)["embedding"]
    r = gradcam_maps(net, images, "match", references=refs)
    assert r["grid"] == (3, 2) and r["layer"] == "backbone.blocks.0.norm1"
    assert r["maps"].shape == (2, 24, 16) and np.isfinite(r["maps"]).all()
    assert np.all(np.abs(r["scores"]) <= 1 + 1e-6)


def test_feature_extraction_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    from torch.utils.data import DataLoader, TensorDataset

    from dnas.reid.features import extract_features

    loader = DataLoader(TensorDataset(torch.randn(6, 4), torch.arange(6), torch.zeros(6)), batch_size=2)
    fn = lambda x: x * 2  # noqa: E731
    plain, _, _ = extract_features(None, loader, "cpu", flip=False, feature_fn=fn)
    assert "features" not in capsys.readouterr().err  # stderr is not a terminal here
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    shown, _, _ = extract_features(None, loader, "cpu", flip=False, feature_fn=fn, desc="gallery features")
    assert "gallery features" in capsys.readouterr().err and torch.equal(plain, shown)
    extract_features(None, loader, "cpu", flip=False, feature_fn=fn, progress=False)
    assert "features" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["gradcam", "{missing}", "--out", "{out}"], "model not found"),
    (["gradcam", "{trained}", "--ids", "5", "--out", "{out}"], "--ids 5"),
    (["tsne", "{random}", "--out", "{out}"], "--data: not given"),
    (["curves", "{random}", "--out", "{out}"], "no metrics.csv"),
    (["gradcam", "{trained}", "--compare", "{random}", "--labels", "one", "--out", "{out}"], "--labels"),
])
def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path, capsys, argv, needle):
    out = tmp_path / "figs"
    subs = {"missing": tmp_path / "nothing", "out": out, "trained": models["trained"], "random": models["random"]}
    capsys.readouterr()
    assert _visualize(*[a.format(**{k: str(v) for k, v in subs.items()}) for a in argv]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("dnas-visualize: error:")]
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_out_needs_overwrite_and_never_replaces_another_kind(models, tmp_path, capsys):
    out = tmp_path / "curves"
    assert _visualize("curves", models["trained"], "--out", out) == 0
    assert _visualize("curves", models["trained"], "--out", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _visualize("curves", models["trained"], "--out", out, "--overwrite") == 0
    assert _visualize("curves", models["trained"], "--out", models["random"], "--overwrite") == 2
    assert "only replaces a dnas-visualize output" in capsys.readouterr().err
    assert (models["random"] / "model.pt").is_file()


@pytest.mark.parametrize("name, backbone, grid", [("transreid", "vit_tiny_patch16_224", (5, 2)),
                                                   ("mobilenetv2", None, None)])
def test_gradcam_of_the_dcs_fb_backbones(name, backbone, grid):
    """The project's DCS-FB nets at 64x32: TransReID (ViT-Tiny; overlapping patches of stride 12
    give 5x2 tokens) and MobileNetV2 (its last 4-D feature map)."""
    import yaml

    from dnas.backbones import build_backbone_model
    from dnas.backbones.arch import BackboneArch
    from dnas.resources import data_dir

    spec = yaml.safe_load((data_dir("backbones") / f"{name}.yaml").read_text())
    spec.update(input_size=[3, 64, 32], num_classes=5, **({"backbone": backbone} if backbone else {}))
    torch.manual_seed(0)
    net = build_backbone_model(BackboneArch(spec)).eval()
    r = gradcam_maps(net, torch.randn(2, 3, 64, 32), "logit")
    assert r["grid"] == grid and r["layer"].startswith("backbone.")
    if grid is not None:
        assert r["layer"].startswith("backbone.blocks.") and r["layer"].endswith("norm1")
    assert r["maps"].shape == (2, 64, 32) and np.isfinite(r["maps"]).all() and r["maps"].max() > 0
