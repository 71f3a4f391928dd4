"""f-CLSWGAN (Xian, Lorenz, Schiele, Akata, "Feature Generating Networks for Zero-Shot Learning",
CVPR 2018, arXiv:1712.00981): a conditional Wasserstein GAN with gradient penalty that generates
image features from class attributes, plus a classification loss that makes the generated
features recognisable by a softmax classifier trained beforehand on the real seen features.
After training, a softmax classifier is trained on generated unseen features (ZSL), or on real
seen + generated unseen ones (GZSL): izf.evaluation.protocol.fit_softmax_classifiers.

Numbers without a source in the paper come from the authors' released code (its clswgan.py,
model.py, classifier.py and the per-dataset scripts); conf/model/clswgan.yaml names each source."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from izf.errors import ConfigError
from izf.evaluation.protocol import fit_softmax_classifiers
from izf.model.classifiers import SoftmaxClassifier
from izf.model.optim import adam
from izf.training.base import ZSLModule
from izf.training.callbacks import RandomStreams
from izf.training.hyperparameters import check_keys, rule_keys

Critic = Callable[[Tensor, Tensor], Tensor]  # D(x, a) -> one score per row (N × 1)
# The keys of each nested setting (conf/model/clswgan.yaml) that the method reads; others are refused.
SETTINGS = {"networks": ("generator_hidden", "critic_hidden", "noise_dim", "init_std"),
            "wgan": ("critic_steps", "gp_weight", "cls_weight"), "optimizer": ("lr", "betas"),
            "seen_classifier": ("epochs", "lr", "batch_size", "seed"), "softmax": rule_keys("softmax")}

# Lightning's ModelCheckpoint warns, under manual optimisation, that the checkpoint holds the weights
# after the step: that is what a resumed run must continue from (the resume test checks it).
warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved")


# ---- the networks ----------------------------------------------------------------------------------
def _init_normal(module: nn.Module, std: float) -> None:
    """The reference code's initialisation (its weights_init): Linear weights ~ N(0, std²), biases 0.
    The paper does not state one."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)


class Generator(nn.Module):
    """G(z, a): [z; a] -> hidden (LeakyReLU 0.2) -> features (ReLU: ResNet features, pooled after a
    ReLU, are non-negative; paper, implementation details)."""

    def __init__(self, noise_dim: int, semantic_dim: int, feature_dim: int, hidden: int, init_std: float = 0.02):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(noise_dim + semantic_dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, feature_dim), nn.ReLU())
        _init_normal(self, init_std)

    def forward(self, z: Tensor, a: Tensor) -> Tensor:
        return self.net(torch.cat([z, a], dim=1))  # noise first, as the reference concatenates


class ConditionalCritic(nn.Module):
    """D(x, a): [x; a] -> hidden (LeakyReLU 0.2) -> one unbounded score (a WGAN critic: no sigmoid).
    No batch normalisation: the paper found it hurt, and the gradient penalty is per example."""

    def __init__(self, feature_dim: int, semantic_dim: int, hidden: int, init_std: float = 0.02):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim + semantic_dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 1))
        _init_normal(self, init_std)

    def forward(self, x: Tensor, a: Tensor) -> Tensor:
        return self.net(torch.cat([x, a], dim=1))


# ---- the losses -------------------------------------------------------------------------------------
def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor, a: Tensor, weight: float,
                     alpha: Tensor | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): weight · E[(‖∇_x̃ D(x̃, a)‖₂ − 1)²] at x̃ = α x + (1 − α) x̂,
    α ~ U[0, 1] per example. The gradient is taken with respect to the features only (the
    attributes condition the critic; the reference does the same). create_graph: the penalty is
    itself differentiated with respect to the critic's weights."""
    if alpha is None:
        alpha = torch.rand(len(real), 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed, a).sum(), mixed, create_graph=True)
    return weight * (grad.norm(2, dim=1) - 1).pow(2).mean()


def critic_loss(d_real: Tensor, d_fake: Tensor, penalty: Tensor) -> Tensor:
    """What the critic minimises: E[D(x̂)] − E[D(x)] + penalty (the negative Wasserstein estimate,
    regularised): it learns to score real features above generated ones."""
    return d_fake.mean() - d_real.mean() + penalty


def generator_loss(d_fake: Tensor) -> Tensor:
    """The generator's adversarial loss −E[D(G(z, a), a)]: raise the critic's score of its output."""
    return -d_fake.mean()


def classification_loss(classifier: Callable[[Tensor], Tensor], fake: Tensor, target: Tensor) -> Tensor:
    """The paper's L_CLS: −E[log P(y | x̂; θ)], the cross-entropy of generated features under the
    classifier θ pretrained on real seen features (its weights frozen; gradients reach x̂ only).
    `classifier` returns logits over the seen classes; `target` indexes them."""
    return nn.functional.cross_entropy(classifier(fake), target)


# ---- the method -------------------------------------------------------------------------------------
class CLSWGAN(ZSLModule):
    """f-CLSWGAN with one classifier, the held-out softmax on real seen + generated unseen features.

    One training step (one Lightning batch, so one unit of trainer.max_steps and of global_step) is
    ONE optimiser update: the steps cycle through `critic_steps` critic updates and then one
    generator update (the phase is global_step mod (critic_steps + 1)). With critic_steps = 5 a
    generator iteration of the reference code (5 critic batches, then a generator update) is 6 steps,
    so max_steps = 6 × generator iterations, and one reference epoch (ceil(N / 64) generator
    iterations for N training images) is 6 · ceil(N / 64) steps. Every step counts as one in
    Lightning's own books (manual optimisation increments global_step once per optimizer.step()),
    so max_steps, checkpoint intervals and resuming all mean the same thing; a run may end within a
    cycle. A critic step uses its batch's real features; a generator step uses only its batch's labels
    (which classes to generate, drawn like the data; the reference reuses the last critic batch's).

    Manual optimisation (two optimisers): trainer.gradient_clip_val must be null (Lightning refuses
    automatic clipping here; the reference clips nothing), as conf/_internal/budget/clswgan_*.yaml
    set. The seen-class classifier of the classification loss is trained once when fitting starts,
    on its own seeded random stream, and is a frozen submodule: it goes into checkpoints with the GAN."""

    classifiers = ("softmax",)

    def __init__(self, num_classes: int, feature_dim: int, semantic_dim: int, networks: dict[str, Any],
                 wgan: dict[str, Any], optimizer: dict[str, Any], seen_classifier: dict[str, Any],
                 softmax: dict[str, Any], classifier: str = "softmax",
                 calibration_gamma: float | dict[str, float] = 0.0):
        super().__init__(num_classes, semantic_dim, classifier, calibration_gamma)
        check_keys({"networks": networks, "wgan": wgan, "optimizer": optimizer, "seen_classifier": seen_classifier,
                    "softmax": softmax}, SETTINGS)
        self.save_hyperparameters()
        if not (isinstance(wgan["critic_steps"], int) and wgan["critic_steps"] >= 1):
            raise ConfigError(f"model.wgan.critic_steps={wgan['critic_steps']!r}: expected an integer ≥ 1")
        for key in ("gp_weight", "cls_weight"):
            if not wgan[key] >= 0:
                raise ConfigError(f"model.wgan.{key}={wgan[key]!r}: expected a weight ≥ 0")
        self.automatic_optimization = False
        init_std = networks.get("init_std", 0.02)
        self.noise_dim = networks.get("noise_dim") or semantic_dim  # null: the attribute dimension (paper)
        self.generator = Generator(self.noise_dim, semantic_dim, feature_dim, networks["generator_hidden"], init_std)
        self.critic = ConditionalCritic(feature_dim, semantic_dim, networks["critic_hidden"], init_std)
        # Over all classes so its shape is known before the data is (checkpoints load into it); it is
        # trained and used on the seen-class columns only, i.e. it is a seen-class classifier.
        self.seen_classifier = nn.Linear(feature_dim, num_classes).requires_grad_(False)
        self.register_buffer("seen_classifier_fitted", torch.tensor(False))
        self._trainval: tuple[Tensor, Tensor] | None = None

    # ---- data and the pretrained classifier -----------------------------------------------------------
    def prepare(self, datamodule, stage: str = "fit") -> None:
        super().prepare(datamodule, stage)
        if stage == "fit":
            self._trainval = datamodule.split("trainval")  # for the seen classifier, at fit start

    def on_fit_start(self) -> None:
        # After a checkpoint is restored (a resumed run keeps its classifier) and on the model's device.
        if not bool(self.seen_classifier_fitted):
            if self._trainval is None:
                raise RuntimeError("CLSWGAN needs its training set before fitting: fit it with a datamodule, "
                                   "or call fit_seen_classifier(x, y) first")
            self.fit_seen_classifier(*self._trainval)

    def seen_logits(self, x: Tensor) -> Tensor:
        return self.seen_classifier(x)[:, self.seen_classes]

    def fit_seen_classifier(self, x: Tensor, y: Tensor) -> None:
        """Train the classifier θ of the classification loss on the real seen features (global labels y):
        a linear softmax, as in the reference (Adam, fixed epochs, no selection), on its own seeded
        stream so every process and every rerun gets the same θ. Its weights stay frozen afterwards."""
        cfg, seen = self.hparams.seen_classifier, self.seen_classes
        x, y = x.to(self.device), y.to(self.device)
        target = torch.searchsorted(seen, y)  # global class -> column among the seen classes
        linear = nn.Linear(x.shape[1], len(seen)).to(self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
            torch.manual_seed(cfg["seed"])
            _init_normal(linear, self.hparams.networks.get("init_std", 0.02))
            optimizer = adam(linear.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
            for _ in range(cfg["epochs"]):
                for rows in torch.randperm(len(x), device=x.device).split(cfg["batch_size"]):
                    loss = nn.functional.cross_entropy(linear(x[rows]), target[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        with torch.no_grad():
            self.seen_classifier.weight.zero_()
            self.seen_classifier.bias.zero_()
            self.seen_classifier.weight[seen] = linear.weight
            self.seen_classifier.bias[seen] = linear.bias
            self.seen_classifier_fitted.fill_(True)

    # ---- generation -----------------------------------------------------------------------------------
    def noise(self, n: int, temperature: float = 1.0) -> Tensor:
        """z ~ N(0, temperature² I) of noise_dim dimensions (the paper: N(0, I))."""
        return torch.randn(n, self.noise_dim, device=self.class_semantics.device) * temperature

    def generate(self, classes: Tensor, temperature: float = 1.0) -> Tensor:
        """x̂ = G(z, a_y), one sample per entry of `classes`."""
        return self.generator(self.noise(len(classes), temperature), self.class_semantics[classes])

    # ---- the evaluation protocol's calls ----------------------------------------------------------------
    def fit_classifiers(self, x_seen: Tensor, y_seen: Tensor, progress) -> dict[str, SoftmaxClassifier]:
        return fit_softmax_classifiers(self, x_seen, y_seen, progress)

    @torch.no_grad()
    def classifier_scores(self, fitted: dict[str, SoftmaxClassifier], x: Tensor) -> dict[str, Tensor]:
        return {"softmax/gzsl": fitted["gzsl"](x), "softmax/zsl": fitted["zsl"](x)}

    # ---- training -------------------------------------------------------------------------------------
    def is_critic_step(self, step: int) -> bool:
        return step % (self.hparams.wgan["critic_steps"] + 1) < self.hparams.wgan["critic_steps"]

    def critic_step(self, x: Tensor, a: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            fake = self.generator(self.noise(len(x)), a)
        d_real, d_fake = self.critic(x, a), self.critic(fake, a)
        penalty = gradient_penalty(self.critic, x, fake, a, self.hparams.wgan["gp_weight"])
        return {"critic": critic_loss(d_real, d_fake, penalty), "gradient_penalty": penalty,
                "wasserstein": d_real.mean() - d_fake.mean()}

    def generator_step(self, y: Tensor, a: Tensor) -> dict[str, Tensor]:
        fake = self.generator(self.noise(len(y)), a)
        adversarial = generator_loss(self.critic(fake, a))
        cls = classification_loss(self.seen_logits, fake, torch.searchsorted(self.seen_classes, y))
        return {"generator": adversarial + self.hparams.wgan["cls_weight"] * cls, "adversarial": adversarial,
                "classification": cls}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        a = self.class_semantics[y]
        opt_g, opt_d = self.optimizers()
        critic_turn = self.is_critic_step(self.global_step)
        optimizer = opt_d if critic_turn else opt_g
        # Only the updated network's weights get gradients (the critic's are off in a generator step).
        with self.toggled_optimizer(optimizer):
            terms = self.critic_step(x, a) if critic_turn else self.generator_step(y, a)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(terms["critic" if critic_turn else "generator"])
            optimizer.step()
        # Tensors: Lightning reads them only every log_every_n_steps, so no per-step device sync.
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.hparams.optimizer
        betas = tuple(cfg["betas"])
        return [adam(self.generator.parameters(), self._trainer, lr=cfg["lr"], betas=betas),
                adam(self.critic.parameters(), self._trainer, lr=cfg["lr"], betas=betas)]

    def configure_callbacks(self) -> list[L.Callback]:
        return [RandomStreams()]  # a resumed run draws the same batches and noise
