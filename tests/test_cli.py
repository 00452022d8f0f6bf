"""The command line as a user meets it: exit codes and one-line errors."""

import json
import subprocess
import sys

import pytest

from oculi.cli import main
from tests.conftest import make_class_folder


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
    (["report", "{tmp}/empty"], "not a finished oculi run"),
    (["predict", "{tmp}/missing", "x.jpg"], "no such run folder"),
    (["evaluate", "{tmp}/empty", "--data", "{tmp}/colours"], "model.json"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    make_class_folder(tmp_path / "colours", per_class=3)
    code, out, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert message in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


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
    assert code == 0 and out.splitlines()[0] == "path,label,confidence,top_k"


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
