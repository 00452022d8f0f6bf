"""``oculi tune DATA --budget 30m``: Optuna's search over backbone x image size x head x feature views x lr.

Stage 1 trains heads on cached backbone features (trials on one backbone and size share the cache, so they
cost little), pruned by successive halving on their per-epoch val scores; stage 2 fine-tunes the best few
with the budget left. A trial scores the val score of the epoch its run kept (the ``"kept": true`` row of its
metrics.jsonl), by the metric the data's runs keep their epochs by (``search_metric``), the same for every
trial. Each trial is given the time left as its ``time_budget`` and none starts once the time is up, so the
search ends within the budget plus the fixed costs of the trial running when it is up (the slack: see
MIN_TRIAL_SECONDS). Every trial is a normal run folder under ``OUT/trials``; ``OUT/tune.db`` (Optuna's
sqlite storage) makes a killed search go on where it stopped; ``OUT/tune.json`` lists every trial (failed
and pruned ones too) with the best, and ``OUT/compare.html`` shows them all, score against time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .api import train_and_report
from .config import TrainConfig, parse_image_size
from .console import Reporter
from .errors import OculiError, first_line
from .io import atomic_write_text
from .rundir import RunDir
from .training.loop import score_key

# "auto": what `oculi train` picks for this data (288 px, 8 views on photos), so the default is in the space.
IMAGE_SIZES = ("auto", 160, 192, 224)
HEADS = ("linear", "mlp")
VIEWS = ("auto", 1, 2, 4)
DEFAULT_HEAD_LR = 1e-3
STAGE1_SHARE = 0.6  # of the budget, for the head search when finalists are fine-tuned after it
# A finalist's time_budget is this share of its share of the time left: its epochs are what the budget bounds,
# and the rest pays for what comes around them (the features head, the top's cached activations, the test).
FINETUNE_SHARE = 0.8
# No trial starts with less than this left: it could train one epoch at most (the loop always trains one).
# The slack: a trial's time_budget bounds its epochs (none starts that would end past it; the first always
# runs), not its fixed costs: opening and decoding the data, a backbone pass whose features are not cached yet,
# the calibration heads and the test. So the search ends within --budget plus the fixed costs of the trial
# running when the time is up: hymenoptera, --budget 10m, loaded 2-core EPYC, 2026-12-07: 630 s in all (Python
# start-up included); the finalists' fixed costs took them 67 s and 35 s past their fine-tune budgets, the last
# head trial 6 s past its 24 s (BENCHMARKS.md, "Tune").
MIN_TRIAL_SECONDS = 1.0
STUDY = "tune"
clock = time.monotonic  # the search's clock: tests pass time by replacing it


@dataclass
class TuneResult:
    out: Path
    best_run: Path | None
    best_score: float | None
    trials: list[dict]


def tune(data: str, budget_s: float, out: str | Path | None = None, seed: int = 0, n_trials: int | None = None,
         finalists: int = 2, backbones: list[str] | None = None, image_sizes=IMAGE_SIZES,
         train_fn: Callable = train_and_report, reporter: Reporter | None = None, **options) -> TuneResult:
    """Search for the best model on ``data`` within ``budget_s`` seconds (``n_trials``: at most this many
    head trials this call). ``options`` are TrainConfig fields every trial shares (e.g. ``device``);
    ``train_fn`` trains one TrainConfig (tests inject failures through it)."""
    import optuna
    from .data.sources import data_folder
    if not budget_s > 0:  # also NaN
        raise OculiError(f"--budget must be more than 0 seconds, got {budget_s:g}")
    started = clock()
    data_folder(str(data))  # a wrong path is one line now, not three failed trials and an empty tune folder
    reporter = reporter or Reporter()
    out = Path(out or f"tunes/{Path(str(data)).name}").expanduser().resolve()
    (out / "trials").mkdir(parents=True, exist_ok=True)
    deadline = started + budget_s
    backbones = backbones or _available_backbones()
    metric = search_metric(str(data), seed, options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # before the study: no "A new study created" line
    study = _study(out, seed)
    if not study.trials:  # the default's head first: the search never ends below it
        study.enqueue_trial({"model": backbones[0], "image_size": image_sizes[0], "classifier": "linear",
                             "feature_views": VIEWS[0], "head_lr": DEFAULT_HEAD_LR})
    search = Search(data, out, seed, backbones, tuple(image_sizes), train_fn, reporter,
                    {**options, "select_by": metric}, ends=started + budget_s * (STAGE1_SHARE if finalists else 1.0))
    study.optimize(search.objective, n_trials=n_trials, catch=(Exception,),
                   callbacks=[_stop_when_hopeless, search.stop_when_out_of_time])
    best = _best_trials(study, finalists)
    for i, trial in enumerate(best):
        left = deadline - clock()
        if left < MIN_TRIAL_SECONDS:
            break
        search.finetune(trial, left / (len(best) - i))  # an equal share of what is left
    return _summarise(study, search, out, reporter)


def search_metric(data: str, seed: int, options: dict) -> str:
    """The select_by every trial keeps its epoch by and is scored by: ``options``' select_by, or what the data
    calls for (accuracy; macro-f1 on imbalanced classes; map on label sets), pinned so that the scores compare."""
    from .data.sources import open_configured
    from .defaults import chosen_select_by
    cfg = TrainConfig(data=data, seed=seed, **options)
    return chosen_select_by(cfg.select_by, open_configured(cfg))


def _study(out: Path, seed: int):
    """The study in ``out/tune.db``, made or (a search started before) loaded."""
    import optuna
    return optuna.create_study(study_name=STUDY, storage=f"sqlite:///{out / 'tune.db'}", load_if_exists=True,
                               direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                               pruner=optuna.pruners.SuccessiveHalvingPruner())


FAILS_TO_STOP = 3


def _stop_when_hopeless(study, trial) -> None:
    """Stop after the first FAILS_TO_STOP trials all failed: the data or the setup is wrong, not a setting."""
    import optuna
    trials = study.get_trials(deepcopy=False)
    if len(trials) >= FAILS_TO_STOP and all(t.state == optuna.trial.TrialState.FAIL for t in trials):
        study.stop()


def _available_backbones() -> list[str]:
    from .models.pretrained import offline_backbones
    names = offline_backbones()
    if not names:
        raise OculiError("tune: no backbone has its weights here; install oculi[offline-weights] or pass backbones")
    return names


class Search:
    """The trials of one search: what each tries, where it trains, what it scored."""

    def __init__(self, data, out, seed, backbones, image_sizes, train_fn, reporter, options, ends: float):
        self.data, self.out, self.seed, self.backbones, self.ends = str(data), out, seed, backbones, ends
        self.image_sizes, self.train_fn, self.reporter, self.options = image_sizes, train_fn, reporter, options
        self.metric = options["select_by"]
        self.finetuned: list[dict] = []
        # The data's warnings (the check's duplicates and leaks, the folder's, skipped files), said by the first
        # trial that meets them; the later trials, on the same data, record them in their folders only.
        self.said: set[str] = set()

    def objective(self, trial) -> float:
        """Stage 1: a head on cached features, with the trial's settings."""
        params = {"model": trial.suggest_categorical("model", self.backbones),
                  "image_size": trial.suggest_categorical("image_size", self.image_sizes),
                  "classifier": trial.suggest_categorical("classifier", HEADS),
                  "feature_views": trial.suggest_categorical("feature_views", VIEWS),
                  "head_lr": trial.suggest_float("head_lr", 1e-4, 1e-2, log=True)}
        folder = self.out / "trials" / f"{trial.number:03d}"
        trial.set_user_attr("run", str(folder))
        # One seed for all: the same split, so that val scores compare; a trial is reproducible from it.
        return self._run(trial, params, folder, mode="features", seed=self.seed, time_budget=self.time_left())

    def time_left(self) -> float:
        """Seconds until the head search ends: the next trial's time_budget. The floor is for the few
        milliseconds Optuna samples in after ``stop_when_out_of_time`` let it go on with MIN_TRIAL_SECONDS left."""
        return max(0.1, self.ends - clock())

    def stop_when_out_of_time(self, study, trial) -> None:
        """After each trial: no other starts with less than MIN_TRIAL_SECONDS of the head search left."""
        if self.ends - clock() < MIN_TRIAL_SECONDS:
            study.stop()

    def finetune(self, trial, seconds: float) -> None:
        """Stage 2: ``trial``'s settings, the head then fine-tuning (kept when it beats the head), in ``seconds``."""
        folder = self.out / "trials" / f"finetune-{trial.number:03d}"
        row = {"number": f"finetune-{trial.number:03d}", "params": dict(trial.params), "run": str(folder),
               "stage": "finetune"}
        if not RunDir(folder).model_json.is_file():  # a finished one (before a kill) is not trained again
            started = clock()
            try:
                self._train(trial.params, folder, mode="auto", seed=self.seed, time_budget=seconds * FINETUNE_SHARE)
                row.update(value=self.score(folder), seconds=clock() - started, state="COMPLETE")
            except Exception as err:  # noqa: BLE001 - a failed finalist is listed; the search keeps its best
                row.update(state="FAIL", error=one_line(err), seconds=clock() - started)
        else:
            row.update(value=self.score(folder), state="COMPLETE")
        self.finetuned.append(row)

    def _run(self, trial, params: dict, folder: Path, **fixed) -> float:
        started = clock()
        try:
            self._train(params, folder, reporter=PruningReporter(trial, self.metric, self.said), **fixed)
            return self.score(folder)
        except Exception as err:
            trial.set_user_attr("error", one_line(err))
            raise
        finally:
            trial.set_user_attr("seconds", round(clock() - started, 2))

    def score(self, folder: Path) -> float:
        """The trial's score: the val score of the epoch its run kept, by the search's metric."""
        return kept_score(RunDir(folder).read_metrics_log(), self.metric)

    def _train(self, params: dict, folder: Path, reporter: Reporter | None = None, **fixed):
        chosen = {k: None if v == "auto" else v for k, v in params.items()}  # "auto": the setting's default
        settings = {**self.options, **chosen, **fixed}
        settings["image_size"] = parse_image_size(settings.get("image_size"))  # 160 -> (160, 160), as the flag
        cfg = TrainConfig(data=self.data, out=str(folder), pretrained=True, report=False, export="none",
                          progress=False, **settings)
        self.reporter.info(f"[bold]trial[/bold]  {folder.name}: " + ", ".join(f"{k} {v}" for k, v in params.items()))
        return self.train_fn(cfg, reporter or Reporter(quiet=True, said=self.said))


class PruningReporter(Reporter):
    """Quiet, but reports each epoch's val score (by ``metric``, a select_by) to the Optuna trial, which may
    stop it (TrialPruned). Each epoch's, not the kept one's: the pruner compares trials step by step."""

    def __init__(self, trial, metric: str = "accuracy", said: set[str] | None = None):
        super().__init__(quiet=True, said=said)
        self.trial, self.step, self.key = trial, 0, score_key(metric)[0]

    def epoch(self, row: dict) -> None:
        import optuna
        if row.get(self.key) is None:
            return
        self.step += 1  # counted over the run's phases, so that a step is never reported twice
        self.trial.report(float(row[self.key]), self.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned()


def kept_score(rows: list[dict], metric: str) -> float:
    """The val score (``metric``, a select_by) of the epoch the run kept: its ``"kept": true`` row, which the
    margin rule chose (the features head when no fine-tuned epoch beat it by enough), not its best epoch."""
    key = score_key(metric)[0]
    kept = next((r for r in rows if r.get("kept")), None)
    if kept is None or kept.get(key) is None:
        raise OculiError("tune: the run kept no epoch with a val score to score it by; give --val-split")
    return float(kept[key])


def one_line(err: BaseException) -> str:
    """A failed trial's error as tune.json lists it: its type and the first line of its message."""
    return f"{type(err).__name__}: {first_line(err, limit=None)}"


def _best_trials(study, k: int) -> list:
    import optuna
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return sorted(done, key=lambda t: -t.value)[:k]


# ---------------------------------------------------------------- the summary

def trial_rows(study) -> list[dict]:
    """Every trial of the study: its settings, val score, seconds, state and error (failed) and run folder."""
    return [{"number": f"{t.number:03d}", "stage": "features", "params": t.params, "value": t.value,
             "seconds": t.user_attrs.get("seconds"), "state": t.state.name, "error": t.user_attrs.get("error"),
             "run": t.user_attrs.get("run")} for t in study.get_trials(deepcopy=False)]


def _summarise(study, search: Search, out: Path, reporter: Reporter) -> TuneResult:
    rows = trial_rows(study) + search.finetuned
    finished = [r for r in rows if r["state"] == "COMPLETE" and r.get("value") is not None
                and RunDir(Path(r["run"])).model_json.is_file()]
    best = max(finished, key=lambda r: r["value"], default=None)
    metric = f"val {score_key(search.metric)[1]} of the kept epoch"
    summary = {"data": search.data, "metric": metric, "best": best, "trials": rows}
    atomic_write_text(out / "tune.json", json.dumps(summary, indent=2, default=str) + "\n")
    if finished:
        from .report.compare import write_comparison
        write_comparison([r["run"] for r in finished], out / "compare.html")
    _tell(reporter, rows, best, out, metric)
    return TuneResult(out, Path(best["run"]) if best else None, best["value"] if best else None, rows)


def _tell(reporter: Reporter, rows: list[dict], best: dict | None, out: Path, metric: str) -> None:
    states = {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}}
    reporter.info(f"[bold]tune[/bold]   {len(rows)} trials ({', '.join(f'{n} {s.lower()}' for s, n in states.items())}); "
                  f"{out / 'tune.json'}, {out / 'compare.html'}")
    for r in rows:
        if r["state"] == "FAIL":
            reporter.warn(f"trial {r['number']} failed: {r.get('error')}")
    if best is None:
        reporter.warn("tune: no trial finished")
        return
    reporter.info(f"[bold]best[/bold]   {best['run']}: {metric} {best['value']:.2%}; "
                  f"predict with `oculi predict {best['run']} IMAGES`")
