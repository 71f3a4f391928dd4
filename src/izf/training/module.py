"""The IZF LightningModule: the invertible flow, its four losses, generation, and evaluation
with both classifiers under the (G)ZSL protocol."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor

from izf.errors import ConfigError, IZFError
from izf.evaluation.calibration import stacking_curve
from izf.evaluation.metrics import calibrated_stacking, gzsl_metrics, zsl_metrics
from izf.model import losses
from izf.model.classifiers import SoftmaxClassifier, naive_bayes_scores
from izf.model.flow import InvertibleFlow
from izf.training.outputs import CLASSIFIERS

log = logging.getLogger(__name__)
TEST_SPLITS = ("test_seen", "test_unseen")
NONFINITE_ACTIONS = ("stop", "skip")
MMD_BANDWIDTHS = ("median", "fixed")
LOSS_SCALINGS = ("normalised", "paper")
# Loss keys added after the first release: older checkpoints and configs get the paper's behaviour.
LOSS_DEFAULTS = {"scaling": "paper", "mmd_bandwidth": "fixed", "negative_start": 0, "centre": "batch"}
CENTRES = ("batch", "dataset")
ACTNORM_SAMPLE = 1024  # training images that initialise ActNorm (per-dimension mean and std)


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(low: int, high: float = math.inf):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


# model.<key>: (test, what is expected). Checked before any work, so a bad override is one line.
HYPERPARAMETER_RULES = {
    "flow.blocks": (_count(1, 64), "an integer in 1..64 (the paper uses 10; each block is two couplings)"),
    "flow.hidden": (_count(1), "an integer ≥ 1"),
    "flow.clamp": (_positive, "a number > 0"),
    "flow.init_std": (_non_negative, "a number ≥ 0"),
    "flow.mixing": (lambda v: v in ("permutation", "lu"), "permutation or lu"),
    "loss.semantic": (_non_negative, "a weight ≥ 0 (0 turns the term off)"),
    "loss.negative": (_non_negative, "a weight ≥ 0 (0 turns the term off)"),
    "loss.centralising": (_non_negative, "a weight ≥ 0 (0 turns the term off)"),
    "loss.mmd_scales": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(map(_positive, v)),
                        "a non-empty list of kernel scales > 0"),
    "loss.negative_margin": (lambda v: v is None or _positive(v), "null or a number > 0"),
    "loss.negative_start": (_count(0), "an integer ≥ 0 (the step at which the negative term switches on)"),
    "loss.mmd_bandwidth": (lambda v: v in MMD_BANDWIDTHS, " or ".join(MMD_BANDWIDTHS)),
    "loss.scaling": (lambda v: v in LOSS_SCALINGS, " or ".join(LOSS_SCALINGS)),
    "loss.centre": (lambda v: v in CENTRES, " or ".join(CENTRES)),
    "optimizer.lr": (_positive, "a learning rate > 0"),
    "optimizer.weight_decay": (_non_negative, "a number ≥ 0"),
    "jitter": (_non_negative, "a number ≥ 0"),
    "calibration_gamma": (lambda v: all(_finite(g) for g in (v.values() if isinstance(v, dict) else [v]))
                          and (not isinstance(v, dict) or set(v) <= set(CLASSIFIERS)),
                          f"a finite number, or one per classifier ({', '.join(CLASSIFIERS)})"),
    "softmax.n_gen": (_count(1), "an integer ≥ 1"),
    "softmax.epochs": (_count(1), "an integer ≥ 1"),
    "softmax.lr": (_positive, "a learning rate > 0"),
    "softmax.batch_size": (_count(1), "an integer ≥ 1"),
    "softmax.weight_decay": (_non_negative, "a number ≥ 0"),
    "softmax.generation_batch": (_count(1), "an integer ≥ 1"),
    "softmax.seed": (_count(0), "an integer ≥ 0"),
    "softmax.balanced": (lambda v: isinstance(v, bool), "true or false"),
    "softmax.temperature": (_non_negative, "a number ≥ 0 (1: z ~ N(0, I) as trained; 0: the class prototypes)"),
    "nonfinite.action": (lambda v: v in NONFINITE_ACTIONS, " or ".join(NONFINITE_ACTIONS)),
    "nonfinite.lr_factor": (lambda v: _positive(v) and v < 1, "a factor in (0, 1)"),
    "nonfinite.max_skips": (_count(0), "an integer ≥ 0"),
}


def check_hyperparameters(hparams: dict[str, Any]) -> None:
    """Each rule whose key is given (absent keys take the code's defaults)."""
    absent = object()
    for key, (valid, expected) in HYPERPARAMETER_RULES.items():
        value = hparams
        for part in key.split("."):
            value = value.get(part, absent) if isinstance(value, dict) else absent
        if value is not absent and not valid(value):
            raise ConfigError(f"model.{key}={value!r}: expected {expected}")


@contextmanager
def progress_task(trainer: L.Trainer | None, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar for work outside Lightning's loops (the classifier fitting): a task in
    Lightning's own rich bar while one is shown (rich allows one live display at a time), else a
    bar of its own. Yields the function that advances it by one."""
    shown = getattr(getattr(trainer, "progress_bar_callback", None), "progress", None)
    if isinstance(shown, Progress):
        task = shown.add_task(description, total=total)
        yield lambda: shown.advance(task)
        return
    with Progress(*Progress.get_default_columns(), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


class DivergenceError(IZFError):
    """Training produced NaN/inf; the message names the step and the loss term."""


class IZF(L.LightningModule):
    """Hyperparameters are plain containers only (numbers, strings, lists, dicts), so checkpoints
    load with torch's weights_only=True."""

    def __init__(self, num_classes: int, feature_dim: int, semantic_dim: int, flow: dict[str, Any],
                 loss: dict[str, Any], optimizer: dict[str, Any], softmax: dict[str, Any],
                 classifier: str = "softmax", calibration_gamma: float | dict[str, float] = 0.0,
                 jitter: float = 0.008,
                 compile: bool = False, nonfinite: dict[str, Any] | None = None,
                 log_term_gradients: bool = True):
        super().__init__()
        nonfinite = {"action": "stop", "lr_factor": 0.5, "max_skips": 10, **(nonfinite or {})}
        loss = {**LOSS_DEFAULTS, **loss}
        check_hyperparameters({"flow": flow, "loss": loss, "optimizer": optimizer, "softmax": softmax,
                               "jitter": jitter, "calibration_gamma": calibration_gamma, "nonfinite": nonfinite})
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"model.classifier must be one of {CLASSIFIERS}, got '{classifier}'")
        if not 0 < semantic_dim < feature_dim:
            raise ConfigError(f"the semantic dim ({semantic_dim}) must be smaller than the feature dim "
                              f"({feature_dim}): f(x) = [ĉ (d_c dims); ẑ (D − d_c dims)]")
        self.save_hyperparameters()
        self.hparams.nonfinite, self.hparams.loss = nonfinite, loss
        self.flow = InvertibleFlow(feature_dim, **flow)
        self.skipped_steps = 0
        # Class information travels with the checkpoint, so a reloaded model predicts on its own.
        self.register_buffer("class_semantics", torch.zeros(num_classes, semantic_dim))
        self.register_buffer("seen_mask", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("feature_means", torch.zeros(num_classes, feature_dim), persistent=False)

    # ---- class information -------------------------------------------------------------------
    def set_classes(self, semantics: Tensor, seen_classes: Tensor, feature_means: Tensor | None = None) -> None:
        """The class semantics, which classes are seen, and (for loss.centre=dataset) the mean
        training feature of each seen class."""
        self.class_semantics.copy_(semantics)
        self.seen_mask.zero_()
        self.seen_mask[seen_classes] = True
        if feature_means is not None:
            self.feature_means.copy_(feature_means)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            datamodule.setup(stage)
            self.set_classes(datamodule.semantics, datamodule.seen_classes, datamodule.class_feature_means())
            if stage == "fit" and self.hparams.flow.get("actnorm"):
                # From a fixed random sample of the training set rather than each process's first
                # batch: the same on every DDP process (set before the model is wrapped).
                x, _ = datamodule.split("trainval")
                rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:ACTNORM_SAMPLE]
                self.flow.initialise_actnorm(x[rows].to(self.device))

    def _class_sets(self) -> tuple[Tensor, Tensor]:
        """(seen, unseen) class indices. nonzero() waits for the device, so they are computed once
        per device and per change of the mask (its in-place version counter), not every step."""
        key = (self.seen_mask.device, self.seen_mask._version)
        if getattr(self, "_class_sets_key", None) != key:
            self._class_sets_cache = (self.seen_mask.nonzero().squeeze(1), (~self.seen_mask).nonzero().squeeze(1))
            self._class_sets_key = key
        return self._class_sets_cache

    @property
    def seen_classes(self) -> Tensor:
        return self._class_sets()[0]

    @property
    def unseen_classes(self) -> Tensor:
        return self._class_sets()[1]

    # ---- the flow as an encoder and a generator --------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """f(x) split into the semantic factor ĉ, the non-semantic factor ẑ, and log|det J|."""
        out, log_det = self.flow(x)
        d_c = self.hparams.semantic_dim
        return out[:, :d_c], out[:, d_c:], log_det

    def latent(self, classes: Tensor, temperature: float = 1.0) -> Tensor:
        """[c_y ; z] with z ~ N(0, temperature² I); temperature 0 gives the class prototypes (z = 0)."""
        c = self.class_semantics[classes]
        z_dim = self.hparams.feature_dim - self.hparams.semantic_dim
        z = c.new_zeros(len(classes), z_dim)
        if temperature:
            z = torch.randn_like(z) * temperature
        return torch.cat([c, z], dim=1)

    def generate(self, classes: Tensor, temperature: float = 1.0) -> Tensor:
        """x̂ = f⁻¹([c_y ; z]), one sample per entry of `classes`."""
        return self.flow.inverse(self.latent(classes, temperature))

    # ---- training -----------------------------------------------------------------------------
    def loss_terms(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The weighted IZF losses; a term whose weight is 0 is not computed at all."""
        w = self.hparams.loss
        c_hat, z_hat, log_det = self.encode(x)
        terms = {"ml": losses.likelihood_loss(z_hat, log_det, self.hparams.feature_dim)}
        if w["semantic"] > 0:
            terms["semantic"] = w["semantic"] * losses.semantic_loss(c_hat, self.class_semantics[y])
        seen, unseen = self._class_sets()
        latents = []
        negative = w["negative"] > 0 and self.global_step >= w["negative_start"]
        if negative:
            latents.append(self.latent(unseen[torch.randint(len(unseen), (len(x),), device=x.device)]))
        if w["centralising"] > 0:
            # Prototypes of every seen class, masked to those in the batch: a fixed size, so no
            # wait for the device; where seen classes outnumber the batch (SUN), only those present.
            classes = seen if len(seen) <= len(x) else torch.unique(y)
            if w["centre"] == "batch":
                means, present = losses.class_means(x, y, classes)
            else:  # whole-training-set means (plus the jitter's mean): no sampling noise in the target
                means, present = self.feature_means[classes] + self.hparams.jitter / 2, None
            latents.append(self.latent(classes, temperature=0.0))
        if latents:  # one batched reverse pass for the unseen samples and the prototypes
            generated = self.flow.inverse(torch.cat(latents))
            if negative:
                x_unseen, generated = generated[: len(x)], generated[len(x):]
                terms["negative"] = w["negative"] * losses.negative_sample_loss(
                    x, x_unseen, w["mmd_scales"], w["mmd_unbiased"], w["negative_margin"], w["mmd_bandwidth"])
            if w["centralising"] > 0:
                terms["centralising"] = w["centralising"] * losses.centralising_loss(
                    generated, means, present, normalised=w["scaling"] == "normalised")
        return terms

    @property
    def compiled_loss_terms(self):
        """loss_terms through torch.compile, built on first use (kept out of the state dict)."""
        if getattr(self, "_compiled_loss_terms", None) is None:
            self._compiled_loss_terms = torch.compile(self.loss_terms)
        return self._compiled_loss_terms

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        x = x + self.hparams.jitter * torch.rand_like(x)
        terms = self.compiled_loss_terms(x, y) if self.hparams.compile else self.loss_terms(x, y)
        total = torch.stack(list(terms.values())).sum()
        # Tensors, not floats: Lightning reads them only every log_every_n_steps, so the step
        # never waits for the device (a prog_bar entry would read them every step).
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=False)
        if self._logs_this_step():
            self.log_dict(self.term_gradient_norms(terms), on_step=True, on_epoch=False)
        self._step_terms = terms
        return total

    def _logs_this_step(self) -> bool:
        every = self.trainer.log_every_n_steps if self._trainer is not None else 0
        return bool(self.hparams.log_term_gradients and every and self.global_step % every == 0)

    def term_gradient_norms(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """‖∂(weighted term)/∂θ‖ for each loss term: which term drives the update (the total
        gradient is clipped, so one term on a larger scale silences the others). One extra
        backward pass per term, on logging steps only."""
        params = [p for p in self.flow.parameters() if p.requires_grad]
        norms = {}
        for name, term in terms.items():
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            norms[f"grad_norm/{name}"] = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
        return norms

    # ---- divergence: NaN/inf never reaches the weights ------------------------------------------
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After backward, before clipping and Adam: a non-finite loss term or gradient stops the
        run (naming the step and the term) or, with nonfinite.action=skip, drops this update and
        lowers the learning rate. One device sync per step, the price of catching it in the step."""
        terms = self._step_terms
        # Element-wise, not the gradient norm: huge but finite gradients overflow a float32 norm
        # (seen at ~1e18 on AWA2-sized data) and are clipping's business, not divergence.
        finite = [torch.isfinite(v) for v in terms.values()]
        finite += [torch.isfinite(p.grad).all() for p in self.parameters() if p.grad is not None]
        if torch.stack(finite).all():
            return
        bad_terms = {name: float(v) for name, v in terms.items() if not torch.isfinite(v)}
        what = (", ".join(f"loss term '{name}' is {v}" for name, v in bad_terms.items()) if bad_terms
                else "the gradients are non-finite while every loss term is finite")
        cfg = self.hparams.nonfinite
        if cfg["action"] == "skip" and self.skipped_steps < cfg["max_skips"]:
            self.skipped_steps += 1
            for p in self.parameters():
                p.grad = None  # Adam leaves parameters without a gradient untouched
            for group in optimizer.param_groups:
                group["lr"] *= cfg["lr_factor"]
            log.warning("step %d: %s; skipped the update, learning rate now %.3g (%d of at most %d skips)",
                        self.global_step, what, optimizer.param_groups[0]["lr"], self.skipped_steps, cfg["max_skips"])
            return
        hint = ("" if cfg["action"] == "stop" else f" after {self.skipped_steps} skipped steps")
        raise DivergenceError(f"training diverged at step {self.global_step}: {what}{hint}; the weights were not "
                              "updated with it. Lower model.optimizer.lr, or set model.nonfinite.action=skip")

    def check_finite_weights(self, purpose: str) -> None:
        bad = [name for name, p in self.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise DivergenceError(f"refusing to {purpose}: non-finite weights in {bad[:3]}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite_weights("write a checkpoint")
        # Random streams, so a resumed run continues exactly where the checkpoint was taken.
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)  # weights_only-safe
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state,
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            kind, keys, position, has_gauss, gauss = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
            random.setstate(states["python"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
        self.skipped_steps = checkpoint.get("skipped_steps", 0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.flow.parameters(), **self.hparams.optimizer)

    # ---- evaluation ---------------------------------------------------------------------------
    def fit_softmax_classifiers(self, x_seen: Tensor, y_seen: Tensor) -> dict[str, SoftmaxClassifier]:
        """Freeze the flow, generate n_gen features per unseen class, and train the held-out
        classifiers: GZSL on [real seen; generated unseen] over all classes, ZSL on generated
        unseen only over the unseen classes."""
        cfg = self.hparams.softmax
        unseen = self.unseen_classes
        fit = {k: cfg[k] for k in ("epochs", "lr", "batch_size", "weight_decay")} | {"balanced": cfg.get("balanced", False)}
        all_classes = torch.arange(self.hparams.num_classes, device=self.device)
        # Lightning evaluates under inference_mode; this is a small training run of its own.
        with torch.inference_mode(False), torch.enable_grad(), \
                progress_task(self._trainer, "softmax classifiers", 2 * cfg["epochs"]) as advance:
            y_gen = unseen.clone().repeat_interleave(cfg["n_gen"])
            with torch.no_grad():
                x_gen = torch.cat([self.generate(rows, cfg.get("temperature", 1.0))
                                   for rows in y_gen.split(cfg["generation_batch"])])
            x_seen, y_seen = x_seen.clone(), y_seen.clone()
            return {
                "gzsl": SoftmaxClassifier(self.hparams.feature_dim, all_classes.clone(), self.hparams.num_classes)
                .to(self.device).fit(torch.cat([x_seen, x_gen]), torch.cat([y_seen, y_gen]), **fit, on_epoch=advance),
                "zsl": SoftmaxClassifier(self.hparams.feature_dim, unseen.clone(), self.hparams.num_classes)
                .to(self.device).fit(x_gen, y_gen, **fit, on_epoch=advance),
            }

    def _fit_softmax_on_trainval(self, datamodule) -> None:
        """With its own seeded random stream: the classifiers, and so the reported numbers, are a
        function of the weights, the data and softmax.seed alone: the same after training, in a
        resumed run and in eval.py, whatever drew random numbers before."""
        x_seen, y_seen = (t.to(self.device) for t in datamodule.split("trainval"))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.hparams.softmax.get("seed", 0))
            self._softmax = self.fit_softmax_classifiers(x_seen, y_seen)

    def scores(self, x: Tensor) -> dict[str, Tensor]:
        """Scores (N×C) of every classifier for every task (after fit_softmax_classifiers)."""
        c_hat, _, _ = self.encode(x)
        nb = naive_bayes_scores(c_hat, self.class_semantics)
        return {"nb/gzsl": nb, "nb/zsl": nb,
                "softmax/gzsl": self._softmax["gzsl"](x), "softmax/zsl": self._softmax["zsl"](x)}

    def gamma(self, classifier: str) -> float:
        """The calibrated-stacking γ of one classifier (each has its own score scale)."""
        gamma = self.hparams.calibration_gamma
        return float(gamma.get(classifier, 0.0) if isinstance(gamma, dict) else gamma)

    def protocol_metrics(self, seen_scores: dict[str, Tensor], y_seen: Tensor,
                         unseen_scores: dict[str, Tensor], y_unseen: Tensor) -> dict[str, float]:
        """ZSL T1 and GZSL U, S, H of both classifiers ("nb/...", "softmax/..."), and unprefixed
        those of the classifier named by the `classifier` hyperparameter."""
        metrics = {}
        for name in CLASSIFIERS:
            metrics |= {f"{name}/{k}": v for k, v in zsl_metrics(
                unseen_scores[f"{name}/zsl"], y_unseen, self.unseen_classes).items()}
            metrics |= {f"{name}/{k}": v for k, v in gzsl_metrics(
                seen_scores[f"{name}/gzsl"], y_seen, unseen_scores[f"{name}/gzsl"], y_unseen,
                self.seen_classes, self.unseen_classes, self.gamma(name)).items()}
        chosen = self.hparams.classifier
        return metrics | {k[len(chosen) + 1:]: v for k, v in metrics.items() if k.startswith(chosen + "/")}

    @torch.no_grad()
    def test_scores(self, datamodule) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], Tensor]:
        """Fit the softmax classifiers, then score both test splits (in rows of eval_batch_size).
        Returns (scores, labels) of test_seen, then of test_unseen."""
        self.check_finite_weights("evaluate")
        was_training = self.training
        self.eval()
        self._fit_softmax_on_trainval(datamodule)
        scored = []
        for split in TEST_SPLITS:
            x, y = datamodule.split(split)
            parts = [self.scores(rows.to(self.device)) for rows in x.split(datamodule.hparams.eval_batch_size)]
            scored += [{key: torch.cat([p[key] for p in parts]) for key in parts[0]}, y.to(self.device)]
        del self._softmax
        self.train(was_training)
        return tuple(scored)

    def evaluate(self, datamodule) -> dict[str, float]:
        """The whole protocol on the full test splits, in one process (also after multi-GPU
        training): the metrics of both classifiers. Keeps the reported classifier's GZSL
        predictions in `test_predictions` for per-class tables and pictures."""
        seen_scores, y_seen, unseen_scores, y_unseen = self.test_scores(datamodule)
        key, gamma = f"{self.hparams.classifier}/gzsl", self.gamma(self.hparams.classifier)
        self.test_predictions = {split: (calibrated_stacking(scores[key], self.seen_mask, gamma).argmax(1), y)
                                 for split, scores, y in (("test_seen", seen_scores, y_seen),
                                                          ("test_unseen", unseen_scores, y_unseen))}
        metrics = self.protocol_metrics(seen_scores, y_seen, unseen_scores, y_unseen)
        if datamodule.hparams.split == "validation":  # choose γ here, never on test data
            for name in CLASSIFIERS:
                curve = stacking_curve(seen_scores[f"{name}/gzsl"], y_seen, unseen_scores[f"{name}/gzsl"], y_unseen,
                                       self.seen_classes, self.unseen_classes)
                best = max(curve, key=lambda point: point["gzsl/H"])
                metrics |= {f"{name}/best_gamma": best["gamma"], f"{name}/best_gamma/gzsl/H": best["gzsl/H"]}
        return metrics
