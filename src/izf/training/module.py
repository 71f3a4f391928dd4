"""The IZF LightningModule: the invertible flow, its four losses, generation, and evaluation
with both classifiers under the (G)ZSL protocol."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor

from izf.errors import ConfigError
from izf.evaluation.metrics import gzsl_metrics, zsl_metrics
from izf.model import losses
from izf.model.classifiers import SoftmaxClassifier, naive_bayes_scores
from izf.model.flow import InvertibleFlow

CLASSIFIERS = ("nb", "softmax")
TEST_SPLITS = ("test_seen", "test_unseen")


class IZF(L.LightningModule):
    """Hyperparameters are plain containers only (numbers, strings, lists, dicts), so checkpoints
    load with torch's weights_only=True."""

    def __init__(self, num_classes: int, feature_dim: int, semantic_dim: int, flow: dict[str, Any],
                 loss: dict[str, Any], optimizer: dict[str, Any], softmax: dict[str, Any],
                 classifier: str = "softmax", calibration_gamma: float = 0.0, jitter: float = 0.008,
                 compile: bool = False):
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"model.classifier must be one of {CLASSIFIERS}, got '{classifier}'")
        if not 0 < semantic_dim < feature_dim:
            raise ConfigError(f"the semantic dim ({semantic_dim}) must be smaller than the feature dim "
                              f"({feature_dim}): f(x) = [ĉ (d_c dims); ẑ (D − d_c dims)]")
        self.save_hyperparameters()
        self.flow = InvertibleFlow(feature_dim, **flow)
        # Class information travels with the checkpoint, so a reloaded model predicts on its own.
        self.register_buffer("class_semantics", torch.zeros(num_classes, semantic_dim))
        self.register_buffer("seen_mask", torch.zeros(num_classes, dtype=torch.bool))

    # ---- class information -------------------------------------------------------------------
    def set_classes(self, semantics: Tensor, seen_classes: Tensor) -> None:
        self.class_semantics.copy_(semantics)
        self.seen_mask.zero_()
        self.seen_mask[seen_classes] = True

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            datamodule.setup(stage)
            self.set_classes(datamodule.semantics, datamodule.seen_classes)

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

    def latent(self, classes: Tensor, noise: bool = True) -> Tensor:
        """[c_y ; z] with z ~ N(0, I), or z = 0 for class prototypes."""
        c = self.class_semantics[classes]
        z_dim = self.hparams.feature_dim - self.hparams.semantic_dim
        z = (torch.randn if noise else torch.zeros)(len(classes), z_dim, device=c.device, dtype=c.dtype)
        return torch.cat([c, z], dim=1)

    def generate(self, classes: Tensor) -> Tensor:
        """x̂ = f⁻¹([c_y ; z]), one sample per entry of `classes`."""
        return self.flow.inverse(self.latent(classes))

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
        if w["negative"] > 0:
            latents.append(self.latent(unseen[torch.randint(len(unseen), (len(x),), device=x.device)]))
        if w["centralising"] > 0:
            # Prototypes of every seen class, masked to those in the batch: a fixed size, so no
            # wait for the device; where seen classes outnumber the batch (SUN), only those present.
            classes = seen if len(seen) <= len(x) else torch.unique(y)
            means, present = losses.class_means(x, y, classes)
            latents.append(self.latent(classes, noise=False))
        if latents:  # one batched reverse pass for the unseen samples and the prototypes
            generated = self.flow.inverse(torch.cat(latents))
            if w["negative"] > 0:
                x_unseen, generated = generated[: len(x)], generated[len(x):]
                terms["negative"] = w["negative"] * losses.negative_sample_loss(
                    x, x_unseen, w["mmd_scales"], w["mmd_unbiased"], w["negative_margin"])
            if w["centralising"] > 0:
                terms["centralising"] = w["centralising"] * losses.centralising_loss(generated, means, present)
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
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.flow.parameters(), **self.hparams.optimizer)

    # ---- evaluation ---------------------------------------------------------------------------
    def fit_softmax_classifiers(self, x_seen: Tensor, y_seen: Tensor) -> dict[str, SoftmaxClassifier]:
        """Freeze the flow, generate n_gen features per unseen class, and train the held-out
        classifiers: GZSL on [real seen; generated unseen] over all classes, ZSL on generated
        unseen only over the unseen classes."""
        cfg = self.hparams.softmax
        unseen = self.unseen_classes
        fit = {k: cfg[k] for k in ("epochs", "lr", "batch_size", "weight_decay")}
        all_classes = torch.arange(self.hparams.num_classes, device=self.device)
        # Lightning evaluates under inference_mode; this is a small training run of its own.
        with torch.inference_mode(False), torch.enable_grad():
            y_gen = unseen.clone().repeat_interleave(cfg["n_gen"])
            with torch.no_grad():
                x_gen = torch.cat([self.generate(rows) for rows in y_gen.split(cfg["generation_batch"])])
            x_seen, y_seen = x_seen.clone(), y_seen.clone()
            return {
                "gzsl": SoftmaxClassifier(self.hparams.feature_dim, all_classes.clone(), self.hparams.num_classes)
                .to(self.device).fit(torch.cat([x_seen, x_gen]), torch.cat([y_seen, y_gen]), **fit),
                "zsl": SoftmaxClassifier(self.hparams.feature_dim, unseen.clone(), self.hparams.num_classes)
                .to(self.device).fit(x_gen, y_gen, **fit),
            }

    def _fit_softmax_on_trainval(self, datamodule) -> None:
        x_seen, y_seen = (t.to(self.device) for t in datamodule.split("trainval"))
        self._softmax = self.fit_softmax_classifiers(x_seen, y_seen)

    def on_test_epoch_start(self) -> None:
        self._fit_softmax_on_trainval(self.trainer.datamodule)
        self._outputs = {split: [] for split in TEST_SPLITS}

    def scores(self, x: Tensor) -> dict[str, Tensor]:
        """Scores (N×C) of every classifier for every task (after fit_softmax_classifiers)."""
        c_hat, _, _ = self.encode(x)
        nb = naive_bayes_scores(c_hat, self.class_semantics)
        return {"nb/gzsl": nb, "nb/zsl": nb,
                "softmax/gzsl": self._softmax["gzsl"](x), "softmax/zsl": self._softmax["zsl"](x)}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self._outputs[TEST_SPLITS[dataloader_idx]].append((self.scores(x), y))

    def on_test_epoch_end(self) -> None:
        gathered = [({k: torch.cat([s[k] for s, _ in outputs]) for k in outputs[0][0]},
                     torch.cat([y for _, y in outputs])) for outputs in self._outputs.values()]
        self.test_metrics = self.protocol_metrics(*gathered[0], *gathered[1])
        self.log_dict(self.test_metrics)
        del self._outputs, self._softmax

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
                self.seen_classes, self.unseen_classes, self.hparams.calibration_gamma).items()}
        chosen = self.hparams.classifier
        return metrics | {k[len(chosen) + 1:]: v for k, v in metrics.items() if k.startswith(chosen + "/")}

    @torch.no_grad()
    def evaluate(self, datamodule) -> dict[str, float]:
        """The whole protocol outside a Lightning test loop (e.g. at milestones during training):
        fit the softmax classifiers, score both test splits in one pass each, compute the metrics."""
        was_training = self.training
        self.eval()
        self._fit_softmax_on_trainval(datamodule)
        scored = []
        for split in TEST_SPLITS:
            x, y = (t.to(self.device) for t in datamodule.split(split))
            scored += [self.scores(x), y]
        del self._softmax
        self.train(was_training)
        return self.protocol_metrics(*scored)
