"""The IZF LightningModule: the invertible flow as encoder and generator, its four losses, the
training step and the optimiser. Evaluation lives in izf.evaluation.protocol; the random-stream
and non-finite policies are callbacks the module brings with it (configure_callbacks)."""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor

from izf.errors import ConfigError
from izf.evaluation.protocol import fit_softmax_classifiers, generate_unseen
from izf.model import losses
from izf.model.attribute_map import fit_attribute_map
from izf.model.classifiers import GaussianClassifier, naive_bayes_scores
from izf.model.flow import InvertibleFlow
from izf.model.optim import adam
from izf.training.base import ZSLModule
from izf.training.callbacks import NonFiniteGuard, RandomStreams
from izf.training.hyperparameters import (
    GAUSSIAN_DEFAULTS,
    IZF_KEYS,
    LOSS_DEFAULTS,
    NONFINITE_DEFAULTS,
    check_hyperparameters,
    check_keys,
)

ACTNORM_SAMPLE = 1024  # training images that initialise ActNorm (per-dimension mean and std)


class IZF(ZSLModule):
    """Hyperparameters are plain containers only (numbers, strings, lists, dicts), so checkpoints
    load with torch's weights_only=True. Classifiers: the held-out softmax on real seen + generated
    unseen features; the naive-Bayes rule on the flow's semantic factor ĉ (the paper's two); and a
    Gaussian likelihood on the features whose unseen classes are the generated ones (fit_classifiers)."""

    classifiers = ("nb", "softmax", "gaussian")

    def __init__(self, num_classes: int, feature_dim: int, semantic_dim: int, flow: dict[str, Any],
                 loss: dict[str, Any], optimizer: dict[str, Any], softmax: dict[str, Any],
                 classifier: str = "softmax", calibration_gamma: float | dict[str, float] = 0.0,
                 jitter: float = 0.008, unseen_centre: float = 0.0, gaussian: dict[str, Any] | None = None,
                 compile: bool = False, nonfinite: dict[str, Any] | None = None,
                 log_term_gradients: bool = True):
        super().__init__(num_classes, semantic_dim, classifier, calibration_gamma)
        nonfinite = {**NONFINITE_DEFAULTS, **(nonfinite or {})}
        loss = {**LOSS_DEFAULTS, **loss}
        gaussian = {**GAUSSIAN_DEFAULTS, **(gaussian or {})}
        settings = {"flow": flow, "loss": loss, "optimizer": optimizer, "softmax": softmax, "jitter": jitter,
                    "calibration_gamma": calibration_gamma, "nonfinite": nonfinite, "unseen_centre": unseen_centre,
                    "gaussian": gaussian}
        check_keys(settings, IZF_KEYS)
        check_hyperparameters(settings)
        if not 0 < semantic_dim < feature_dim:
            raise ConfigError(f"the semantic dim ({semantic_dim}) must be smaller than the feature dim "
                              f"({feature_dim}): f(x) = [ĉ (d_c dims); ẑ (D − d_c dims)]")
        self.save_hyperparameters()
        self.hparams.nonfinite, self.hparams.loss, self.hparams.gaussian = nonfinite, loss, gaussian
        # fit_classifiers' and classifier_scores' work that the validation choice's candidates share:
        # {name: (what it was computed for, the result)}
        self._reusable: dict[str, tuple[str, Any]] = {}
        self.flow = InvertibleFlow(feature_dim, **flow)
        self.step_terms: dict[str, Tensor] = {}  # this step's weighted loss terms, for NonFiniteGuard
        self.register_buffer("feature_means", torch.zeros(num_classes, feature_dim), persistent=False)

    # ---- class information -------------------------------------------------------------------
    def set_classes(self, semantics: Tensor, seen_classes: Tensor, feature_means: Tensor | None = None) -> None:
        """The class semantics, which classes are seen, and (for loss.centre=dataset) the mean
        training feature of each seen class."""
        super().set_classes(semantics, seen_classes)
        if feature_means is not None:
            self.feature_means.copy_(feature_means)

    def prepare(self, datamodule, stage: str = "fit") -> None:
        """Take the class information from the data; before fitting, initialise ActNorm from a
        fixed random sample of the training set rather than each process's first batch: the same
        on every DDP process (Lightning calls this through setup, before the model is wrapped)."""
        datamodule.setup(stage)
        self.set_classes(datamodule.semantics, datamodule.seen_classes, datamodule.class_feature_means())
        if stage == "fit" and self.hparams.flow.get("actnorm"):
            x, _ = datamodule.split("trainval")
            rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:ACTNORM_SAMPLE]
            self.flow.initialise_actnorm(x[rows].to(self.device))

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

    # ---- the evaluation protocol's calls -------------------------------------------------------
    def fit_classifiers(self, x_seen: Tensor, y_seen: Tensor, progress) -> dict[str, Any]:
        """Generate the unseen classes' features, re-centred `unseen_centre` of the way onto the
        attribute map's prediction of their means (izf.model.attribute_map: 0 keeps the flow's own
        samples), and fit the softmax classifiers on them and the Gaussian classifier on their means.

        Refitting with other Gaussian settings (as the validation choice does) reuses the softmax
        classifiers: they depend on neither."""
        seen, unseen = self.seen_classes, self.unseen_classes
        seen_means, _ = losses.class_means(x_seen, y_seen, seen)
        data = [list(x_seen.shape), float(x_seen.sum()), int(y_seen.sum())]
        attribute_map = self._reuse("attribute map", data, lambda: fit_attribute_map(self.class_semantics[seen],
                                                                                     seen_means))

        def fit_softmax():
            x_gen, y_gen = generate_unseen(self)
            generated_means, _ = losses.class_means(x_gen, y_gen, unseen)
            shift = self.hparams.unseen_centre * (attribute_map(self.class_semantics[unseen]) - generated_means)
            x_gen = x_gen + shift[torch.searchsorted(unseen, y_gen)]
            return fit_softmax_classifiers(self, x_seen, y_seen, progress, (x_gen, y_gen)), generated_means + shift

        softmax, unseen_means = self._reuse(
            "softmax", [self.global_step, self.hparams.softmax, self.hparams.unseen_centre, data], fit_softmax)
        return {"softmax": softmax,
                "gaussian": self._gaussian_classifier(x_seen, y_seen, seen_means, attribute_map, unseen_means)}

    def _reuse(self, name: str, inputs: list, compute):
        """compute(), or its result from the last call under `name` if that was for the same inputs
        (the flow's training step and the settings and data it depends on)."""
        key = json.dumps(inputs, sort_keys=True)
        if name not in self._reusable or self._reusable[name][0] != key:
            self._reusable[name] = (key, compute())
        return self._reusable[name][1]

    def _gaussian_classifier(self, x_seen: Tensor, y_seen: Tensor, seen_means: Tensor, attribute_map,
                             unseen_means: Tensor):
        """Seen classes: their mean training feature, shrunk toward the attribute map's held-out
        prediction by shrinkage κ (weight κ / (n + κ) for a class of n images: few images measure a mean
        roughly); unseen classes: the generated means. One variance per side: σ², the seen images'
        spread around their class means per dimension, and for the unseen side σ² + ω τ², with τ² the
        map's held-out error per dimension (a predicted mean is that uncertain) and ω the widening."""
        seen, unseen, dim = self.seen_classes, self.unseen_classes, self.hparams.feature_dim
        settings = self.hparams.gaussian
        counts = torch.bincount(torch.searchsorted(seen, y_seen), minlength=len(seen)).to(x_seen.dtype)[:, None]
        held_out = attribute_map.held_out.to(x_seen.dtype)
        within = (x_seen - seen_means[torch.searchsorted(seen, y_seen)]).pow(2).sum() / (len(x_seen) * dim)
        map_error = (held_out - seen_means).pow(2).sum() / (len(seen) * dim)
        shrink = settings["shrinkage"] / (counts + settings["shrinkage"])
        means = torch.zeros(self.hparams.num_classes, dim, dtype=x_seen.dtype, device=x_seen.device)
        means[seen] = (1 - shrink) * seen_means + shrink * held_out
        means[unseen] = unseen_means
        variances = within.expand(self.hparams.num_classes).clone()
        variances[unseen] += settings["widening"] * map_error
        return GaussianClassifier(means, variances)

    @torch.no_grad()
    def classifier_scores(self, fitted: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        # The flow's ĉ does not depend on the classifiers' settings: encoded once per batch of test images
        # (one entry per batch, so that a split of several batches is reused too).
        c_hat = self._reuse(f"ĉ of {len(x)} images summing to {float(x.sum())!r}", [self.global_step],
                            lambda: self.encode(x)[0])
        nb, gaussian = naive_bayes_scores(c_hat, self.class_semantics), fitted["gaussian"](x)
        return {"nb/gzsl": nb, "nb/zsl": nb, "softmax/gzsl": fitted["softmax"]["gzsl"](x),
                "softmax/zsl": fitted["softmax"]["zsl"](x), "gaussian/gzsl": gaussian, "gaussian/zsl": gaussian}

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
        self.step_terms = terms
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

    def configure_callbacks(self) -> list[L.Callback]:
        """Added to any Trainer this module is fitted with, whoever builds it."""
        return [RandomStreams(), NonFiniteGuard(**self.hparams.nonfinite)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.flow.parameters(), self._trainer, **self.hparams.optimizer)
