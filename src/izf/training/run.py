"""One training job, from a composed config to metrics.json: the body of train.py."""

from __future__ import annotations

import inspect
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console

from izf.config import config_dir
from izf.data import ZSLDataModule
from izf.data.benchmarks import resembles
from izf.errors import ConfigError, IZFError
from izf.evaluation.protocol import gamma_of
from izf.io import atomic_path, write_json
from izf.outputs import DATA_KEY, FAILURE_FILE, METRICS_FILE, WALL_TIME_KEY
from izf.training.base import ZSLModule
from izf.training.checkpoints import SaveOnInterrupt, check_checkpoint
from izf.training.evaluate import evaluate_model, results_table
from izf.training.hyperparameters import refuse_unknown_keys
from izf.training.loggers import instantiate_loggers, save_pictures
from izf.training.selection import SELECTION_KEY, load_or_choose, summary
from izf.training.selection import applies as selection_applies

log = logging.getLogger(__name__)
# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
# Lightning advertises its cloud logger on every run ("💡 Tip: ..."): not a message about the run.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "💡 Tip" not in record.getMessage())


RECIPES = "_internal/recipe"  # the config group train.yaml picks a recipe from, as <model>_<dataset>


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    return [hydra.utils.instantiate(node) for node in (group or {}).values() if node and "_target_" in node]


def _check_recipe(datamodule: ZSLDataModule) -> None:
    """Recipes are picked by the model and dataset configs' names; data that is a benchmark with a
    recipe (IZF's 5 blocks on APY) under another name (dataset=custom) gets a warning that names
    the override."""
    if datamodule.hparams.split != "test" or not HydraConfig.initialized():
        return  # the validation task renumbers and regroups the classes
    choices = HydraConfig.get().runtime.choices
    for name in resembles(datamodule.data.summary()):
        recipe = f"{choices.get('model')}_{name.lower()}"
        if (config_dir() / RECIPES / f"{recipe}.yaml").is_file() and choices.get(RECIPES) != recipe:
            log.warning("the data has %s's classes and attributes, but not its recipe: the paper's settings for "
                        "%s are in %s=%s (add it to the command line)", name, name, RECIPES, recipe)


DATASET_BUDGETS = "_internal/dataset_budget"  # <model>_<schedule>_<dataset>: a baseline's per-dataset settings


def _check_dataset_budget() -> None:
    """A method with per-dataset settings under this schedule (the baselines' reference scripts), run on a
    dataset it has none for, gets the budget's defaults: say which, rather than run them silently."""
    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    model, schedule, dataset = choices.get("model"), choices.get("schedule"), choices.get("dataset")
    known = sorted(path.stem.removeprefix(f"{model}_{schedule}_")
                   for path in (config_dir() / DATASET_BUDGETS).glob(f"{model}_{schedule}_*.yaml"))
    if known and dataset not in known:
        log.warning("%s has per-dataset settings under schedule=%s for %s, not for dataset=%s: its budget's defaults "
                    "apply (conf/_internal/budget/%s_%s.yaml); set the length and learning rate for this data on the "
                    "command line", model, schedule, ", ".join(known), dataset, model, schedule)


def build(cfg: DictConfig) -> tuple[ZSLDataModule, ZSLModule]:
    """The data (read and validated now, before any work) and a fresh model of the configured
    method (model._target_: IZF or a baseline) sized to it."""
    datamodule = ZSLDataModule(**OmegaConf.to_container(cfg.dataset, resolve=True, throw_on_missing=True))
    datamodule.setup("fit")
    _check_recipe(datamodule)
    settings = OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True)
    method = hydra.utils.get_class(settings.pop("_target_"))
    # a key the method does not take (`+model.foo=1`) is refused here, not as a TypeError from its constructor
    given = {"num_classes", "feature_dim", "semantic_dim"}  # from the data
    refuse_unknown_keys("model", settings, set(inspect.signature(method).parameters) - given)
    model = method(num_classes=len(datamodule.semantics), feature_dim=datamodule.features.shape[1],
                   semantic_dim=datamodule.semantics.shape[1], **settings)
    return datamodule, model


class Interrupted(Exception):
    """SIGTERM or Ctrl-C arrived: last.ckpt is written and the run can be resumed."""


def _interrupted(reason: str, trainer: L.Trainer, saver: SaveOnInterrupt, output_dir: Path) -> Interrupted:
    return Interrupted(f"stopped by {reason} at step {trainer.global_step}; "
                       + (f"saved {saver.saved_to}; " if saver.saved_to else "")
                       + f"resume with: python train.py <same overrides> hydra.run.dir={output_dir} ckpt_path=last")


def _trainer(cfg: DictConfig, callbacks: list[Any]) -> L.Trainer:
    """The configured Trainer, built before any work so that settings Lightning refuses (trainer=gpu
    where there is no GPU) end the run in one line. Its loggers are added once the data is read."""
    try:
        return hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=callbacks)
    except InstantiationException as err:
        if not isinstance(err.__cause__, MisconfigurationException):
            raise
        keys = ", ".join(f"{key}={cfg.trainer.get(key)}" for key in ("accelerator", "devices", "strategy"))
        hint = ("; this machine has no GPU: leave out trainer=gpu (the default uses a GPU where there is one)"
                if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available() else "")
        raise ConfigError(f"trainer ({keys}): {err.__cause__}{hint}") from None


def _resume_from(cfg: DictConfig, model: ZSLModule, output_dir: Path) -> str | None:
    """The checkpoint to resume from, checked before any work; None to start afresh."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.info("ckpt_path=last: no %s yet, starting from the beginning", last)
            return None
        ckpt_path = str(last)
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, model)
        log.info("resuming from %s", ckpt_path)
        for leftover in (output_dir / "checkpoints").glob(".*.ckpt.*.tmp"):  # a killed run's unfinished write
            leftover.unlink(missing_ok=True)
    return ckpt_path


def _command_line_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _fit_and_evaluate(cfg: DictConfig) -> tuple[tuple[ZSLModule, ZSLDataModule], dict[str, float]]:
    """One model trained and evaluated on `cfg`'s data, with nothing written (the validation task
    that chooses a run's per-dataset settings): the run's trainer settings and progress bar, no
    checkpoints or loggers."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    callbacks = [c for c in _instantiate_all(cfg.get("callbacks")) if not isinstance(c, ModelCheckpoint)]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=callbacks, enable_checkpointing=False)
    datamodule, model = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    return (model, datamodule), evaluate_model(model, datamodule, trainer).metrics


def _rescore(trained: tuple[ZSLModule, ZSLDataModule], cfg: DictConfig) -> dict[str, float]:
    """The validation metrics of an already trained model with `cfg`'s classifier settings (refit only)."""
    model, datamodule = trained
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    settings.pop("_target_")
    model.hparams.update(settings)
    return evaluate_model(model, datamodule).metrics


def train(cfg: DictConfig) -> dict[str, float]:
    started = time.perf_counter()  # time to accuracy is part of the result: metrics.json keeps it
    output_dir = Path(cfg.paths.output_dir)
    log.info("run directory: %s", output_dir)
    if not (isinstance(cfg.trainer.max_steps, int) and cfg.trainer.max_steps >= 1):
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps}: expected an integer ≥ 1 (the flow's training "
                          "length; the paper's is 11000)")
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in config.yaml; no "Seed set" line
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    checkpoint_dir = next((c.dirpath for c in callbacks if isinstance(c, ModelCheckpoint)), output_dir / "checkpoints")
    saver = SaveOnInterrupt(checkpoint_dir)
    trainer = _trainer(cfg, [*callbacks, saver])
    if selection_applies(cfg):
        build(cfg)  # the data and the settings are checked before the validation task spends any time
    _check_dataset_budget()
    selection = load_or_choose(cfg, output_dir, _command_line_overrides(), _fit_and_evaluate, _rescore,
                               multi_process=_multi_process(cfg))
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the final run as if it were the only one
    datamodule, model = build(cfg)
    ckpt_path = _resume_from(cfg, model, output_dir)
    log.info("data %s: %s", datamodule.data.name, datamodule.data.summary())
    log.info("model %s: %s trainable parameters", type(model).__name__,
             f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    if rank_zero_only.rank == 0:  # DDP: Lightning re-runs this script for the other processes
        with atomic_path(output_dir / "config.yaml") as tmp:
            OmegaConf.save(cfg, tmp, resolve=True)

    loggers = instantiate_loggers(cfg)
    for logger in loggers:  # the whole experiment, not only the model's hyperparameters
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.loggers = loggers
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise _interrupted("SIGTERM", trainer, saver, output_dir) from None
    if saver.interrupted:
        raise _interrupted("Ctrl-C", trainer, saver, output_dir)
    if not trainer.is_global_zero:  # multi-GPU: one process evaluates, on the full test splits
        return {}
    # Evaluation uses the final weights of the fixed schedule (no selection on test data).
    evaluation = evaluate_model(model, datamodule, trainer)
    metrics = evaluation.metrics
    metrics[WALL_TIME_KEY] = time.perf_counter() - started  # this process: a resumed run counts its own part
    for logger in loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    save_pictures(model, datamodule, evaluation.predictions, output_dir, loggers)

    for logger in loggers:
        if isinstance(logger, WandbLogger):  # one W&B run per job, also within a multirun
            logger.experiment.finish()

    write_json(output_dir / METRICS_FILE, metrics | {DATA_KEY: datamodule.data.name}
               | ({SELECTION_KEY: selection} if selection else {}))
    task = ("validation task: seen classes only, no test data" if datamodule.hparams.split == "validation"
            else "test splits")
    console = Console()
    console.print(results_table(metrics, f"{type(model).__name__} on {datamodule.data.name}, {task} (%)",
                                cfg.model.classifier))
    for name in model.classifiers:
        if f"{name}/best_gamma" in metrics:
            gamma = gamma_of(model.hparams.calibration_gamma, name)
            per_classifier = isinstance(cfg.model.calibration_gamma, DictConfig)  # IZF's {softmax: γ, nb: γ}
            console.print(f"{name}: calibrated stacking at γ={metrics[f'{name}/best_gamma']:.3g} gives validation H "
                          f"{100 * metrics[f'{name}/best_gamma/gzsl/H']:.2f} (γ={gamma:g} gave "
                          f"{100 * metrics[f'{name}/gzsl/H']:.2f}); to use it: "
                          f"model.calibration_gamma{f'.{name}' if per_classifier else ''}=<γ>")
    if selection:
        console.print(summary(selection))
    log.info("metrics written to %s", output_dir / METRICS_FILE)
    return metrics


def user_error(err: BaseException) -> str | None:
    """The one-line message for an error caused by what the user gave; None for a bug."""
    if isinstance(err, MissingMandatoryValue):  # a `???` key left unset, e.g. dataset=custom without a root
        return f"set {err.full_key}=... on the command line (it has no default)"
    return str(err) if isinstance(err, IZFError) else None


def final_line(line: str) -> None:
    """The line that ends a run, on stderr and in the job's log file (Hydra's train.log, which
    otherwise ends without saying why)."""
    print(line, file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_with_error(message: str) -> None:
    final_line(f"error: {message}")
    sys.exit(2)


def _multi_process(cfg: DictConfig) -> bool:
    return str(cfg.trainer.get("strategy", "auto")).startswith("ddp") and cfg.trainer.get("devices") not in (1, "1")


def run_job(cfg: DictConfig) -> float | None:
    """train() as one job of train.py, returning GZSL H for sweepers. In a single run, bad input
    ends it with one `error:` line (status 2) and SIGTERM or Ctrl-C with status 3, that line also
    ending its train.log. In a multirun a failed job must not take the others down: its reason goes
    to error.txt in its directory (where `python -m izf.report` finds it) and it returns None, which
    the Optuna sweeper records as a failed trial (a NaN would crash optuna 2.10's sweeper) and the
    basic sweeper ignores. SIGTERM stops a multirun too: the whole sweep is being preempted."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and _multi_process(cfg):
        exit_with_error("trainer=ddp cannot run inside a multirun (-m): Lightning starts the other processes by "
                        "re-running the command line, which a sweep cannot do. Use launcher=slurm (each job its own "
                        "DDP run), or run the jobs one after another without -m")
    try:
        metrics = train(cfg)
        return metrics.get("gzsl/H")  # None on the non-zero ranks of a multi-GPU run
    except Interrupted as err:
        final_line(f"interrupted: {err}")
        sys.exit(3)
    except Exception as err:
        message = user_error(err)
        if not multirun:
            if message is None:
                raise
            exit_with_error(message)
        message, details = message or f"{type(err).__name__}: {err}", traceback.format_exc()
    error_file = Path(cfg.paths.output_dir) / FAILURE_FILE
    error_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(error_file) as tmp:
        tmp.write_text(f"{message}\n\n{details}")
    log.error("job failed: %s (%s)", message, error_file)
    return None
