"""dnas-search end to end on the tiny space and the synthetic set (search issue):
run directory contents, derive from the run (argmax and top-k), exact resume after
SIGKILL of a real subprocess, 2-process gloo DDP, bad recipes, non-finite losses."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import kill_mid_run
import torch
import yaml

from dnas.cli import derive as derive_cli
from dnas.cli import search as search_cli
from dnas.search.config import SearchConfig
from dnas.search.loop import arch_schedule, weight_schedule

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--recipe", str(ROOT / "search/tiny_synthetic.yaml"), "--set", "epochs=2", "--set", "max_steps_per_epoch=3",
        "--set", "eval_max_queries=20", "--set", "warmup_epochs=0", "--no-progress"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("search") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert search_cli.main(FAST + ["--out", str(out)]) == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def run_dir(run_output):
    return run_output[0]


def test_end_of_run_summary_and_a_hint_that_runs(run_output, tmp_path):
    run, printed = run_output
    found = json.loads((run / "summary.json").read_text())["found"]
    a, wide, small = found["argmax"], found["widest"], found["smallest"]
    for key in ("params", "macs", "latency_ms"):
        assert small[key] <= a[key] <= wide[key], key
    assert small["params"] < wide["params"] and small["latency_ms"] < wide["latency_ms"]
    conf = found["confidence"]
    assert set(conf) == {"width", "expansion"} and conf["width"]["units"] == 3  # tiny: 3 groups with a choice
    for c in conf.values():
        assert 0 <= c["entropy_mean"] <= c["entropy_max"] <= 1 and 0 <= c["margin_min"] <= c["margin_mean"] <= 1
        assert 0 <= c["decided"] <= c["units"] == len(c["options"])
    assert "argmax" in printed and "M MACs" in printed
    assert "decided (normalised entropy <= 0.5); entropy mean" in printed
    hint = [ln for ln in printed.splitlines() if ln.startswith("export it: ")][0][len("export it: "):].split()
    assert hint[0] == "dnas-derive" and "--out" in hint
    assert derive_cli.main(hint[1:] + ["--no-onnx"]) == 0  # the printed command runs
    assert (Path(hint[hint.index("--out") + 1]) / "model.pt").is_file()


def test_run_directory_contents(run_dir):
    for name in ("config.yaml", "metrics.csv", "arch_history.csv", "checkpoint-last.pt", "checkpoint-best.pt",
                 "final_arch.yaml", "plots/arch_heatmap.png", "plots/curves.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("weights_loss", "arch_loss", "ib_loss", "expected_latency_ms", "tau", "w_lr", "a_lr", "val_mAP",
                "val_num_skipped", "test_mAP", "test_num_skipped", "epoch_time_s", "weights_ibb"):
        assert key in header, key
    assert "mAP" not in header  # every figure names its split
    cells = [dict(zip(header, r.split(","))) for r in rows[1:]]
    assert cells[0]["test_mAP"] == "" and cells[1]["test_mAP"] != ""  # the test split after the last epoch only
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["checkpoint_best"]["selected_by"] == "val_mAP" and 0 <= summary["test"]["mAP"] <= 1
    assert summary["validation"]["num_ids"] == 30 and summary["arch_split"]["arch"]["ids"] == 60  # the recipe: 90 ids, a third held out
    assert len(rows) == 3
    taus = [float(r.split(",")[header.index("tau")]) for r in rows[1:]]
    decay = yaml.safe_load((ROOT / "search/tiny_synthetic.yaml").read_text())["tau_decay"]
    assert taus[1] == pytest.approx(taus[0] * math.exp(-decay))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["supernet"] == "tiny"


def test_arch_history_has_every_option(run_dir):
    header = (run_dir / "arch_history.csv").read_text().splitlines()[0].split(",")
    widths = [h for h in header if h.startswith("width_g")]
    assert len(widths) == 2 + 3 + 3  # tiny: groups with 2, 3 and 3 options
    assert len([h for h in header if h.startswith("exp_")]) == 1 + 2 * 5


def test_derive_from_run_argmax_and_top_k(run_dir, tmp_path, capsys):
    import dnas

    out = tmp_path / "argmax"
    assert derive_cli.main([str(run_dir), "--out", str(out)]) == 0
    final = yaml.safe_load((run_dir / "final_arch.yaml").read_text())
    assert yaml.safe_load((out / "arch.yaml").read_text())["stages"] == final["stages"]
    state = torch.load(run_dir / "checkpoint-last.pt", weights_only=True)["model"]
    model = dnas.load_derived(out)
    key = "blocks.0.pw.weight"
    w = model.state_dict()[key]
    assert torch.equal(w, state[key][: w.shape[0], : w.shape[1]])  # weights sliced from the supernet
    top = tmp_path / "top"
    assert derive_cli.main([str(run_dir), "--top-k", "3", "--no-onnx", "--out", str(top)]) == 0
    rows = (top / "top_k.csv").read_text().splitlines()
    assert len(rows) == 4 and {p.name for p in top.iterdir()} == {"rank1", "rank2", "rank3", "top_k.csv",
                                                              ".dnas-output.json"}
    probs = [float(r.split(",")[2]) for r in rows[1:]]
    assert probs == sorted(probs, reverse=True) and len({r.split(",")[1] for r in rows[1:]}) == 3
    lat = [float(r.split(",")[3]) for r in rows[1:]]
    assert all(x > 0 for x in lat)


@pytest.mark.parametrize("argv,needle", [
    (["--set", "nonsense=1"], "nonsense"),
    (["--set", "epochs=many"], "epochs"),
    (["--set", "p=1"], "p/k"),
    (["--data", "imagenet2:/x"], "imagenet2"),
    (["--supernet", "nope"], "nope"),
])
def test_bad_recipe_exits_2(tmp_path, capsys, argv, needle):
    assert search_cli.main(FAST + argv + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_non_finite_losses_stop_the_run(tmp_path, capsys, monkeypatch):
    import dnas.losses as losses

    monkeypatch.setattr(losses, "cross_entropy_smooth", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    assert search_cli.main(FAST + ["--set", "max_bad_steps=2", "--out", str(tmp_path / "r")]) == 2
    assert "non-finite" in capsys.readouterr().err


def test_schedules():
    cfg = SearchConfig(epochs=10, p=16, k=16, w_lr=0.1, w_milestones=[5, 8], warmup_epochs=2)
    assert weight_schedule(cfg, 1).at(0) == pytest.approx(0.1)  # batch 256
    assert weight_schedule(cfg, 2).at(0) == pytest.approx(0.2)  # linear scaling with world size
    assert weight_schedule(cfg, 1).at(6) == pytest.approx(0.01)
    assert weight_schedule(cfg, 1).at(9) == pytest.approx(0.001)
    arch = arch_schedule(cfg)
    assert arch.at(1) == pytest.approx(0.01) and arch.at(6) == pytest.approx(0.005) and arch.at(10) == pytest.approx(0.0)


def _final_state(run):
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    return {k: v for k, v in state["model"].items() if k.startswith("arch_") or ".pi." in k}


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    args = [sys.executable, "-m", "dnas.search", *FAST, "--set", "epochs=3", "--set", "max_steps_per_epoch=4",
            "--deterministic", "--seed", "3"]
    full = tmp_path / "full"
    subprocess.run(args + ["--out", str(full)], check=True, env=_env(), capture_output=True)
    killed = tmp_path / "killed"
    kill_mid_run(args, killed, _env())  # mid epoch 1
    assert not (killed / "final_arch.yaml").exists()
    subprocess.run([sys.executable, "-m", "dnas.search", "--resume", str(killed), "--no-progress"], check=True,
                   env=_env(), capture_output=True)
    assert (killed / "final_arch.yaml").read_text() == (full / "final_arch.yaml").read_text()
    a, b = _final_state(full), _final_state(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((killed / "metrics.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dnas.search",
           *FAST, "--set", "device=cpu", "--out", str(out)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    check = json.loads((out / "ddp_check.json").read_text())
    assert check["world_size"] == 2 and len(check["ranks"]) == 2
    assert check["ranks"][0]["arch_sha256"] == check["ranks"][1]["arch_sha256"]
    assert check["ranks"][0]["argmax"] == check["ranks"][1]["argmax"]
    assert (out / "final_arch.yaml").is_file()
