"""ESZSL (Romera-Paredes & Torr, "An embarrassingly simple approach to zero-shot learning", ICML 2015):
a bilinear compatibility score x V s_y, with V in closed form from the seen classes' images.

V = argmin ‖Xᵀ V S − Y‖² + γ‖V S‖² + λ‖Xᵀ V‖² + γλ‖V‖² (the paper's eq. 5, X: d × m images,
S: a × z seen-class attributes, Y ∈ {−1, 1}^{m×z}) has the solution
V = (X Xᵀ + γ I)⁻¹ X Y Sᵀ (S Sᵀ + λ I)⁻¹ (its eq. 6). Nothing is learnt by gradient: the model is
fitted in the first training step and the run ends there."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from izf.training.base import ZSLModule

# Lightning's notes on a step without a loss, optimiser or parameters: the point of a closed form.
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` returned `None`")
warnings.filterwarnings("ignore", message=r"`parameters` is an empty generator")


def eszsl_weights(x: Tensor, y: Tensor, semantics: Tensor, feature_reg: float, semantic_reg: float) -> Tensor:
    """V (D × d_c) from images x (N × D) with labels y in 0..z-1 and the attributes of those z
    classes (z × d_c, one row each): eq. 6 in float64, with solves rather than inverses."""
    x, s = x.double(), semantics.double()
    targets = -torch.ones(len(x), len(s), dtype=torch.float64, device=x.device)
    targets[torch.arange(len(x)), y] = 1.0
    left = torch.linalg.solve(x.T @ x + feature_reg * torch.eye(x.shape[1], dtype=x.dtype, device=x.device),
                              x.T @ targets @ s)                       # (X Xᵀ + γI)⁻¹ X Y Sᵀ
    right = s.T @ s + semantic_reg * torch.eye(s.shape[1], dtype=s.dtype, device=s.device)
    return torch.linalg.solve(right, left.T).T                           # · (S Sᵀ + λI)⁻¹ (symmetric)


class ESZSL(ZSLModule):
    """One classifier, the compatibility score x V s_c over all classes (the protocol restricts ZSL
    to the unseen ones; calibrated stacking shifts the seen ones in GZSL)."""

    classifiers = ("compatibility",)

    def __init__(self, num_classes: int, feature_dim: int, semantic_dim: int, feature_reg: float = 1.0,
                 semantic_reg: float = 1.0, classifier: str = "compatibility",
                 calibration_gamma: float | dict[str, float] = 0.0):
        super().__init__(num_classes, semantic_dim, classifier, calibration_gamma)
        self.save_hyperparameters()
        self.register_buffer("weights", torch.zeros(feature_dim, semantic_dim))
        self.solved_with: tuple[float, float] | None = None  # the regularisers of `weights`

    def fit(self, x: Tensor, y: Tensor) -> None:
        """The closed form on the seen classes' images x and global labels y."""
        seen = self.seen_classes
        local = torch.searchsorted(seen, y.to(seen.device))  # global class -> column of Y
        regularisers = (self.hparams.feature_reg, self.hparams.semantic_reg)
        self.weights.copy_(eszsl_weights(x.to(self.device), local, self.class_semantics[seen], *regularisers).float())
        self.solved_with = regularisers

    def on_fit_start(self) -> None:
        # The run is one step whatever trainer.max_steps says, and the progress bar counts to 1.
        self.trainer.fit_loop.epoch_loop.max_steps = 1

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # The solution needs every training image at once, not a batch: the whole trainval split.
        self.fit(*self.trainer.datamodule.split("trainval"))
        self.trainer.should_stop = True  # fitted (with no optimiser, global_step never reaches max_steps)

    def configure_optimizers(self) -> None:
        return None  # closed form: no optimiser

    def fit_classifiers(self, x_seen: Tensor, y_seen: Tensor, progress) -> None:
        """Nothing beyond V, which is solved again only when the regularisers have changed since (the
        validation choice tries each pair on the same data: izf.training.selection)."""
        if self.solved_with is not None and self.solved_with != (self.hparams.feature_reg, self.hparams.semantic_reg):
            self.fit(x_seen, y_seen)

    @torch.no_grad()
    def classifier_scores(self, fitted: None, x: Tensor) -> dict[str, Tensor]:
        scores = x @ self.weights @ self.class_semantics.T
        return {"compatibility/gzsl": scores, "compatibility/zsl": scores}
