"""A new user's first commands start at once: the deep-learning stack is imported only when needed.

Each check runs a fresh interpreter with ``-X importtime``, which names every module the process
imported; the test session itself has long imported everything.
"""

import subprocess
import sys

import pytest

import oculi

HEAVY = {"torch", "timm", "sklearn", "matplotlib", "fastapi", "uvicorn"}


def imported_modules(*args: str) -> set[str]:
    """Full names of the modules that ``python -X importtime ARGS`` imported (it must succeed)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines}


def imported(*args: str) -> set[str]:
    """Top-level names of the modules that ``python -X importtime ARGS`` imported (it must succeed)."""
    return {name.split(".")[0] for name in imported_modules(*args)}


def test_import_oculi_imports_no_heavy_library():
    assert imported("-c", "import oculi; oculi.__version__") & HEAVY == set()


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["predict", "--help"], ["serve", "--help"],
                                  ["push", "--help"]])
def test_help_imports_no_heavy_library(args):
    assert imported("-m", "oculi", *args) & HEAVY == set()


def test_api_is_loaded_on_first_use():
    """oculi.train is the API function (the training subpackage is oculi.training), also once that was imported."""
    code = ("import oculi, oculi.training.run, oculi.training.loop\n"
            "assert oculi.train.__module__ == 'oculi.api' and oculi.load.__module__ == 'oculi.api'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"train", "load", "__version__"} <= set(dir(oculi))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        oculi.nothing


def test_predict_with_an_oculi_model_imports_no_heavy_library_and_torch_only_for_the_torch_engine(tiny_data, tiny_run):
    data = tiny_data(per_class=6)
    run = tiny_run(data, model="mlp", epochs=1)  # tests/test_cli.py's run, exported at the end of training
    image = str(data / "red" / "img_00.png")
    names = imported_modules("-m", "oculi", "predict", str(run.run_dir), image)
    assert {name.split(".")[0] for name in names} & (HEAVY | {"torchvision"}) == set()
    names = imported_modules("-m", "oculi", "predict", str(run.run_dir), image, "--engine", "torch")
    modules = {name.split(".")[0] for name in names}
    assert "torch" in modules and modules & HEAVY == {"torch"}
    assert not {name for name in names if name.startswith("oculi.training")}  # predicting needs no training code
