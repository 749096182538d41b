"""The README's error promise for the bad inputs of issue 12: one line on stderr naming
the file, key or value, exit status 2, nothing left behind (CLIs as subprocesses; the
Python API cases raise a DnasError)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import (ROOT, RETRAIN_FAST, SEARCH_FAST, cli, env, one_line_error, py,  # noqa: F401
                         runs)
from latency_fixtures import copy_table, measured_tiny_table

RANDOM = bytes(range(256)) * 12  # not UTF-8, not JSON, not YAML, not CSV


@pytest.fixture
def junk(tmp_path):
    for name in ("rand.csv", "rand.meta.json", "rand.yaml"):
        (tmp_path / name).write_bytes(RANDOM)
    return tmp_path


@pytest.fixture
def market_copy(tmp_path_factory):
    """A copy of the synthetic Re-ID set (Market-1501 layout and names)."""
    from dnas.data.synthetic import ensure_synthetic_reid

    src = ensure_synthetic_reid(None, tmp_path_factory.getbasetemp() / "dnas-cache")
    dst = tmp_path_factory.mktemp("market") / "Market"
    shutil.copytree(src, dst)
    return dst


# -- search: validate before the run directory exists --------------------------------------
def test_search_with_a_random_bytes_latency_table_leaves_no_run(junk):
    out = junk / "run"
    proc = cli("dnas-search", *SEARCH_FAST, "--set", f"latency_table={junk / 'rand.csv'}", "--out", out)
    one_line_error(proc, "dnas-search", "rand.meta.json")
    assert not out.exists()


def test_search_with_a_missing_data_root_leaves_no_run(tmp_path):
    out = tmp_path / "run"
    proc = cli("dnas-search", *SEARCH_FAST, "--data", f"market1501:{tmp_path / 'nowhere'}", "--out", out)
    one_line_error(proc, "dnas-search", "nowhere")
    assert not out.exists()


@pytest.mark.parametrize("sizes", [["height=-64"], ["height=0"], ["height=3", "width=3"]])
def test_search_refuses_bad_input_sizes(tmp_path, sizes):
    out = tmp_path / "run"
    sets = [x for s in sizes for x in ("--set", s)]
    proc = cli("dnas-search", *SEARCH_FAST, *sets, "--out", out)
    one_line_error(proc, "dnas-search", "height/width")
    assert not out.exists()


# -- latency tables ---------------------------------------------------------------------------
def test_show_and_validate_a_random_bytes_table(junk):
    one_line_error(cli("dnas-latency", "show", junk / "rand.csv"), "dnas-latency", "rand.meta.json")
    proc = cli("dnas-latency", "validate", "--supernet", "tiny", "--table", junk / "rand.csv", "--archs", "2")
    one_line_error(proc, "dnas-latency", "rand.meta.json")


def test_random_bytes_csv_beside_a_valid_meta(tmp_path):
    csv_path = copy_table(measured_tiny_table(), tmp_path)
    csv_path.write_bytes(RANDOM)
    one_line_error(cli("dnas-latency", "show", csv_path), "dnas-latency", str(csv_path), "not a latency table")


def test_show_json_into_a_closed_pipe():
    table = measured_tiny_table()
    proc = subprocess.run(f"'{sys.executable}' -m dnas.cli.latency show --json '{table}' | head -1", shell=True,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "{" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_a_long_output_into_a_closed_pipe():
    code = ("import sys\nfrom dnas.cli.common import cli_entry\n@cli_entry('x')\ndef main(argv):\n"
            "    print('y' * 1000000)\nsys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()  # the reader leaves early, as `| head -c1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "BrokenPipe" not in err and "Traceback" not in err, err


def test_show_compare_a_table_of_another_space(tmp_path):
    other = copy_table(measured_tiny_table(), tmp_path, "other")
    meta_path = other.with_name("other.meta.json")
    meta = json.loads(meta_path.read_text())
    meta.update(space="fbnetv2", space_hash="0" * 64)
    meta_path.write_text(json.dumps(meta))
    proc = cli("dnas-latency", "show", measured_tiny_table(), "--compare", other)
    one_line_error(proc, "dnas-latency", "--compare", "fbnetv2")


@pytest.mark.parametrize("argv, what", [(["--threads", "-1"], "--threads"), (["--window-ms", "-5"], "--window-ms"),
                                        (["--window-ms", "0"], "--window-ms"), (["--num-classes", "0"], "--num-classes"),
                                        (["--num-classes", "10", "-3", "--dry-run"], "--num-classes"),
                                        (["--warmup", "-1"], "--warmup")])
def test_profile_refuses_bad_numbers(tmp_path, argv, what):
    proc = cli("dnas-latency", "profile", "--supernet", "tiny", "--device", "cpu", "--out", tmp_path / "t", *argv)
    one_line_error(proc, "dnas-latency", what)
    assert list(tmp_path.iterdir()) == []


def test_validate_plot_into_a_directory_is_refused_before_measuring(tmp_path):
    table = copy_table(measured_tiny_table(), tmp_path)
    proc = cli("dnas-latency", "validate", "--supernet", "tiny", "--table", table, "--plot", tmp_path, "--archs", "2")
    one_line_error(proc, "dnas-latency", "--plot", "is a directory")
    (tmp_path / "f").write_text("x")
    proc = cli("dnas-latency", "validate", "--supernet", "tiny", "--table", table, "--plot", tmp_path / "f" / "p.png")
    one_line_error(proc, "dnas-latency", "--plot", "is a file")


# -- validate: never writes the table unless asked; refuses another machine's table ---------
VALIDATE_FAST = ["--archs", "2", "--passes", "1", "--no-progress"]


def test_validate_does_not_write_the_table_by_default(tmp_path):
    table = copy_table(measured_tiny_table(), tmp_path)
    meta_path = table.with_name("table.meta.json")
    before = meta_path.read_bytes()
    proc = cli("dnas-latency", "validate", "--supernet", "tiny", "--table", table, *VALIDATE_FAST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert meta_path.read_bytes() == before and "not changed" in proc.stdout
    from dnas.latency.timing import TimingConfig, device_info

    here = device_info(TimingConfig(device="cpu"))["device_name"]
    assert f"measured on {here}" in proc.stdout.splitlines()[0]  # the header names the measuring machine
    proc = cli("dnas-latency", "validate", "--supernet", "tiny", "--table", table, "--save-calibration", *VALIDATE_FAST)
    assert proc.returncode == 0 and json.loads(meta_path.read_text())["calibration"]["b"] > 0


def test_validate_refuses_a_table_of_another_machine_unless_forced(tmp_path):
    table = copy_table(measured_tiny_table(), tmp_path)
    meta_path = table.with_name("table.meta.json")
    meta = json.loads(meta_path.read_text())
    meta["device_name"] = "NVIDIA H200"
    meta["device"] = "cuda"
    meta_path.write_text(json.dumps(meta))
    before = meta_path.read_bytes()
    proc = cli("dnas-latency", "validate", "--supernet", "tiny", "--table", table, *VALIDATE_FAST)
    one_line_error(proc, "dnas-latency", "NVIDIA H200", "--force")
    proc = cli("dnas-latency", "validate", "--supernet", "tiny", "--table", table, "--force", *VALIDATE_FAST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = proc.stdout.splitlines()[0]
    assert "measured on" in header and "table profiled on NVIDIA H200" in header
    assert meta_path.read_bytes() == before


# -- spaces, recipes, checkpoints, models (Python API) ---------------------------------------
def test_load_space_of_random_bytes(junk):
    proc = py(f"import dnas\ntry:\n    dnas.load_space({str(junk / 'rand.yaml')!r})\n"
              "except dnas.errors.SpaceError as e:\n    print('OK', e)")
    assert proc.stdout.startswith("OK") and "rand.yaml" in proc.stdout, proc.stderr
    one_line_error(cli("dnas-search", "--supernet", junk / "rand.yaml", "--describe"), "dnas-search", "rand.yaml")
    one_line_error(cli("dnas-search", "--recipe", junk / "rand.yaml"), "dnas-search", "rand.yaml")


def test_build_model_refuses_bad_class_counts(runs):
    import dnas
    from dnas.errors import DnasError

    for n in (0, -3):
        with pytest.raises(DnasError, match=f"num_classes {n}"):
            dnas.build_model(runs["derived"], num_classes=n)


def test_nan_features_in_evaluation():
    import numpy as np

    from dnas.errors import DnasError
    from dnas.reid import evaluate_features

    qf = np.full((3, 4), np.nan, np.float32)
    gf = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    with pytest.raises(DnasError, match="NaN"):
        evaluate_features(qf, gf, [1, 2, 3], [1, 2, 3, 1, 2], [0, 0, 0], [1, 1, 1, 1, 1])


def test_a_pickle_checkpoint_is_refused_without_the_weights_only_hint(runs, tmp_path):
    evil = tmp_path / "evil.pt"
    code = (f"import os, pickle\nclass E:\n    def __reduce__(self):\n        return (os.system, ('touch {tmp_path}/PWNED',))\n"
            f"open({str(evil)!r}, 'wb').write(pickle.dumps({{'w': E()}}))")
    assert py(code).returncode == 0
    proc = cli("dnas-retrain", "reid", "--arch", runs["derived"], "--data", "synthetic", "--pretrained", evil,
               "--out", tmp_path / "r", *RETRAIN_FAST)
    line = one_line_error(proc, "dnas-retrain", "evil.pt", "refused")
    assert "weights_only" not in line and not (tmp_path / "r").exists()
    from dnas.errors import CheckpointError
    from dnas.io import safe_torch_load

    with pytest.raises(CheckpointError, match="refused") as exc:
        safe_torch_load(evil)
    assert "weights_only" not in str(exc.value) and not (tmp_path / "PWNED").exists()


# -- runs given to the wrong command ------------------------------------------------------------
def test_derive_of_a_retrain_run_names_its_kind(runs, tmp_path):
    proc = cli("dnas-derive", runs["reid"], "--no-onnx", "--out", tmp_path / "d")
    one_line_error(proc, "dnas-derive", "dnas-retrain reid run", "takes a dnas-search run")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("how", ["--eval-only", "--resume"])
def test_retrain_of_a_search_run_names_its_kind(runs, how):
    argv = ["reid", how, runs["search"]] + (["--data", "synthetic"] if how == "--eval-only" else [])
    one_line_error(cli("dnas-retrain", *argv), "dnas-retrain", "dnas-search run", "dnas-derive")


@pytest.mark.parametrize("option", ["--arch", "--pretrained"])
def test_retrain_from_a_search_run_names_its_kind(runs, tmp_path, option):
    argv = ["--arch", runs["search"]] if option == "--arch" else ["--arch", runs["derived"], "--pretrained",
                                                                   runs["search"]]
    proc = cli("dnas-retrain", "reid", *argv, "--data", "synthetic", "--out", tmp_path / "r", *RETRAIN_FAST)
    one_line_error(proc, "dnas-retrain", option, "dnas-search run", "dnas-derive")
    assert not (tmp_path / "r").exists()


def test_search_resume_of_a_retrain_run_names_its_kind(runs):
    one_line_error(cli("dnas-search", "--resume", runs["reid"]), "dnas-search", "dnas-retrain reid run")


def test_eval_only_checkpoint_best_on_a_derived_dir(runs):
    proc = cli("dnas-retrain", "reid", "--eval-only", runs["derived"], "--checkpoint", "best", "--data", "synthetic")
    one_line_error(proc, "dnas-retrain", "--checkpoint best", "dnas-derive output")


def test_derive_num_classes_with_a_run_is_refused(runs, tmp_path):
    proc = cli("dnas-derive", runs["search"], "--num-classes", "5", "--no-onnx", "--out", tmp_path / "d")
    one_line_error(proc, "dnas-derive", "--num-classes")
    assert not (tmp_path / "d").exists()


def test_top_k_is_capped_at_the_number_of_distinct_archs(tmp_path):
    import yaml

    space = yaml.safe_load((ROOT / "supernets" / "tiny.yaml").read_text())
    for st in space["stages"]:  # one choice left: 2 distinct architectures
        st["channels"], st["expansion"] = [max(st["channels"])], [1.0]
    space["stages"][3]["expansion"] = [1.0, 3.0]
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(space))
    run = tmp_path / "run"
    proc = cli("dnas-search", *SEARCH_FAST, "--supernet", tmp_path / "two.yaml", "--out", run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("dnas-derive", run, "--top-k", "100000", "--no-onnx", "--out", tmp_path / "top")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "only 2 distinct architectures" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "top").iterdir() if not p.name.startswith(".")) == [
        "rank1", "rank2", "top_k.csv"]


# -- data sets -----------------------------------------------------------------------------------
def test_dukemtmc_spec_on_a_market_folder(runs, market_copy, tmp_path):
    proc = cli("dnas-retrain", "reid", "--arch", runs["derived"], "--data", f"dukemtmc:{market_copy}",
               "--out", tmp_path / "r", *RETRAIN_FAST)
    one_line_error(proc, "dnas-retrain", "Market-1501", "market1501:")
    assert not (tmp_path / "r").exists()


def test_empty_imagenet_class_folder_is_refused(runs, tmp_path):
    from dnas.data import load_imagefolder
    from dnas.errors import DataError

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "a.JPEG")
    (tmp_path / "train" / "n03").mkdir()
    with pytest.raises(DataError, match="n03: class folder without images"):
        load_imagefolder(tmp_path)
    proc = cli("dnas-retrain", "imagenet", "--arch", runs["derived"], "--data", f"imagenet:{tmp_path}",
               "--out", tmp_path / "r", "--no-progress")
    one_line_error(proc, "dnas-retrain", "n03")
    assert not (tmp_path / "r").exists()


def _truncate_train_images(root: Path) -> list[Path]:
    victims = sorted((root / "bounding_box_train").iterdir())
    for p in victims:
        p.write_bytes(p.read_bytes()[:200])
    return victims


@pytest.mark.slow
def test_a_corrupt_image_in_a_loader_worker_is_one_line(runs, market_copy, tmp_path):
    victims = {p.name for p in _truncate_train_images(market_copy)}
    proc = cli("dnas-retrain", "reid", "--arch", runs["derived"], "--data", f"market1501:{market_copy}",
               "--out", tmp_path / "r", "--set", "workers=2", *RETRAIN_FAST)
    line = one_line_error(proc, "dnas-retrain", "cannot read image")
    assert any(v in line for v in victims) and "Original Traceback" not in line and "worker" not in line


def test_verify_images_lists_the_unreadable_ones(runs, market_copy, tmp_path):
    bad = market_copy / "query" / sorted(p.name for p in (market_copy / "query").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:100])
    out = tmp_path / "r"
    proc = cli("dnas-retrain", "reid", "--arch", runs["derived"], "--data", f"market1501:{market_copy}",
               "--out", out, "--verify-images", *RETRAIN_FAST)
    one_line_error(proc, "dnas-retrain", "1 of", "unreadable")
    assert f"unreadable: {bad}" in proc.stderr and not out.exists()
    from dnas.data.verify import find_unreadable

    images = sorted(str(p) for p in (market_copy / "query").iterdir())
    assert [p for p, _ in find_unreadable(images, workers=2)] == [str(bad)]
