"""CADA-VAE (Schönfeld, Ebrahimi, Sinha, Darrell, Akata, "Generalized Zero- and Few-Shot Learning via
Aligned Variational Autoencoders", CVPR 2019, arXiv:1812.01784): one VAE for image features and one
for class attributes, tied in a shared latent space by cross-reconstruction (each modality's latent
sample decoded by the other modality's decoder) and distribution alignment (the 2-Wasserstein
distance between the two encoders' diagonal Gaussians). After training, a linear softmax classifier
is fitted in the latent space on codes of real seen images and of unseen class attributes, and tests
the image encoder's mean μ(x).

The numbers and the small choices follow the authors' code, github.com/edgarschnfld/CADA-VAE-PyTorch
at commit 26f0085 (cited below as "reference"; files model/single_experiment.py, model/vaemodel.py,
model/models.py, model/final_classifier.py). The loss, per batch of N pairs (x, a = c_y):

    L = Σ|x̂ − x| + Σ|â − a| + β·KL + γ·(Σ|D_x(z_a) − x| + Σ|D_a(z_x) − a|) + δ·Σ_n W₂(q(z|x_n), q(z|a_n))

everything summed over the batch and the dimensions (reference vaemodel.py, trainstep), with β, γ
and δ warmed up linearly over windows of the 100 training epochs (see `warmup_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from izf.errors import ConfigError
from izf.model.classifiers import SoftmaxClassifier
from izf.model.optim import adam
from izf.training.base import ZSLModule
from izf.training.callbacks import NonFiniteGuard, RandomStreams
from izf.training.hyperparameters import ADAM_KEYS, check_keys

# Reference single_experiment.py, 'latent_size' and 'hidden_size_rule': (encoder, decoder) hidden widths
# of 'resnet_features' (1560, 1660) and 'attributes' (1450, 665); one hidden layer each (models.py).
LATENT_DIM = 64
HIDDEN = {"image_encoder": 1560, "image_decoder": 1660, "attribute_encoder": 1450, "attribute_decoder": 665}
# Reference single_experiment.py, 'model_specifics' → 'warmup' and 'epochs': each weight rises linearly
# from 0 at start_epoch to `factor` at end_epoch and stays there.
WARMUP = {"epochs": 100,
          "beta": {"factor": 0.25, "start": 0, "end": 93},
          "cross_reconstruction": {"factor": 2.37, "start": 21, "end": 75},
          "distance": {"factor": 8.13, "start": 6, "end": 22}}
WARMUP_TERMS = ("beta", "cross_reconstruction", "distance")
# Reference vaemodel.py: Adam(lr=lr_gen_model=0.00015, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=True).
OPTIMIZER = {"lr": 1.5e-4, "amsgrad": True}
# Reference single_experiment.py and vaemodel.py (train_classifier); see the model config for each key.
SOFTMAX = {"seen_per_class": 200, "unseen_per_class": 400, "zsl_unseen_per_class": 200, "epochs": 33,
           "zsl_epochs": 25, "lr": 1e-3, "batch_size": 32, "weight_decay": 0.0, "balanced": False,
           "encode_batch": 8192, "seed": 0}
RECONSTRUCTIONS = ("l1", "l2")
REPARAMETERISATIONS = ("reference", "standard")


# ---- networks ------------------------------------------------------------------------------------
def reference_init(module: nn.Module) -> None:
    """Reference models.py weights_init: Xavier-uniform weights with gain 0.5, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight, gain=0.5)
        nn.init.zeros_(module.bias)


class GaussianEncoder(nn.Module):
    """input → Linear → ReLU → (μ, log σ²), the heads linear (reference models.py, encoder_template)."""

    def __init__(self, input_dim: int, hidden: int, latent_dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.apply(reference_init)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """z → Linear → ReLU → Linear, no output non-linearity (reference models.py, decoder_template)."""

    def __init__(self, latent_dim: int, hidden: int, output_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, output_dim))
        self.apply(reference_init)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def reparameterise(mu: Tensor, logvar: Tensor, mode: str = "reference") -> Tensor:
    """A latent sample. 'standard' is the textbook z = μ + exp(½ log σ²) ⊙ ε, ε ~ N(0, I), which the
    paper's equations imply. 'reference' is what the authors' code does (vaemodel.py, reparameterize),
    and so what the published numbers come from: z = μ + exp(log σ²) · ε with ONE ε ~ N(0, 1) per row,
    shared by all latent dimensions. Its KL and Wasserstein terms read the same head as log σ²."""
    if mode == "reference":
        return mu + logvar.exp() * torch.randn(len(mu), 1, dtype=mu.dtype, device=mu.device)
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


# ---- the losses (pure functions; each summed over the batch, as in the reference) -------------------
def reconstruction_loss(x_hat: Tensor, x: Tensor, kind: str = "l1") -> Tensor:
    """Σ|x̂ − x| (l1, the reference's 'loss': 'l1', nn.L1Loss(size_average=False)) or Σ(x̂ − x)² (l2)."""
    diff = x_hat - x
    return diff.abs().sum() if kind == "l1" else diff.pow(2).sum()


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """Σ over rows and dimensions of KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (σ² + μ² − 1 − log σ²)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum()


def cross_reconstruction_loss(decode_image: Callable[[Tensor], Tensor], decode_attribute: Callable[[Tensor], Tensor],
                              z_image: Tensor, z_attribute: Tensor, x: Tensor, a: Tensor,
                              kind: str = "l1") -> Tensor:
    """L_CA: the image decoded from the attribute's latent sample and the attribute decoded from the
    image's, each against the real one (the paper's cross-alignment loss; reference trainstep)."""
    return (reconstruction_loss(decode_image(z_attribute), x, kind)
            + reconstruction_loss(decode_attribute(z_image), a, kind))


def wasserstein_distance(mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    """Per row, the 2-Wasserstein distance between N(μ₁, diag σ₁²) and N(μ₂, diag σ₂²):
    (‖μ₁ − μ₂‖² + ‖σ₁ − σ₂‖²)^½, the closed form for commuting covariances (the paper's distribution
    alignment). The loss L_DA is its sum over the batch (reference: torch.sqrt per row, then .sum())."""
    sigma1, sigma2 = (0.5 * logvar1).exp(), (0.5 * logvar2).exp()
    return ((mu1 - mu2).pow(2).sum(1) + (sigma1 - sigma2).pow(2).sum(1)).sqrt()


# ---- the warm-ups ----------------------------------------------------------------------------------
def warmup_factor(epoch: float, start: float, end: float, factor: float) -> float:
    """0 before `start`, rising linearly to `factor` at `end`, then `factor` (reference trainstep:
    min(max((epoch − start)/(end − start)·factor, 0), factor))."""
    return factor * min(max((epoch - start) / (end - start), 0.0), 1.0)


def run_epoch(step: int, total_steps: int, epochs: int) -> int:
    """The reference epoch a training step falls in when a run of `total_steps` stands for `epochs`
    epochs: ⌊step · epochs / total_steps⌋. With total_steps = epochs × ⌈N_train / batch⌉ (the
    reference's steps per epoch, vaemodel.py train_vae) it is exactly the reference's epoch counter;
    for a shorter run every window shrinks in proportion (the warm-ups are fractions of the run)."""
    return step * epochs // total_steps


def warmup_weights(step: int, total_steps: int, warmup: dict[str, Any]) -> dict[str, float]:
    """β (KL), γ (cross-reconstruction) and δ (distribution alignment) at a training step. The
    reference updates them once per epoch (they hold within an epoch), and so does this."""
    epoch = run_epoch(step, total_steps, warmup["epochs"])
    return {term: warmup_factor(epoch, warmup[term]["start"], warmup[term]["end"], warmup[term]["factor"])
            for term in WARMUP_TERMS}


def check_settings(latent_dim: int, hidden: dict, reconstruction: str, reparameterisation: str, warmup: dict,
                   softmax: dict) -> None:
    """Refuse settings the method cannot run with, naming the key (before any work)."""
    if not (isinstance(latent_dim, int) and latent_dim >= 1):
        raise ConfigError(f"model.latent_dim={latent_dim!r}: expected an integer ≥ 1")
    for key, width in hidden.items():
        if key not in HIDDEN or not (isinstance(width, int) and width >= 1):
            raise ConfigError(f"model.hidden.{key}={width!r}: expected one of {sorted(HIDDEN)}, an integer ≥ 1")
    if reconstruction not in RECONSTRUCTIONS:
        raise ConfigError(f"model.reconstruction={reconstruction!r}: expected one of {RECONSTRUCTIONS}")
    if reparameterisation not in REPARAMETERISATIONS:
        raise ConfigError(f"model.reparameterisation={reparameterisation!r}: expected one of {REPARAMETERISATIONS}")
    if not (isinstance(warmup["epochs"], int) and warmup["epochs"] >= 1):
        raise ConfigError(f"model.warmup.epochs={warmup['epochs']!r}: expected an integer ≥ 1")
    for term in WARMUP_TERMS:
        w = warmup[term]
        if set(w) != {"factor", "start", "end"} or not 0 <= w["start"] < w["end"] or w["factor"] < 0:
            raise ConfigError(f"model.warmup.{term}={w!r}: expected {{factor ≥ 0, start, end}} with 0 ≤ start < end "
                              "(epochs out of warmup.epochs)")
    for key in ("seen_per_class", "unseen_per_class", "zsl_unseen_per_class", "epochs", "zsl_epochs", "batch_size",
                "encode_batch"):
        if not (isinstance(softmax[key], int) and softmax[key] >= 1):
            raise ConfigError(f"model.softmax.{key}={softmax[key]!r}: expected an integer ≥ 1")


def per_class_rows(labels: Tensor, n: int) -> Tensor:
    """Indices of n rows of each class present in `labels`: a random order of the class's rows, cycled
    when it has fewer than n. (The reference takes each class's first n rows in dataset order, cycled
    the same way: vaemodel.py, sample_train_data_on_sample_per_class_basis; a random subset has the same
    distribution and does not depend on how the files happen to be ordered.)"""
    parts = []
    for c in labels.unique():
        rows = (labels == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), device=rows.device)]
        parts.append(rows.repeat(math.ceil(n / len(rows)))[:n])
    return torch.cat(parts)


class CADAVAE(ZSLModule):
    """Hyperparameters are plain containers only (numbers, strings, dicts), so checkpoints load with
    torch's weights_only=True. One classifier, the latent-space softmax."""

    classifiers = ("softmax",)

    def __init__(self, num_classes: int, feature_dim: int, semantic_dim: int, latent_dim: int = LATENT_DIM,
                 hidden: dict[str, int] | None = None, reconstruction: str = "l1",
                 reparameterisation: str = "reference", warmup: dict[str, Any] | None = None,
                 optimizer: dict[str, Any] | None = None, softmax: dict[str, Any] | None = None,
                 classifier: str = "softmax", calibration_gamma: float | dict[str, float] = 0.0):
        super().__init__(num_classes, semantic_dim, classifier, calibration_gamma)
        hidden = {**HIDDEN, **(hidden or {})}
        warmup = {**WARMUP, **(warmup or {})}
        optimizer = {**OPTIMIZER, **(optimizer or {})}
        softmax = {**SOFTMAX, **(softmax or {})}
        check_keys({"warmup": warmup, "optimizer": optimizer, "softmax": softmax},
                   {"warmup": WARMUP, "optimizer": ADAM_KEYS, "softmax": SOFTMAX})
        check_settings(latent_dim, hidden, reconstruction, reparameterisation, warmup, softmax)
        self.save_hyperparameters()
        # the merged settings, so a checkpoint is complete whatever defaults the code has later
        self.hparams.hidden, self.hparams.warmup = hidden, warmup
        self.hparams.optimizer, self.hparams.softmax = optimizer, softmax
        self.image_encoder = GaussianEncoder(feature_dim, hidden["image_encoder"], latent_dim)
        self.image_decoder = Decoder(latent_dim, hidden["image_decoder"], feature_dim)
        self.attribute_encoder = GaussianEncoder(semantic_dim, hidden["attribute_encoder"], latent_dim)
        self.attribute_decoder = Decoder(latent_dim, hidden["attribute_decoder"], semantic_dim)
        self.step_terms: dict[str, Tensor] = {}  # this step's weighted loss terms, for NonFiniteGuard

    # ---- training ---------------------------------------------------------------------------------
    def sample(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return reparameterise(mu, logvar, self.hparams.reparameterisation)

    def loss_weights(self) -> dict[str, float]:
        """β, γ, δ at this step; the warm-up windows are fractions of trainer.max_steps."""
        total = self.trainer.max_steps if self._trainer is not None else -1
        if total < 1:
            raise ConfigError(f"trainer.max_steps={total}: CADA-VAE's warm-ups are fractions of the run, which "
                              "needs a fixed length (an integer ≥ 1)")
        return warmup_weights(self.global_step, total, self.hparams.warmup)

    def loss_terms(self, x: Tensor, a: Tensor, weights: dict[str, float]) -> dict[str, Tensor]:
        """The weighted terms for images x and their classes' attributes a; a term whose weight is 0
        (early in the warm-ups) is not computed (the reference computes it and multiplies by 0)."""
        kind = self.hparams.reconstruction
        mu_x, logvar_x = self.image_encoder(x)
        mu_a, logvar_a = self.attribute_encoder(a)
        z_x, z_a = self.sample(mu_x, logvar_x), self.sample(mu_a, logvar_a)
        terms = {"reconstruction": reconstruction_loss(self.image_decoder(z_x), x, kind)
                 + reconstruction_loss(self.attribute_decoder(z_a), a, kind)}
        if weights["beta"] > 0:
            terms["kl"] = weights["beta"] * (kl_divergence(mu_x, logvar_x) + kl_divergence(mu_a, logvar_a))
        if weights["cross_reconstruction"] > 0:
            terms["cross_reconstruction"] = weights["cross_reconstruction"] * cross_reconstruction_loss(
                self.image_decoder, self.attribute_decoder, z_x, z_a, x, a, kind)
        if weights["distance"] > 0:
            terms["distance"] = weights["distance"] * wasserstein_distance(mu_x, logvar_x, mu_a, logvar_a).sum()
        return terms

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        weights = self.loss_weights()
        terms = self.loss_terms(x, self.class_semantics[y], weights)
        total = torch.stack(list(terms.values())).sum()
        # Tensors, not floats: Lightning reads them only every log_every_n_steps (no wait each step).
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False)
        self.log_dict({f"warmup/{k}": float(v) for k, v in weights.items()}, on_step=True, on_epoch=False)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=False)
        self.step_terms = terms
        return total

    def configure_callbacks(self) -> list[L.Callback]:
        return [RandomStreams(), NonFiniteGuard()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # betas, eps and weight decay at torch's defaults, which are the reference's values
        return adam(self.parameters(), self._trainer, **self.hparams.optimizer)

    # ---- the latent classifier -------------------------------------------------------------------
    @torch.no_grad()
    def encode_samples(self, encoder: GaussianEncoder, inputs: Tensor) -> Tensor:
        """Latent samples (reparameterised, as the reference's classifier training set) in batches."""
        return torch.cat([self.sample(*encoder(rows)) for rows in inputs.split(self.hparams.softmax["encode_batch"])])

    @torch.no_grad()
    def latent_training_sets(self, x_seen: Tensor, y_seen: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """The classifiers' training sets, latent codes and global labels (reference vaemodel.py,
        train_classifier, with samples_per_class from single_experiment.py):
        gzsl: seen_per_class codes of real images per seen class (sampled with noise) and
              unseen_per_class codes of each unseen class's attribute vector (sampled with noise);
        zsl:  zsl_unseen_per_class attribute codes per unseen class (the reference's ZSL setting).
        No seen-class attribute codes (the reference's att_seen_samples is 0)."""
        cfg = self.hparams.softmax
        unseen = self.unseen_classes
        rows = per_class_rows(y_seen, cfg["seen_per_class"])
        z_images = torch.cat([self.encode_samples(self.image_encoder, x_seen[part])
                              for part in rows.split(cfg["encode_batch"])])

        def attribute_codes(n: int) -> tuple[Tensor, Tensor]:
            y = unseen.repeat_interleave(n)
            return self.encode_samples(self.attribute_encoder, self.class_semantics[y]), y

        z_unseen, y_unseen = attribute_codes(cfg["unseen_per_class"])
        return {"gzsl": (torch.cat([z_images, z_unseen]), torch.cat([y_seen[rows], y_unseen])),
                "zsl": attribute_codes(cfg["zsl_unseen_per_class"])}

    def fit_classifiers(self, x_seen: Tensor, y_seen: Tensor, progress) -> dict[str, SoftmaxClassifier]:
        cfg = self.hparams.softmax
        fit = {k: cfg[k] for k in ("lr", "batch_size", "weight_decay", "balanced")}
        # Callers may be inside Lightning's inference mode; this is a small training run of its own.
        with torch.inference_mode(False), torch.enable_grad(), \
                progress("latent softmax classifiers", cfg["epochs"] + cfg["zsl_epochs"]) as advance:
            sets = self.latent_training_sets(x_seen.clone(), y_seen.clone())
            fitted = {}
            for task, classes, epochs in (("gzsl", torch.arange(self.hparams.num_classes, device=self.device),
                                           cfg["epochs"]),
                                          ("zsl", self.unseen_classes.clone(), cfg["zsl_epochs"])):
                clf = SoftmaxClassifier(self.hparams.latent_dim, classes, self.hparams.num_classes).to(self.device)
                clf.apply(reference_init)  # reference vaemodel.py: clf.apply(models.weights_init)
                fitted[task] = clf.fit(*sets[task], epochs=epochs, **fit, on_epoch=advance)
        return fitted

    @torch.no_grad()
    def classifier_scores(self, fitted: dict[str, SoftmaxClassifier], x: Tensor) -> dict[str, Tensor]:
        mu, _ = self.image_encoder(x)  # test images by their mean code (reference: reparameterize_with_noise=False)
        return {"softmax/gzsl": fitted["gzsl"](mu), "softmax/zsl": fitted["zsl"](mu)}
