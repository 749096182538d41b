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


# -- non-finite numbers: refused where they are read, naming the file/option and the key --------
@pytest.mark.parametrize("pair, key", [("w_lr=.inf", "w_lr"), ("ib_eta=.nan", "ib_eta"), ("a_lr=1.0e+999", "a_lr")])
def test_search_refuses_non_finite_set_values(tmp_path, pair, key):
    proc = cli("dnas-search", *SEARCH_FAST, "--set", pair, "--out", tmp_path / "run")
    one_line_error(proc, "dnas-search", f"--set {key}", "not a finite number")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_values_in_recipe_space_and_arch_files(runs, tmp_path):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\ntau0: -.inf\n")
    one_line_error(cli("dnas-search", "--recipe", recipe, "--out", tmp_path / "run"), "dnas-search",
                   "r.yaml: line 2: key 'tau0'", "not a finite number")
    space = yaml.safe_load((ROOT / "supernets" / "tiny.yaml").read_text())
    space["dcs"] = {"tau_m": 1.0}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space).replace("tau_m: 1.0", "tau_m: .nan"))
    one_line_error(cli("dnas-search", "--supernet", tmp_path / "s.yaml", "--describe"), "dnas-search",
                   "s.yaml: line", "key 'dcs.tau_m'", "not a finite number")
    arch = tmp_path / "arch.yaml"
    arch.write_text((runs["derived"] / "arch.yaml").read_text().replace("{expansion: 1.0,", "{expansion: .inf,", 1))
    proc = cli("dnas-retrain", "reid", "--arch", arch, "--data", "synthetic", "--out", tmp_path / "r", *RETRAIN_FAST)
    one_line_error(proc, "dnas-retrain", "arch.yaml: line", "expansion", "not a finite number")
    from dnas.errors import SpaceError
    from dnas.space import SearchSpace

    space["dcs"]["tau_m"] = float("inf")  # the API: a dict is checked by the schema
    with pytest.raises(SpaceError, match="tau_m"):
        SearchSpace.from_dict(space)


@pytest.mark.parametrize("value", ['"abc"', "NaN", "-1", "1e999"])
def test_table_calibration_must_be_a_finite_positive_number(tmp_path, value):
    table = copy_table(ROOT / "latency_tables" / "cpu_tiny_b8_fp32.csv", tmp_path)
    meta_path = table.with_name("table.meta.json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta).replace(f'"b": {meta["calibration"]["b"]}', f'"b": {value}'))
    one_line_error(cli("dnas-latency", "show", table), "dnas-latency", "table.meta.json", "'calibration.b'",
                   "finite number > 0")
    if value == "NaN":  # the search refuses it before its run directory exists
        proc = cli("dnas-search", *SEARCH_FAST, "--set", f"latency_table={table}", "--out", tmp_path / "run")
        one_line_error(proc, "dnas-search", "'calibration.b'")
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["--window-ms", "--time-limit", "--checkpoint-every"])
def test_profile_refuses_non_finite_number_options(tmp_path, option):
    proc = cli("dnas-latency", "profile", "--supernet", "tiny", "--device", "cpu", "--out", tmp_path / "t",
               option, "inf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: argument {option}: expected a finite number, got 'inf'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_table_csv_stats_must_be_finite(tmp_path):
    table = copy_table(ROOT / "latency_tables" / "cpu_tiny_b8_fp32.csv", tmp_path)
    lines = table.read_text().splitlines()
    head = lines[0].split(",")
    row = lines[1].split(",")
    row[head.index("spread")] = "nan"
    table.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    one_line_error(cli("dnas-latency", "show", table), "dnas-latency", "line 2", "spread is 'nan'")


def test_a_loss_turning_non_finite_names_the_part_and_keeps_a_takeable_run(tmp_path):
    out = tmp_path / "run"
    proc = cli("dnas-search", *SEARCH_FAST, "--set", "ib_eta=1.0e+300", "--out", out)
    one_line_error(proc, "dnas-search", "weights phase", "non-finite loss", "ibb", "is kept", "same --out")
    assert "KeyError" not in proc.stderr and out.is_dir()
    proc = cli("dnas-search", *SEARCH_FAST, "--out", out)  # the unfinished start is taken up
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- bounded messages; YAML bombs, deep nesting and duplicate keys refused up front --------------
BOMB = ("&a [1, 1, 1, 1, 1, 1, 1, 1, 1]", "&b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
        "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b]", "&d [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
        "[*d, *d, *d, *d, *d, *d, *d, *d, *d]")


@pytest.mark.parametrize("how", ["recipe", "set"])
def test_an_alias_bomb_is_refused_at_once(tmp_path, how):
    value = "[" + ", ".join(BOMB) + "]"
    (tmp_path / "bomb.yaml").write_text(f"epochs: {value}\n")
    argv = ["--recipe", tmp_path / "bomb.yaml"] if how == "recipe" else ["--supernet", "tiny", "--set",
                                                                          f"epochs={value}"]
    proc = cli("dnas-search", *argv, "--out", tmp_path / "run", timeout=60)
    one_line_error(proc, "dnas-search", "epochs", "aliases expand to more than")


def test_deep_nesting_and_long_values_are_refused_with_a_bounded_line(tmp_path):
    (tmp_path / "deep.yaml").write_text("epochs: " + "[" * 5000 + "]" * 5000 + "\n")
    one_line_error(cli("dnas-search", "--recipe", tmp_path / "deep.yaml"), "dnas-search", "deep.yaml",
                   "nested deeper than")
    line = one_line_error(cli("dnas-search", "--supernet", "tiny", "--set", "epochs=" + "x" * 100000),
                          "dnas-search", "key 'epochs'", "expected an integer")
    assert len(line) < 300
    from dnas.config import load_config
    from dnas.errors import ConfigError
    from dnas.search.config import SearchConfig

    big = [list(range(1000))] * 1000
    with pytest.raises(ConfigError) as exc:
        load_config(SearchConfig, direct={"w_milestones": big})
    assert len(str(exc.value)) < 300


@pytest.mark.parametrize("kind", ["recipe", "space", "arch"])
def test_a_duplicated_key_names_the_key_and_both_lines(runs, tmp_path, kind):
    if kind == "recipe":
        (tmp_path / "f.yaml").write_text("epochs: 1\np: 4\nepochs: 2\n")
        proc = cli("dnas-search", "--recipe", tmp_path / "f.yaml")
        prog, where = "dnas-search", "line 3"
    else:
        src = ROOT / "supernets" / "tiny.yaml" if kind == "space" else runs["derived"] / "arch.yaml"
        text = src.read_text()
        (tmp_path / "f.yaml").write_text(text + f"name: {'again'}\n")
        first = 1 + text.splitlines().index(next(ln for ln in text.splitlines() if ln.startswith("name:")))
        where = f"first given at line {first}"
        proc = (cli("dnas-search", "--supernet", tmp_path / "f.yaml", "--describe") if kind == "space" else
                cli("dnas-retrain", "reid", "--arch", tmp_path / "f.yaml", "--data", "synthetic",
                    "--out", tmp_path / "r", *RETRAIN_FAST))
        prog = "dnas-search" if kind == "space" else "dnas-retrain"
    one_line_error(proc, prog, "f.yaml", "duplicate key", where)
    assert not (tmp_path / "r").exists()


# -- --out a symbolic link: the directory it points to is written (and replaced) -------------------
def test_derive_overwrite_through_a_link_replaces_its_target(tmp_path):
    derive = ["--supernet", "tiny", "--no-onnx"]
    assert cli("dnas-derive", *derive, "--sample", "max", "--out", tmp_path / "d1").returncode == 0
    (tmp_path / "latest").symlink_to("d1")
    proc = cli("dnas-derive", *derive, "--sample", "min", "--out", tmp_path / "latest", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "latest").is_symlink() and "tiny-min" in (tmp_path / "d1" / "arch.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d1", "latest"]


# -- one process per output directory ----------------------------------------------------------------
HOLD = "import sys\nfrom dnas.runlock import acquire\nacquire(sys.argv[1])\nprint('held', flush=True)\nsys.stdin.read()"


def _hold(target: Path) -> subprocess.Popen:
    """A process holding ``target``'s lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], env=env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("command", ["search", "search-resume", "derive", "retrain", "profile"])
def test_an_output_in_use_by_another_process_is_refused(runs, tmp_path, command):
    target = runs["search"] if command == "search-resume" else tmp_path / "out"
    argv = {"search": ["dnas-search", *SEARCH_FAST, "--out", target],
            "search-resume": ["dnas-search", "--resume", target],
            "derive": ["dnas-derive", "--supernet", "tiny", "--sample", "max", "--no-onnx", "--out", target],
            "retrain": ["dnas-retrain", "reid", "--arch", runs["derived"], "--data", "synthetic", "--out", target,
                        *RETRAIN_FAST],
            "profile": ["dnas-latency", "profile", "--supernet", "tiny", "--device", "cpu", "--out", target]}[command]
    before = sorted(p.name for p in target.iterdir()) if target.is_dir() else None
    holder = _hold(target)
    try:
        proc = cli(*argv)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    one_line_error(proc, argv[0], f"pid {holder.pid}", "in use by another dnas process")
    if before is None:
        assert list(tmp_path.iterdir()) == []  # nothing made, the holder's lock file removed
    else:
        assert sorted(p.name for p in target.iterdir()) == before


def test_a_killed_holder_frees_the_lock_and_two_derives_never_share_an_output(tmp_path):
    import signal

    holder = _hold(tmp_path / "out")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    _hold(tmp_path / "out").stdin.close()  # the next process takes it at once
    argv = [sys.executable, "-m", "dnas.cli.derive", "--supernet", "tiny", "--sample", "max", "--no-onnx",
            "--out", str(tmp_path / "same")]
    procs = [subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], errs
    assert any("in use by another dnas process" in e or "exists" in e for e in errs), errs


# -- memory: estimated before building; an allocator failure is one line ---------------------------
def test_a_space_too_large_for_memory_is_refused_with_the_estimate(tmp_path):
    import yaml

    space = yaml.safe_load((ROOT / "supernets" / "tiny.yaml").read_text())
    for st in space["stages"]:
        st["channels"], st["expansion"] = [16384], [64]
    (tmp_path / "huge.yaml").write_text(yaml.safe_dump(space))
    proc = cli("dnas-search", *SEARCH_FAST, "--supernet", tmp_path / "huge.yaml", "--out", tmp_path / "run")
    one_line_error(proc, "dnas-search", "huge.yaml", "M parameters", "GiB", "available")
    assert not (tmp_path / "run").exists()
    proc = cli("dnas-search", "--supernet", tmp_path / "huge.yaml", "--describe")
    assert proc.returncode == 0 and "widest net:" in proc.stdout and "MACs not counted" in proc.stdout


def test_training_memory_is_checked_before_the_run(monkeypatch):
    import dnas.memory as memory
    from dnas.models import Supernet
    from dnas.space import load_space

    net = Supernet(load_space("tiny"), num_classes=10)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 10 * 2 ** 20)
    with pytest.raises(memory.MemoryLimitError, match=r"batch of 64 at 256x128\), more than the 10 MiB free"):
        memory.check_training(net, 64, "cpu", input_hw=(256, 128))
    memory.check_training(net, 1, "cpu")  # 0.2 M parameters and one image fit


def test_an_allocator_failure_is_one_line():
    code = ("import sys, torch\nfrom dnas.cli.common import cli_entry\n@cli_entry('x')\ndef main(argv):\n"
            "    torch.empty(10 ** 14)\nsys.exit(main())")
    one_line_error(py(code), "x", "out of memory on the host", "GiB asked for")
