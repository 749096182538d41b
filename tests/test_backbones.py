"""DCS-FB fixed backbones (dnas/backbones): every backbone x attention builds, runs
forward and backward, exports to ONNX and round-trips through dnas-derive and
dnas.load_derived; new attention modules start as the identity; DCS on the ViT without
the fused kernel; strict pretrained-file loading; OSNet x1.0 and TransReID at their
published sizes; bad arch files are one-line errors. Random init only (no downloads)."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml

import dnas
from dnas.architectures import read_arch
from dnas.backbones import BackboneArch
from dnas.cli import derive as derive_cli
from dnas.errors import CheckpointError, SpaceError
from dnas.export import export_onnx
from dnas.model_stats import params_without_classifier
from dnas.backbones.vit import HeadwiseSelector, TokenSelector
from dnas.ops.dcs import FactorisedSelection, affinity_order
from dnas.resources import short_names

SMALL = [3, 64, 32]
TINY_VIT = {"embed_dim": 48, "depth": 2, "num_heads": 2}
SHORT_NAMES = short_names("backbones")  # the DCS-FB rows of dnas.resources.SHORT_NAMES
# small variants of each family for the exports (the shipped files at 64x32 otherwise)
SMALL_VARIANT = {"resnet50": {"timm_kwargs": {"layers": [1, 1, 1, 1]}},
                 "hrnet_w32": {"backbone": "hrnet_w18_small"},
                 "mobilenetv2_200": {"block_repeats": [1, 1, 2, 2, 1, 1, 1]},
                 "transreid": {"timm_kwargs": TINY_VIT}}



def small_arch(name: str, attention: str = "dcs", variant: bool = True, **changes) -> dict:
    extra = dict(SMALL_VARIANT.get(name, {})) if variant or name == "transreid" else {}
    return read_arch(name, input_size=SMALL, num_classes=10, attention=attention, **extra, **changes)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("attention", ["none", "self", "dcs"])
@pytest.mark.parametrize("name", sorted(SHORT_NAMES))
def test_forward_backward_every_backbone(name, attention):
    model = dnas.build_model(small_arch(name, attention, variant=name in ("hrnet_w32", "transreid")))
    x = torch.randn(4, *SMALL)
    out = model(x, return_features=True)
    assert out["logits"].shape == (4, 10)
    assert out["embedding"].shape == out["global_feat"].shape == (4, model.embedding_dim)
    assert out["ib_input"].shape[0] == 4
    logits = out.get("branch_logits", [out["logits"]])  # TransReID: one classifier per branch
    assert torch.equal(logits[0], out["logits"])
    (sum(lg.sum() for lg in logits) + out["global_feat"].square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    n_att = sum(p.numel() for n, p in model.named_parameters() if n.startswith("dcs."))
    assert (n_att > 0) == (attention == "dcs" or (attention == "self" and name != "transreid"))


@pytest.mark.parametrize("name", sorted(SHORT_NAMES))
def test_new_attention_modules_start_as_the_identity(name):
    plain = dnas.build_model(small_arch(name, "none" if name != "transreid" else "self")).eval()
    with_dcs = dnas.build_model(small_arch(name, "dcs")).eval()
    missing, unexpected = with_dcs.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("dcs.") for k in missing)
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(with_dcs(x), plain(x), rtol=1e-5, atol=1e-5)


def test_mobilenetv2_positions_and_last_stride():
    model = dnas.build_model("mobilenetv2")
    assert [model.stage_widths[s] for s in model.arch.attention_after] == [24, 32, 64, 320]
    assert sorted(model.dcs) == ["blocks_1", "blocks_2", "blocks_3", "blocks_6"]
    feat = model.forward_features(torch.zeros(1, 3, 256, 128))
    assert feat.shape[-2:] == (16, 8)  # last stride 1: 1/16 of the input
    deep = dnas.build_model("mobilenetv2_200")
    assert [len(s) for s in deep.backbone.blocks] == [1, 3, 21, 19, 18, 3, 1]
    assert deep.backbone.conv_stem.out_channels == 32 and deep.backbone.blocks[-1][-1].conv_pwl.out_channels == 320


def test_resnet50_last_stride_one():
    model = dnas.build_model(read_arch("resnet50", attention="none"))
    assert model.forward_features(torch.zeros(1, 3, 64, 32)).shape[-2:] == (4, 2)  # 1/16


def test_osnet_x1_0_published_size():
    model = dnas.build_model("osnet_x1_0", attention="none")
    n = params_without_classifier(model)
    assert abs(n - 2.2e6) / 2.2e6 < 0.03, n  # Zhou et al. 2019, Table 1: 2.2 M


def test_transreid_real_configuration():
    """ViT-B/16 at 256x128, stride-12 patches (21 x 10), SIE, JPM: construction only."""
    model = dnas.build_model("transreid")
    vit = model.backbone
    assert vit.patch_embed.proj.stride == (12, 12) and vit.pos_embed.shape == (1, 1 + 21 * 10, 768)
    assert len(vit.blocks) == 12 and model.groups == 4 and model.sie.shape == (6, 1, 768)
    assert model.arch.selection_rank == 57 and isinstance(model.dcs["block0"], TokenSelector)
    selectors = 13 * (768 * 57 + 57 * 2 * 768 + 2 * 768)  # 12 blocks + JPM: A (768 x 57), B (57 x 1536), b
    plain_vit = sum(p.numel() for p in vit.parameters())  # the selectors are registered under dcs. only
    assert plain_vit == sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone."))
    assert 85.6e6 < plain_vit - (211 - 197) * 768 < 86.6e6  # ViT-B/16: 85.8 M without its classifier
    block = sum(p.numel() for p in vit.blocks[-1].parameters()) + sum(p.numel() for p in vit.norm.parameters())
    expect = plain_vit + block + 6 * 768 + 2 * 5 * 768 + selectors  # + JPM, SIE, BNNeck (weight, bias)
    assert params_without_classifier(model) == expect


def test_vit_dcs_without_fused_kernel_matches_fused():
    model = dnas.build_model(small_arch("transreid")).eval()
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        fused = model(x, return_features=True)["embedding"]
        for blk in list(model.backbone.blocks) + [model.jpm_block]:
            blk.attn.fused_attn = False
        explicit = model(x, return_features=True)["embedding"]
    torch.testing.assert_close(explicit, fused, rtol=1e-4, atol=1e-5)
    # a selection that drops channels changes the affinity on both paths alike
    with torch.no_grad():
        for sel in model.dcs.values():
            sel.bias.uniform_(-2, 2)
        dropped = model(x, return_features=True)["embedding"]
        for blk in list(model.backbone.blocks) + [model.jpm_block]:
            blk.attn.fused_attn = True
        torch.testing.assert_close(model(x, return_features=True)["embedding"], dropped, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(dropped, fused)


def test_vit_sie_camera_embedding():
    model = dnas.build_model(small_arch("transreid")).eval()
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        a = model(x, camera=torch.tensor([0, 1]))
        b = model(x, camera=torch.tensor([1, 0]))
    assert not torch.allclose(a, b)


def test_deepcopy_keeps_selectors_with_their_copy():
    model = dnas.build_model(small_arch("transreid"))
    twin = copy.deepcopy(model)
    assert twin.backbone.blocks[0].attn.selector is twin.dcs["block0"]
    assert twin.jpm_block.attn.selector is twin.dcs["jpm"]
    assert len(twin.state_dict()) == len(model.state_dict())


@pytest.mark.parametrize("name", ["mobilenetv2", "osnet_x1_0", "resnet50", "transreid"])
def test_onnx_export(name, tmp_path):
    model = dnas.build_model(small_arch(name)).eval()
    assert export_onnx(model, SMALL, tmp_path / "m.onnx") < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hrnet_w32", "mobilenetv2_200"])
def test_onnx_export_slow(name, tmp_path):
    model = dnas.build_model(small_arch(name)).eval()
    assert export_onnx(model, SMALL, tmp_path / "m.onnx") < 1e-4


def _save_small_yaml(tmp_path, name, **changes):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(small_arch(name, **changes)))
    return path


def test_derive_backbone_round_trip(tmp_path, capsys):
    arch = _save_small_yaml(tmp_path, "osnet_x1_0")
    out = tmp_path / "derived"
    assert derive_cli.main(["--backbone", str(arch), "--num-classes", "7", "--no-onnx", "--out", str(out)]) == 0
    assert "derived model written" in capsys.readouterr().out
    summary = dnas.export.read_summary(out)
    assert summary["backbone"] == "osnet_x1_0" and summary["num_classes"] == 7
    assert summary["params"] - summary["params_without_classifier"] == 512 * 7  # bias-free after the BNNeck
    assert summary["macs"] > 0 and summary["attention_params"] > 0  # ONNX: test_onnx_export
    assert (out / "arch.dot").read_text().count("DCS-Attention") == 2  # after conv3 and conv4
    assert summary["selection_rank"] == 72
    model = dnas.load_derived(out)
    fresh = dnas.build_model(out)
    fresh.load_state_dict(torch.load(out / "model.pt"))
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fresh.eval()(x))
    none = tmp_path / "none"
    assert derive_cli.main(["--backbone", str(arch), "--attention", "none", "--no-onnx", "--out", str(none)]) == 0
    assert dnas.export.read_summary(none)["attention_params"] == 0


def test_derive_backbone_bad_input_exits_2(tmp_path, capsys):
    out = tmp_path / "o"
    assert derive_cli.main(["--backbone", "resnet51", "--out", str(out)]) == 2
    assert "resnet51" in capsys.readouterr().err
    assert derive_cli.main(["--backbone", "osnet_x1_0", "--sample", "max", "--out", str(out)]) == 2
    assert derive_cli.main(["--supernet", "tiny", "--sample", "max", "--pretrained-file", "x.pt",
                            "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize("change, needle", [
    ({"attention_after": ["layer9"]}, "layer9"),
    ({"colour": "red"}, "colour"),
    ({"last_stride": 3}, "last_stride"),
    ({"block_repeats": [1, 2]}, "block_repeats"),
    ({"backbone": "densenet121"}, "densenet121"),
    ({"transreid": {"jpm": True}}, "transreid"),
    ({"selection_rank": 0}, "selection_rank"),
    ({"selection_rank": "C/0"}, "selection_rank"),
    ({"selection_rank": "9C/8"}, "selection_rank"),
    ({"selection_rank": "half"}, "selection_rank.*'half'"),
    ({"selection_rank": True}, "selection_rank"),
])
def test_bad_backbone_arch_names_the_key(change, needle):
    data = {**read_arch("resnet50"), **change}
    with pytest.raises(SpaceError, match=needle):
        BackboneArch(data, "x.yaml")


def _random_checkpoint(model, path, classes=5):
    """A saved random checkpoint of the plain timm backbone, with an ImageNet-style classifier."""
    import timm

    arch = model.arch
    plain = timm.create_model(arch.backbone, num_classes=classes, **arch.timm_kwargs)  # a ViT at 224x224
    torch.save(plain.state_dict(), path)
    return plain.state_dict()


@pytest.mark.parametrize("name", ["resnet50", "transreid"])
def test_pretrained_file_strict_identity_and_report(name, tmp_path):
    ckpt = tmp_path / "backbone.pth"
    model = dnas.build_model(small_arch(name))
    state = _random_checkpoint(model, ckpt)
    loaded = dnas.build_model(small_arch(name), pretrained_file=str(ckpt))
    report = loaded.pretrained_report
    own = loaded.backbone.state_dict()
    same = [k for k in own if k in state and state[k].shape == own[k].shape]
    assert all(torch.equal(own[k], state[k]) for k in same if k != "pos_embed")
    assert report["new"] and all(k.startswith(("dcs.", "head.", "sie")) for k in report["new"])
    assert any(k.startswith("dcs.") for k in report["new"])
    if name == "transreid":  # JPM copied from the loaded last block; pos_embed resampled to the patch grid
        assert report["copied"] and torch.equal(loaded.jpm_block.mlp.fc1.weight, own[f"blocks.{len(loaded.backbone.blocks) - 1}.mlp.fc1.weight"])
        assert own["pos_embed"].shape[1] == 1 + loaded.backbone.patch_embed.grid_size[0] * loaded.backbone.patch_embed.grid_size[1]
    # the attention starts as the identity: the plain backbone with the same weights computes the same
    plain = dnas.build_model(small_arch(name, "none" if name != "transreid" else "self"), pretrained_file=str(ckpt))
    plain.head.load_state_dict(loaded.head.state_dict())
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-5)
    # strict: a missing backbone key is an error naming the file
    key = next(k for k in state if k.endswith("weight"))
    del state[key]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="backbone.pth"):
        dnas.build_model(small_arch(name), pretrained_file=str(ckpt))


@pytest.mark.slow
def test_retrain_reid_and_eval_only_on_a_backbone(tmp_path, capsys):
    from dnas.cli import retrain as retrain_cli

    arch = _save_small_yaml(tmp_path, "mobilenetv2")
    out = tmp_path / "run"
    argv = ["reid", "--arch", str(arch), "--data", "synthetic", "--set", "epochs=2", "--set", "max_steps_per_epoch=3",
            "--set", "warmup_epochs=1", "--set", "eval_every=1", "--set", "eval_max_queries=30", "--set", "p=4",
            "--set", "workers=0", "--no-progress", "--out", str(out)]
    assert retrain_cli.main(argv) == 0
    summary = dnas.export.read_summary(out / "final")
    assert summary["backbone"] == "mobilenetv2_100" and summary["ibb"] >= summary["ib_loss"]
    assert summary["onnx_max_abs_diff"] < 1e-4
    capsys.readouterr()
    assert retrain_cli.main(["reid", "--eval-only", str(out / "final"), "--data", "synthetic",
                             "--set", "eval_max_queries=30"]) == 0
    assert "mAP" in capsys.readouterr().out


def test_backbone_recipes_load_and_name_their_arch():
    import glob

    from dnas.config import load_config
    from dnas.resources import data_dir
    from dnas.retrain.config import ReIDConfig

    paths = sorted(glob.glob(str(data_dir("retrain") / "*_*.yaml")))
    names = {p.split("/")[-1].rsplit("_", 1)[0] for p in paths}
    assert set(SHORT_NAMES) <= names
    for name in SHORT_NAMES:
        for ds in ("market1501", "dukemtmc", "msmt17", "cuhk03"):
            cfg = load_config(ReIDConfig, data_dir("retrain") / f"{name}_{ds}.yaml")
            cfg.validate()
            assert cfg.arch == name and cfg.optimizer == "sgd" and cfg.schedule == "step" and cfg.batch_size == 64
            assert read_arch(cfg.arch)["backbone"]


@pytest.mark.slow
def test_ablation_backbone_smoke(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "retrain" / "ablation_backbone.py"), "--backbone", "osnet_x1_0", "--seeds", "0",
           "--etas", "0.1", "--set", "epochs=1", "--set", "max_steps_per_epoch=2", "--set", "warmup_epochs=0",
           "--set", "eval_max_queries=20", "--set", "p=4", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads((tmp_path / "ablation_osnet_x1_0_synthetic.json").read_text())
    v = result["variants"]
    assert set(v) == {"base", "base_ibb", "sa", "sa_ibb", "dcs", "dcs_ibb"}
    assert v["base"]["macs"]["mean"] < v["sa"]["macs"]["mean"] < v["dcs"]["macs"]["mean"]
    assert result["meta"]["input"] == "64x32"


def test_derive_backbone_with_pretrained_file_reports_new_keys(tmp_path, capsys):
    import json

    arch = _save_small_yaml(tmp_path, "mobilenetv2")
    ckpt = tmp_path / "mbv2.pth"
    _random_checkpoint(dnas.build_model(arch), ckpt)
    out = tmp_path / "derived"
    assert derive_cli.main(["--backbone", str(arch), "--pretrained-file", str(ckpt), "--no-onnx",
                            "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pretrained:" in printed and "dcs.blocks_1" in printed
    report = json.loads((out / "summary.json").read_text())["pretrained"]
    assert report["source"] == str(ckpt) and report["loaded"] > 100
    assert {k.split(".")[1] for k in report["new"] if k.startswith("dcs.")} == {"blocks_1", "blocks_2", "blocks_3",
                                                                                 "blocks_6"}
    state = torch.load(ckpt)
    model = dnas.load_derived(out)
    assert torch.equal(model.backbone.conv_stem.weight, state["conv_stem.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenetv2_200", "resnet50", "hrnet_w32", "transreid"])
def test_derive_load_round_trip_every_backbone(name, tmp_path):
    arch = _save_small_yaml(tmp_path, name)
    out = tmp_path / "derived"
    assert derive_cli.main(["--backbone", str(arch), "--no-onnx", "--out", str(out)]) == 0
    model = dnas.load_derived(out)
    fresh = dnas.build_model(out).eval()
    fresh.load_state_dict(torch.load(out / "model.pt"))
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fresh(x))
    assert dnas.export.read_summary(out)["backbone"] == small_arch(name)["backbone"]


def test_the_camera_reaches_transreid_in_training_and_evaluation():
    """SIE: the trainer's loss call and the feature extraction pass each image's camera to
    a model that uses it (and to no other); a run sizes the embedding to the data's cameras."""
    from types import SimpleNamespace

    from dnas.losses import ReIDLoss
    from dnas.reid.features import extract_features
    from dnas.retrain.reid import ReIDTrainer, _fit_camera_embedding

    model = dnas.build_model(small_arch("transreid")).eval()
    assert model.uses_camera and not getattr(dnas.build_model(small_arch("mobilenetv2")), "uses_camera", False)
    with torch.no_grad():
        model.sie.normal_()
    x, pids = torch.randn(4, *SMALL), torch.tensor([0, 0, 1, 1])
    fa = extract_features(model, [(x, pids, torch.tensor([0, 1, 0, 1]))], "cpu", flip=False, progress=False)[0]
    fb = extract_features(model, [(x, pids, torch.tensor([1, 0, 1, 0]))], "cpu", flip=False, progress=False)[0]
    assert not torch.allclose(fa, fb)  # the features depend on the camera

    seen = []

    def spy(images, **kw):
        seen.append(kw.get("camera"))
        return model(images, **kw)

    trainer = SimpleNamespace(net=model, model=spy, loss=ReIDLoss(10))
    cams = torch.tensor([2, 0, 1, 3])
    loss, parts, _ = ReIDTrainer.compute_loss(trainer, x, pids, pids, cams)
    assert torch.equal(seen[0], cams) and torch.isfinite(loss) and set(parts) == {"ce", "triplet", "ibb"}
    arch = small_arch("transreid")
    _fit_camera_embedding(arch, SimpleNamespace(train=[("a", 0, 0)], query=[("b", 1, 7)], gallery=[("c", 2, 3)]))
    assert arch["transreid"]["sie_cameras"] == 8


@pytest.mark.parametrize("name, attention", [("mobilenetv2", "dcs"), ("mobilenetv2", "self"), ("osnet_x1_0", "dcs")])
def test_affinity_orders_agree_in_fixed_backbones(name, attention):
    """Both associations of the linear affinity give the same network (float64); at 64x32
    the positions take either order by their shapes (C vs N)."""
    model = dnas.build_model(small_arch(name, attention)).double().eval()
    for m in model.dcs.values():
        with torch.no_grad():
            m.bn.weight.fill_(1.0)  # let the attention branches contribute
    x = torch.randn(2, *SMALL, dtype=torch.float64)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(
        affinity_order(mod.chs, i[0].shape[2] * i[0].shape[3]))) for m in model.dcs.values()]
    outs = {}
    with torch.no_grad():
        for order in (None, "channels", "tokens"):
            for m in model.dcs.values():
                m.order = order
            outs[order] = model(x, return_features=True)["global_feat"]
    for h in hooks:
        h.remove()
    want = {"channels", "tokens"} if name == "mobilenetv2" else {"tokens"}  # OSNet: all late and wide here
    assert set(seen[:len(model.dcs)]) == want
    torch.testing.assert_close(outs["channels"], outs["tokens"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs[None], outs["tokens"], rtol=1e-10, atol=1e-10)


def test_hrnet_reid_head_and_a_classification_checkpoint(tmp_path):
    """HRNet: timm's trunk plus HRNetV2's head (branches upsampled to 1/4, concatenated);
    a checkpoint of timm's classification network loads strictly, its head left out."""
    import timm

    arch = small_arch("hrnet_w32")  # hrnet_w18_small: branches of 16, 32, 64, 128 channels
    model = dnas.build_model(arch)
    assert model.backbone.incre_modules is None and not hasattr(model.backbone, "final_layer")
    assert model.stage_widths["stage4"] == [16, 32, 64, 128]
    assert model.stage_widths["head"] == model.embedding_dim == 240
    assert model.forward_features(torch.zeros(1, *SMALL)).shape == (1, 240, SMALL[1] // 4, SMALL[2] // 4)
    full = timm.create_model("hrnet_w18_small", num_classes=1000)
    torch.save(full.state_dict(), tmp_path / "imagenet.pth")
    loaded = dnas.build_model(arch, pretrained_file=str(tmp_path / "imagenet.pth"))
    assert torch.equal(loaded.backbone.stage4[0].branches[3][0].conv1.weight,
                       full.stage4[0].branches[3][0].conv1.weight)
    assert all(k.startswith(("dcs.", "head.")) for k in loaded.pretrained_report["new"])


def test_selection_rank_rules_per_position():
    arch = BackboneArch({**read_arch("mobilenetv2"), "selection_rank": "3C/8"})
    assert [arch.rank_for(c) for c in (24, 32, 64, 320)] == [9, 12, 24, 120]
    assert BackboneArch({**read_arch("resnet50"), "selection_rank": "C/32"}).rank_for(2048) == 64
    fixed = BackboneArch({**read_arch("osnet_x1_0"), "selection_rank": 72})
    assert fixed.rank_for(384) == 72 and fixed.rank_for(72) is None and fixed.rank_for(64) is None  # full rank
    assert BackboneArch({**read_arch("resnet50"), "selection_rank": None}).rank_for(2048) is None
    model = dnas.build_model(small_arch("mobilenetv2"))
    for key, m in model.dcs.items():
        assert isinstance(m.pi, FactorisedSelection) and m.pi.rank == 3 * m.chs // 8, key
    assert dnas.build_model(small_arch("mobilenetv2", "self")).dcs["blocks_6"].pi is None


def test_vit_token_selector_mask_gradient_and_identity_start():
    model = dnas.build_model(small_arch("transreid", selection_rank=8))  # embed 48: 2 blocks + JPM
    sels = list(model.dcs.values())
    assert len(sels) == 3 and all(isinstance(s, TokenSelector) for s in sels)
    assert sum(p.numel() for s in sels for p in s.parameters()) == 3 * (48 * 8 + 8 * 96 + 96)
    assert isinstance(dnas.build_model(small_arch("transreid")).dcs["block0"], HeadwiseSelector)  # rank 57 >= 48
    sel, x = sels[0], torch.randn(2, 7, 48)
    q = k = torch.zeros(2, 2, 7, 24)
    sel.eval()
    mq, mk = sel.qk_masks(x, q, k)
    assert torch.equal(mq, torch.ones_like(mq)) and torch.equal(mk, torch.ones_like(mk))  # a new selector keeps all
    with torch.no_grad():
        sel.b.weight.normal_()
        sel.b.bias.zero_()
    logits = sel.b(sel.a(x)).view(2, 7, 2, 2, 24)  # (B, N, q/k, heads, d)
    mq, mk = sel.qk_masks(x, q, k)
    assert torch.equal(mq, (logits[:, :, 0] > 0).float().transpose(1, 2))  # [pi > 0] in inference
    assert torch.equal(mk, (logits[:, :, 1] > 0).float().transpose(1, 2))
    model.train()
    out = model(torch.randn(4, *SMALL), return_features=True)
    (out["logits"].sum() + out["global_feat"].square().mean()).backward()
    assert sel.a.weight.grad.abs().sum() > 0 and sel.b.weight.grad.abs().sum() > 0 and sel.b.bias.grad.abs().sum() > 0
