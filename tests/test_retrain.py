"""dnas-retrain end to end on a derived tiny arch and the synthetic sets (retrain issue):
ImageNet pretraining, Re-ID finetuning from it (loaded / dropped keys), final export
with ONNX and mAP, --eval-only, shape mismatch and bad --set (exit 2, nothing written),
exact resume after SIGKILL of a real subprocess, and the schedule / EMA / loading
helpers."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import kill_mid_run
import torch

from dnas.cli import derive as derive_cli
from dnas.cli import retrain as retrain_cli
from dnas.errors import CheckpointError
from dnas.engine import param_groups
from dnas.retrain.common import ModelEma
from dnas.retrain.config import ImageNetConfig, ReIDConfig
from dnas.weights import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "epochs=2", "--set", "max_steps_per_epoch=3", "--set", "warmup_epochs=1", "--no-progress"]
REID_FAST = FAST + ["--set", "eval_every=1", "--set", "eval_max_queries=30", "--set", "test_batch_size=128"]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def arch_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("arch") / "tiny-max"
    assert derive_cli.main(["--supernet", "tiny", "--sample", "max", "--no-onnx", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pre_run(arch_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("imagenet") / "run"
    argv = ["imagenet", "--arch", str(arch_dir), "--data", "synthetic", "--out", str(out), *FAST,
            "--set", "export_onnx=false", "--set", "ema=true", "--set", "mixup_alpha=0.2"]
    assert retrain_cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def reid_run(arch_dir, pre_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("reid") / "run"
    argv = ["reid", "--arch", str(arch_dir), "--pretrained", str(pre_run), "--data", "synthetic", "--out", str(out),
            *REID_FAST]
    assert retrain_cli.main(argv) == 0
    return out


def test_imagenet_run(pre_run):
    for name in ("config.yaml", "arch.yaml", "metrics.csv", "checkpoint-last.pt", "checkpoint-best.pt",
                 "plots/curves.png", "final/model.pt", "final/summary.json", "final/arch.yaml"):
        assert (pre_run / name).is_file(), name
    assert any((pre_run / "tensorboard").iterdir())
    header = (pre_run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("loss", "train_acc", "top1", "top5", "val_loss", "lr"):
        assert key in header, key
    summary = json.loads((pre_run / "final/summary.json").read_text())
    assert summary["num_classes"] == 10 and 0 <= summary["top1"] <= summary["top5"] <= 1
    assert summary["macs"] > 0 and summary["ema"] is True


def test_reid_run_with_pretrained(reid_run, pre_run, capsys):
    import dnas

    report = json.loads((reid_run / "pretrained.json").read_text())
    assert report["source"].startswith(str(pre_run / "final" / "model.pt"))
    assert "head.classifier.weight" in report["dropped"] and "head.classifier.bias" in report["dropped"]
    assert "head.classifier.weight" in report["fresh"] and "head.neck.weight" in report["fresh"]
    assert "stem.conv.weight" in report["loaded"] and any(k.startswith("dcs.") for k in report["loaded"])
    pre = torch.load(pre_run / "final/model.pt", weights_only=True)
    init = torch.load(reid_run / "checkpoint-last.pt", weights_only=True)["model"]
    assert init["stem.conv.weight"].shape == pre["stem.conv.weight"].shape
    header = (reid_run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("loss", "ce", "triplet", "ibb", "ib_loss", "ibb_epoch", "val_mAP", "val_rank1", "val_rank5",
                "val_rank10", "val_mINP", "val_num_skipped", "test_mAP", "test_rank1", "test_mINP", "test_num_skipped"):
        assert key in header, key
    assert "mAP" not in header  # every figure names its split
    final = reid_run / "final"
    for name in ("arch.yaml", "model.pt", "model.onnx", "summary.json", "arch.dot"):
        assert (final / name).is_file(), name
    summary = json.loads((final / "summary.json").read_text())
    assert 0 <= summary["mAP"] <= 1 and 0 <= summary["rank1"] <= 1 and 0 <= summary["mINP"] <= 1
    # the recipe's 90 synthetic training ids, 30 held out as the validation split
    assert summary["macs"] > 0 and summary["onnx_max_abs_diff"] < 1e-4 and summary["num_classes"] == 60
    assert summary["test"]["mAP"] == summary["mAP"] and summary["metrics_split"].startswith("test")
    assert summary["checkpoint_best"]["selected_by"] == "val_mAP" and "mAP" in summary["checkpoint_best"]["test"]
    assert math.isfinite(summary["ib_loss"])
    model = dnas.load_derived(final)  # a deployable model from one command
    assert model.head.neck is not None and model.use_dcs
    out = model(torch.zeros(2, *model.arch.input_size), return_features=True)
    assert out["embedding"].shape == (2, model.arch.head["out_chs"])


def test_eval_only_matches_final_eval(reid_run, capsys):
    summary = json.loads((reid_run / "final/summary.json").read_text())
    capsys.readouterr()
    assert retrain_cli.main(["reid", "--eval-only", str(reid_run), "--set", "eval_max_queries=30"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["mAP"] == pytest.approx(summary["mAP"], abs=1e-6) and m["num_queries"] == 30 and m["split"] == "test"
    assert retrain_cli.main(["reid", "--eval-only", str(reid_run / "final"), "--data", "synthetic",
                             "--set", "eval_max_queries=30"]) == 0
    m2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m2["mAP"] == pytest.approx(summary["mAP"], abs=1e-5)
    assert retrain_cli.main(["reid", "--eval-only", str(reid_run / "checkpoint-best.pt"),
                             "--set", "eval_max_queries=30"]) == 0
    m3 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m3["weights"].endswith("checkpoint-best.pt") and 0 <= m3["mAP"] <= 1
    assert retrain_cli.main(["reid", "--eval-only", str(reid_run / "nothing")]) == 2


def test_pretrained_shape_mismatch_exits_2(pre_run, tmp_path, capsys):
    small = tmp_path / "tiny-min"
    assert derive_cli.main(["--supernet", "tiny", "--sample", "min", "--no-onnx", "--out", str(small)]) == 0
    capsys.readouterr()
    out = tmp_path / "r"
    argv = ["reid", "--arch", str(small), "--pretrained", str(pre_run), "--out", str(out), *REID_FAST]
    assert retrain_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "shape" in err and "pretrain the same derived arch" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("mode,argv,needle", [
    ("reid", ["--set", "nonsense=1"], "nonsense"),
    ("reid", ["--set", "epochs=many"], "epochs"),
    ("reid", ["--set", "p=1"], "p/k"),
    ("reid", ["--data", "synthetic-imagenet"], "Re-ID data set"),
    ("imagenet", ["--data", "market1501:/nowhere"], "nowhere"),
    ("imagenet", ["--set", "optimizer=lion"], "optimizer"),
    ("reid", ["--pretrained", "/nowhere/weights.pt"], "/nowhere/weights.pt"),
])
def test_bad_input_exits_2_and_writes_nothing(arch_dir, tmp_path, capsys, mode, argv, needle):
    out = tmp_path / "r"
    assert retrain_cli.main([mode, "--arch", str(arch_dir), "--out", str(out), *FAST, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_or_searchable_arch_exits_2(tmp_path, capsys):
    assert retrain_cli.main(["reid", "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "arch" in capsys.readouterr().err
    assert retrain_cli.main(["reid", "--arch", "tiny", "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "not a derived architecture" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_existing_run_needs_resume_or_overwrite(reid_run, arch_dir, capsys):
    assert retrain_cli.main(["reid", "--arch", str(arch_dir), "--out", str(reid_run), *REID_FAST]) == 2
    assert "--resume" in capsys.readouterr().err


def test_schedule_warmup_cosine_step():
    cfg = ReIDConfig(arch="x", epochs=10, warmup_epochs=2, warmup_factor=0.1, schedule="step", milestones=[5, 8])
    assert cfg.lr_schedule(1.0).at(0) == pytest.approx(0.1)
    assert cfg.lr_schedule(1.0).at(1) == pytest.approx(0.55)
    assert cfg.lr_schedule(1.0).at(2) == pytest.approx(1.0)
    assert cfg.lr_schedule(1.0).at(6) == pytest.approx(0.1) and cfg.lr_schedule(1.0).at(9) == pytest.approx(0.01)
    cos = ImageNetConfig(arch="x", epochs=12, warmup_epochs=2, schedule="cosine", min_lr_ratio=0.1)
    assert cos.lr_schedule(1.0).at(2) == pytest.approx(1.0)
    assert cos.lr_schedule(1.0).at(7) == pytest.approx(0.55) and cos.lr_schedule(1.0).at(12) == pytest.approx(0.1)


def test_param_groups_and_ema():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = param_groups(model, 1e-4)
    assert [p.dim() for p in decay["params"]] == [4] and len(no_decay["params"]) == 3  # conv bias, BN w, b
    assert no_decay["weight_decay"] == 0.0
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # warm-up decay min(0.5, 2/11)
    d = 2 / 11
    expect = d * (model[0].weight - 1.0) + (1 - d) * model[0].weight
    assert torch.allclose(ema.module[0].weight, expect)


def test_load_pretrained_reports_and_checks():
    from dnas.models.head import ClassifierHead

    class Net(torch.nn.Module):
        def __init__(self, classes, bnneck):
            super().__init__()
            self.stem = torch.nn.Linear(4, 8)
            self.head = ClassifierHead(8, 6, classes, bnneck)

    src, dst = Net(10, False), Net(3, True)
    report = load_pretrained(dst, src.state_dict(), "src.pt")
    assert report["dropped"] == ["head.classifier.bias", "head.classifier.weight"]
    assert "head.neck.weight" in report["fresh"] and "stem.weight" in report["loaded"]
    assert torch.equal(dst.stem.weight, src.stem.weight)
    bad = dict(src.state_dict(), **{"stem.weight": torch.zeros(8, 5)})
    with pytest.raises(CheckpointError, match="stem.weight"):
        load_pretrained(dst, bad, "bad.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(dst, {k: v for k, v in src.state_dict().items() if k != "stem.bias"}, "m.pt")


def _model_state(run):
    return torch.load(run / "final" / "model.pt", weights_only=True)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(arch_dir, tmp_path):
    args = [sys.executable, "-m", "dnas.retrain", "reid", "--arch", str(arch_dir), "--data", "synthetic",
            "--no-progress", "--deterministic", "--seed", "3", "--set", "epochs=3", "--set", "max_steps_per_epoch=4",
            "--set", "eval_every=1", "--set", "eval_max_queries=20", "--set", "export_onnx=false",
            "--set", "mixup_alpha=0.2", "--set", "ema=true", "--set", "center_weight=0.0005"]
    full = tmp_path / "full"
    subprocess.run(args + ["--out", str(full)], check=True, env=_env(), capture_output=True)
    killed = tmp_path / "killed"
    kill_mid_run(args, killed, _env())  # mid epoch 1
    assert not (killed / "final").exists()
    subprocess.run([sys.executable, "-m", "dnas.retrain", "reid", "--resume", str(killed), "--no-progress"],
                   check=True, env=_env(), capture_output=True)
    a, b = _model_state(full), _model_state(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(full / "checkpoint-last.pt", weights_only=True)
    cb = torch.load(killed / "checkpoint-last.pt", weights_only=True)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert torch.equal(ca["loss"]["center"]["centers"], cb["loss"]["center"]["centers"])
    assert ca["acc"] == cb["acc"] and ca["last_eval"] == cb["last_eval"]
    assert len((killed / "metrics.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_ddp_two_cpu_processes(arch_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dnas.retrain",
           "reid", "--arch", str(arch_dir), "--data", "synthetic", *REID_FAST, "--set", "device=cpu",
           "--set", "export_onnx=false", "--set", "p=4", "--out", str(out)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("reid retraining finished") == 1  # rank 0 reports
    state = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 6 and (out / "final" / "model.pt").is_file()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "mAP" in rows[0]
