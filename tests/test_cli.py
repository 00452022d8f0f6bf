"""The command line as a user meets it: exit codes and one-line errors."""

import csv
import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import oculi
from oculi.cli import main
from oculi.config import AUGMENTATION_KNOBS, TrainConfig
from tests.conftest import make_class_folder, write_image


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_small(data, run_dir):
    """A run trained in a second or two: the mlp, one epoch, nothing cached or reported."""
    return oculi.train(str(data), model="mlp", epochs=1, out=str(run_dir), progress=False, report=False,
                       cache=False).run_dir


@pytest.fixture(scope="module")
def colour_run(tiny_data, tiny_run):
    """(data, run folder) of the session's tiny mlp run: read only (a test that damages it takes a copy)."""
    data = tiny_data(per_class=6)
    return data, tiny_run(data, model="mlp", epochs=1).run_dir


@pytest.mark.parametrize("args, message", [
    (["train", "{tmp}/missing"], "no such folder"),
    (["train", "{tmp}/empty"], "no class folders"),
    (["train", "{tmp}/colours", "--optimizer", "lbfgs"], "--optimizer"),
    (["train", "{tmp}/colours", "--epochs", "0"], "--epochs"),
    (["train", "{tmp}/colours", "--image-size", "big"], "--image-size"),
    (["train", "{tmp}/colours", "--epochs", "many"], "--epochs"),
    (["train", "{tmp}/colours", "--no-such-flag"], "--no-such-flag"),
    (["train", "{tmp}/colours", "--mode", "frozen"], "--mode"),
    (["train", "{tmp}/colours", "--model", "vgg-mini", "--mode", "features"], "--mode features"),
    (["train", "{tmp}/colours", "--model", "resnet18", "--weights", "{tmp}/none.pt"], "--weights"),
    (["train", "{tmp}/colours", "--classifier", "svm"], "--classifier"),
    (["train", "{tmp}/colours", "--backbone-lr", "2"], "--backbone-lr"),
    (["train", "{tmp}/colours", "--fill-mode", "mirror"], "--fill-mode"),
    (["augment-preview", "{tmp}/colours", "--rotation", "200"], "--rotation"),
    (["augment-preview", "{tmp}/colours", "--seed", "-1"], "--seed"),
    (["report", "{tmp}/empty"], "not a finished oculi run"),
    (["predict", "{tmp}/missing", "x.jpg"], "no such run folder"),
    (["evaluate", "{tmp}/empty", "--data", "{tmp}/colours"], "model.json"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    make_class_folder(tmp_path / "colours", per_class=6)  # 6: enough to hold some out, so no warning either
    code, out, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert message in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _flags(command_name: str) -> set[str]:
    import typer
    from oculi.cli import app
    command = typer.main.get_command(app).commands[command_name]
    return {decl for param in command.params for decl in (*param.opts, *param.secondary_opts) if decl.startswith("-")}


def _setting_flags(names) -> set[str]:
    """The flags TrainConfig declares for ``names``: --field-name, and --no-field-name for a yes-or-no one."""
    flags = set()
    for f in dataclasses.fields(TrainConfig):
        if f.name in names:
            flag = "--" + f.name.replace("_", "-")
            flags |= {flag, "--no-" + flag[2:]} if f.type.startswith("bool") else {flag}
    return flags


def test_train_flags_are_the_settings_flags_and_the_cli_only_ones():
    not_offered = {f.name for f in dataclasses.fields(TrainConfig) if not f.metadata["cli"]}
    # the DATA argument, API only, set by --quiet, set from torchrun's WORLD_SIZE
    assert not_offered == {"data", "momentum", "progress", "world_size", "epochs_from_budget"}  # the last: set by the plan
    offered = {f.name for f in dataclasses.fields(TrainConfig)} - not_offered
    assert _flags("train") == _setting_flags(offered) | {"--resume", "--quiet", "-q", "--verbose"}
    assert {"--out", "--filter", "--image-size", "--fill-mode", "--no-cache", "--no-report"} <= _flags("train")


def test_augment_preview_shares_the_augmentation_flags():
    assert _setting_flags(AUGMENTATION_KNOBS) <= _flags("augment-preview")
    assert _setting_flags(AUGMENTATION_KNOBS) & _flags("train") == _setting_flags(AUGMENTATION_KNOBS)


def test_train_options_reach_the_config(tmp_path, monkeypatch):
    given = []
    monkeypatch.setattr("oculi.api.train_and_report", lambda cfg, reporter: given.append(cfg))
    args = ["--image-size", "24x32", "--no-cache", "--fill-mode", "wrap", "--rotation", "10", "--epochs", "3",
            "--filter", "blur", "--out", str(tmp_path / "run"), "--val-split", "0.2", "-q"]
    assert main(["train", "digits", *args]) == 0
    cfg = given[0]
    assert (cfg.image_size, cfg.cache, cfg.fill_mode, cfg.rotation, cfg.epochs) == ((24, 32), False, "wrap", 10, 3)
    assert (cfg.filter, cfg.out, cfg.val_split, cfg.progress) == ("blur", str(tmp_path / "run"), 0.2, False)
    assert (cfg.lr, cfg.seed, cfg.report, cfg.momentum) == (None, 0, True, 0.9)  # the rest: the defaults


def test_models_lists_the_tutorial_parameter_counts(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    counts = {row["name"]: row["parameters"] for row in json.loads(out)}
    assert counts["mlp"] == 59_130 and counts["simple-cnn"] == 7_364_131 and counts["small-cnn"] == 5_046_369
    assert counts["alexnet-mini"] == 634_978 and counts["vgg-mini"] == 551_722 and counts["fashion-cnn"] == 390_410
    assert "efficientnet_lite0" in counts


@pytest.mark.slow
def test_train_predict_evaluate_from_the_command_line(tmp_path, capsys):
    data = make_class_folder(tmp_path / "colours", per_class=8)
    (data / "red" / "broken.jpg").write_bytes(b"garbage")
    run = tmp_path / "run"
    assert run_cli(capsys, "train", str(data), "--epochs", "2", "--out", str(run), "-q")[0] == 0
    code, out, err = run_cli(capsys, "predict", str(run), str(data / "red"), "--json", "--top-k", "9")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8 and all(len(r["top_k"]) == 3 for r in rows)  # top-k capped at 3 classes
    assert "broken.jpg" in err
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--data", str(data), "--json")
    assert code == 0 and json.loads(out)["n"] == 24
    code, out, _ = run_cli(capsys, "predict", str(run), str(data / "blue" / "img_00.png"), "--csv")
    assert code == 0 and out.splitlines()[0] == "path,label,confidence,top_k,top_label,ood_score"


def test_cache_info_and_clear(tmp_path, capsys, private_cache):
    from oculi.data.cache import TensorCache
    import torch
    TensorCache("features").put("k", {"features": torch.zeros(1000, 100)})
    code, out, _ = run_cli(capsys, "cache", "info")
    assert code == 0 and "1 entries, 0.4 MiB" in out and str(private_cache) in out
    code, out, _ = run_cli(capsys, "cache", "clear")
    assert code == 0 and "1 entries, 0.4 MiB freed" in out
    assert "0 entries" in run_cli(capsys, "cache", "info")[1]


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "oculi.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


def test_evaluate_without_data_scores_the_runs_own_test_split_again(tmp_path, capsys):
    data = make_class_folder(tmp_path / "colours", per_class=10)
    run = train_small(data, tmp_path / "run")
    with open(run / "split.csv", newline="") as f:
        test_files = [row["path"] for row in csv.DictReader(f) if row["split"] == "test"]
    (data / test_files[0]).unlink()  # read again for real: a test image gone is skipped, not recalled
    code, out, _ = run_cli(capsys, "evaluate", run, "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["split"] == "test" and metrics["data"] == str(data)
    assert metrics["n"] == len(test_files) - 1 and metrics["skipped"][0][0].endswith(test_files[0])
    assert (run / "evaluate-test" / "metrics.json").is_file()
    code, out, _ = run_cli(capsys, "evaluate", run)
    title = f"{len(test_files) - 1} images from {data} (the run's test split)"
    assert code == 0 and "".join(title.split()) in "".join(out.split())  # the table folds long titles
    shutil.rmtree(data)
    code, _, err = run_cli(capsys, "evaluate", run)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"the data of {run} is gone: no such folder: {data}" in err and "--data FOLDER" in err


@pytest.mark.parametrize("name, text, message", [
    ("config.json", "{", "not the config.json of an oculi run"),
    ("config.json", "[]", "not the config.json of an oculi run"),
    ("split.csv", None, "no split.csv"),
])
def test_evaluate_without_data_on_a_damaged_run_is_one_line(colour_run, tmp_path, capsys, name, text, message):
    run = shutil.copytree(colour_run[1], tmp_path / "run")
    if text is None:
        (run / name).unlink()
    else:
        (run / name).write_text(text)
    code, _, err = run_cli(capsys, "evaluate", run)
    assert code == 2 and message in err and "--data" in err and len(err.strip().splitlines()) == 1


def test_predict_exits_1_when_no_image_can_be_read(colour_run, tmp_path, capsys):
    _, run = colour_run
    bad = [tmp_path / "a.jpg", tmp_path / "b.png"]
    for path in bad:
        path.write_bytes(b"not an image")
    code, out, err = run_cli(capsys, "predict", run, *bad)
    assert code == 1 and out == ""
    assert err.count("warning: could not read") == 2
    assert err.strip().splitlines()[-1] == "error: predict: none of the 2 image files could be read"


def test_predict_reads_what_it_can_and_exits_0(colour_run, tmp_path, capsys):
    data, run = colour_run
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    code, out, err = run_cli(capsys, "predict", run, tmp_path / "bad.jpg", data / "red" / "img_00.png", "--csv")
    assert code == 0 and len(out.splitlines()) == 2 and "could not read" in err


def test_predict_predicts_an_image_named_twice_once(colour_run, capsys, monkeypatch):
    data, run = colour_run
    monkeypatch.chdir(data)
    code, out, _ = run_cli(capsys, "predict", run, "./red/img_01.png", "red/img_0[01].png", "red/img_01.png",
                           data / "red" / "img_00.png", "--json")
    assert code == 0
    assert [json.loads(line)["source"] for line in out.splitlines()] == ["red/img_01.png", "red/img_00.png"]


@pytest.mark.parametrize("out, written", [
    ("folder/", "folder/filters.png"),  # a new folder, by its slash
    ("existing", "existing/filters.png"),
    ("plain", "plain.png"),
    ("edges.v2", "edges.v2.png"),
    ("sheet.PNG", "sheet.PNG"),
])
def test_filters_out_is_a_folder_or_gets_png(tmp_path, capsys, monkeypatch, out, written):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    image = write_image(tmp_path / "image.png", np.random.default_rng(0), size=(32, 32))
    code, stdout, _ = run_cli(capsys, "filters", image, "--out", out)
    assert code == 0 and (tmp_path / written).is_file() and f"wrote {written}" in stdout
    assert (tmp_path / written).read_bytes().startswith(b"\x89PNG")
