"""Training and predicting on several processes: torch.distributed with gloo, 2 CPU processes started by
torchrun (python -m torch.distributed.run) or by `oculi train --nproc 2`, compared with one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file

from oculi.cli import main
from oculi.console import Reporter
from oculi.data.loading import TensorSet
from oculi.data.transforms import Preprocessing
from oculi.deploy.predict import Classifier
from oculi.runtime.world import World
from oculi.training.distributed import GlooBatchNorm, shard_order
from oculi.training.loop import ImageData, Learner, LoopSettings
from oculi.training.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[2]
# --augment none: random crops are drawn per rank, so only unaugmented runs can equal one process's
# float32: the weights of one and two processes are compared to 1e-5, which bfloat16 steps would not keep
MLP = ["digits", "--model", "mlp", "--epochs", "2", "--augment", "none", "--lr", "0.01", "--no-report", "-q",
       "--no-mixed-precision"]
# float32 too: bfloat16 steps round differently with the thread count (README), which alone moved the test
# accuracy of 1, 2 and 4 processes by up to 2 of the 179 digits
BN = ["digits", "--model", "fast-cnn", "--epochs", "3", "--augment", "none", "--no-report", "--no-mixed-precision"]


# ---------------------------------------------------------------- shards (no processes)


@pytest.mark.parametrize("ranks, per_rank, n", [(2, 16, 1439), (3, 5, 100), (4, 7, 29), (2, 64, 50)])
def test_each_image_goes_to_one_rank_and_the_ranks_together_take_one_processs_batches(ranks, per_rank, n):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(ranks))
    shards = [shard_order(order, per_rank, World(r, r, ranks)) for r in range(ranks)]
    seen = torch.cat(shards)
    assert len(set(seen.tolist())) == len(seen)  # nothing twice, nothing padded
    per = min(per_rank, n // ranks)  # a set smaller than a step is shared out whole
    steps = n // (per * ranks)
    assert len(seen) == steps * per * ranks > n - per * ranks  # only the partial last step is left out
    for step in range(steps):  # step s of all ranks together is step s of one process
        together = torch.cat([s[step * per:(step + 1) * per] for s in shards])
        assert torch.equal(together, order[step * per * ranks:(step + 1) * per * ranks])


@pytest.mark.parametrize("ranks, n", [(2, 179), (3, 10), (4, 3)])
def test_the_evaluation_shares_cover_every_image_once_in_order(ranks, n):
    shares = [list(range(n))[World(r, 0, ranks).part(n)] for r in range(ranks)]
    assert sum(shares, []) == list(range(n))


def test_gloo_batchnorm_is_plain_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    twin = GlooBatchNorm.like(bn)
    x = torch.randn(8, 3, 4, 4)
    assert torch.allclose(bn(x), twin(x))
    assert torch.allclose(bn.running_var, twin.running_var)


def test_accumulating_two_half_batches_trains_as_one_whole_batch():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 4
    images = torch.randint(0, 255, (64, 1, 4, 4), generator=g, dtype=torch.uint8)
    data = TensorSet(images, labels, [str(i) for i in range(64)])
    preprocessing = Preprocessing((4, 4), 1, mean=(0.5,), std=(0.25,))

    def trained(batch_size: int, accumulate: int) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        settings = LoopSettings(epochs=2, batch_size=batch_size, lr=0.01, schedule="cosine", warmup_epochs=0.5,
                                label_smoothing=0.0, patience=None, head="softmax", seed=1, accumulate=accumulate,
                                mixed_precision=False)  # the sums compared to 1e-5: bfloat16 rounds at 1e-3
        Learner(model, build_optimizer(model, "adamw", 0.01, 5e-4, 0.9), settings,
                ImageData(data, data, preprocessing, None), torch.device("cpu"), Reporter(quiet=True)).fit()
        return model

    whole, halves = trained(16, 1), trained(8, 2)
    for (name, a), b in zip(whole.state_dict().items(), halves.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


# ---------------------------------------------------------------- two processes (gloo)


def _env(cache: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OCULI_CACHE_DIR": str(cache),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _torchrun(args: list[str], cwd: Path, restarts: int = 0) -> subprocess.Popen:
    """``python -m oculi ARGS`` on 2 processes by torchrun, rendezvous on a free port of 127.0.0.1."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", str(restarts), "--monitor-interval", "0.1", "-m", "oculi", *args]
    return subprocess.Popen(command, cwd=cwd, env=_env(cwd / "cache"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out, err


def _oculi(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m oculi ARGS``, started."""
    return subprocess.Popen([sys.executable, "-m", "oculi", *args], cwd=cwd, env=_env(cwd / "cache"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_process(args: list[str], cwd: Path) -> None:
    """``oculi ARGS`` in this process (no start-up to pay), in ``cwd`` with its own cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("OCULI_CACHE_DIR", str(cwd / "cache"))
        assert main(args) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The runs the tests compare, all with the same flags (--batch-size 32: a step's batch over all
    processes): mlp on one process, two (2 x 16) and four (4 x 8, both by --nproc); fast-cnn (BatchNorm) on
    one and two (by torchrun). Four processes train the mlp: on 2 cores each of fast-cnn's steps waits on
    the others (29 s against the mlp's 16 s), and the mlp's weights can be compared, not only its score."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "cache").mkdir()
    bn2 = _torchrun(["train", *BN, "--batch-size", "32", "--sync-bn", "--out", "bn2"], root)
    mlp2 = _oculi(["train", *MLP, "--batch-size", "32", "--nproc", "2", "--out", "mlp2"], root)
    _one_process(["train", *MLP, "--batch-size", "32", "--out", "mlp1"], root)
    _one_process(["train", *BN, "-q", "--batch-size", "32", "--out", "bn1"], root)
    (root / "bn2.log").write_text("\n".join(_finished(bn2)))
    _finished(mlp2)
    _finished(_oculi(["train", *MLP, "--batch-size", "32", "--nproc", "4", "--out", "mlp4"], root))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 4])
def test_ranks_sharing_the_batch_end_with_one_processs_weights(runs, ranks):
    one = load_file(runs / "mlp1" / "checkpoint.safetensors")
    many = load_file(runs / f"mlp{ranks}" / "checkpoint.safetensors")
    weights = [k for k in one if k.startswith("model/")]
    assert weights and set(one) == set(many)
    for key in weights:
        assert torch.allclose(one[key], many[key], atol=1e-5), key
    history = [json.loads(line) for line in (runs / f"mlp{ranks}" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2]  # written once per epoch, by one process


@pytest.mark.slow
def test_a_two_rank_run_folder_holds_what_one_process_writes_and_its_bundle_predicts_the_same(runs):
    for name in ("mlp", "bn"):
        assert sorted(os.listdir(runs / f"{name}1")) == sorted(os.listdir(runs / f"{name}2"))
    images = np.random.default_rng(0).integers(0, 17, (20, 8, 8)).astype(np.uint8)
    one = Classifier.load(runs / "mlp1", device="cpu").predict_proba(list(images))
    two = Classifier.load(runs / "mlp2", device="cpu").predict_proba(list(images))
    np.testing.assert_allclose(one, two, atol=1e-5)


@pytest.mark.slow
def test_only_rank_0_prints(runs):
    log = (runs / "bn2.log").read_text()
    assert log.count("epoch   1/3") == 1
    assert log.count("data   digits") == 1


@pytest.mark.slow
def test_sync_batchnorm_over_two_ranks_scores_as_one_process_with_their_batch(runs):
    one, two = (json.loads((runs / name / "config.json").read_text())["config"] for name in ("bn1", "bn2"))
    assert two["world_size"] == 2 and two["batch_size"] * 2 == one["batch_size"]
    assert two["lr"] == pytest.approx(one["lr"])  # the recipe's lr follows the global batch
    final = [json.loads((runs / name / "metrics.jsonl").read_text().splitlines()[-1]) for name in ("bn1", "bn2")]
    assert abs(final[0]["val_acc"] - final[1]["val_acc"]) <= 0.01
    accuracy = [json.loads((runs / name / "test_metrics.json").read_text())["accuracy"] for name in ("bn1", "bn2")]
    assert abs(accuracy[0] - accuracy[1]) <= 0.01


@pytest.mark.slow
def test_the_same_flags_on_one_two_and_four_processes_follow_one_recipe(runs):
    # issue 24: the batch was per process, so N processes took N times the batch, 1/N of the steps, at one lr;
    # the weights above show the steps are one process's, the plans that the recipe's lr and epochs are too
    plans = {(m, n): json.loads((runs / f"{m}{n}" / "config.json").read_text())["config"]
             for m, ns in (("bn", (1, 2)), ("mlp", (1, 2, 4))) for n in ns}
    recipe = {key: (p["batch_size"] * p["world_size"], p["lr"], p["epochs"]) for key, p in plans.items()}
    assert recipe == {(m, n): recipe[(m, 1)] for m, n in recipe} and recipe[("bn", 1)][0] == 32
    assert [plans[("mlp", n)]["world_size"] for n in (1, 2, 4)] == [1, 2, 4]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc (Linux)")
def test_a_worker_killed_mid_training_is_restarted_and_the_run_ends_as_an_uninterrupted_one(runs):
    job = _torchrun(["train", *BN, "--batch-size", "32", "--sync-bn", "--out", "killed"], runs, restarts=1)
    checkpoint = runs / "killed" / "checkpoint.safetensors"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _children(job.pid)
    assert job.poll() is None and len(workers) == 2, "the run ended before a worker could be killed"
    os.kill(max(workers), signal.SIGKILL)
    out, err = _finished(job)
    assert "restart 1 of this job" in err and "resuming" in err
    for name in ("test_metrics.json", "metrics.jsonl"):
        killed, whole = ((runs / run / name).read_text() for run in ("killed", "bn2"))
        if name == "metrics.jsonl":  # the clock differs
            killed, whole = ([{k: v for k, v in json.loads(r).items() if k not in ("seconds", "time", "images_per_s")}
                              for r in text.splitlines()] for text in (killed, whole))
        assert killed == whole, name


@pytest.mark.slow
def test_two_ranks_predict_exactly_the_one_process_csv(runs, capsys):
    folder = runs / "images"
    folder.mkdir()
    from sklearn.datasets import load_digits
    digits = load_digits().images[:25]
    for i, pixels in enumerate(digits):
        Image.fromarray((pixels * 15).astype(np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "13b-broken.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["predict", str(runs / "mlp1"), str(folder), "--csv"]) == 0
    alone = capsys.readouterr()
    shared = _finished(_torchrun(["predict", str(runs / "mlp1"), str(folder), "--csv"], runs))
    assert shared[0] == alone.out and len(alone.out.splitlines()) == 26  # header and 25 readable images
    assert shared[1].count("could not read") == 1 and "13b-broken.png" in shared[1]


def test_sync_bn_on_the_cpu_replaces_plain_batchnorms_only():
    from timm.layers import BatchNormAct2d
    from oculi.training.distributed import convert_sync_bn
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(BatchNormAct2d(4)))
    convert_sync_bn(model, torch.device("cpu"))
    assert type(model[1]) is GlooBatchNorm
    assert type(model[2][0]) is BatchNormAct2d  # its activation must stay: left as it is


@pytest.mark.parametrize("saved, now, batch, lr", [((2, 16), 1, 32, 0.1), ((1, 32), 2, 16, 0.1),
                                                   ((2, 16), 3, 10, 0.1 * 30 / 32), ((4, 8), 4, 8, 0.1)])
def test_a_resume_with_another_number_of_processes_keeps_the_global_batch_when_it_divides(saved, now, batch, lr):
    # When it does not divide, each process takes the floor and the lr follows the smaller step (sgd: linearly).
    from oculi.config import TrainConfig
    from oculi.training.run import _for_world
    world_size, per_rank = saved
    cfg = _for_world(TrainConfig(world_size=world_size, batch_size=per_rank, lr=0.1, optimizer="sgd"),
                     World(0, 0, now), Reporter(quiet=True))
    assert (cfg.world_size, cfg.batch_size) == (now, batch) and cfg.lr == pytest.approx(lr)


@pytest.mark.parametrize("nproc, cores, cuda, warned", [(4, 2, False, True), (3, 2, False, True), (2, 2, False, False),
                                                        (4, 2, True, False), (1, 1, False, False)])
def test_more_processes_than_cpu_cores_are_warned_about(nproc, cores, cuda, warned):
    from oculi.runtime.world import oversubscribed
    warning = oversubscribed(nproc, cores, cuda)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith(f"--nproc {nproc} on {cores} CPU cores: each process gets less than a core")


def test_the_warning_is_printed_once_before_the_workers_start(monkeypatch, capsys):
    import torch.distributed.launcher.api as launcher

    import oculi.runtime.onnx
    started = []
    monkeypatch.setattr(oculi.runtime.onnx, "usable_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # launch sets it for its workers: not for this process
    monkeypatch.setattr(launcher, "elastic_launch", lambda config, entrypoint: lambda *args: started.append(
        config.nproc_per_node) or {0: (None, 0)})
    assert main(["predict", str(ROOT / "no-run-needed"), "x.png", "--nproc", "4"]) == 0
    assert started == [4]
    assert capsys.readouterr().err.count("warning: --nproc 4 on 2 CPU cores") == 1


def test_each_worker_gets_its_share_of_the_cores_this_process_may_use(monkeypatch):
    import oculi.runtime.onnx
    from oculi.runtime.world import worker_threads
    monkeypatch.setattr(oculi.runtime.onnx.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert [worker_threads(n) for n in (1, 2, 4, 8)] == [6, 3, 1, 1]
