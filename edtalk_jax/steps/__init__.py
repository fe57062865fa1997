"""Training stages: each a `compute_losses` over one model family; the shared G/D step
is edtalk_jax.steps.common. `STAGES[name]` gives the loss function and the loader stage
(data_pipeline.loaders) that feeds it."""

import dataclasses
from typing import Callable

from edtalk_jax.steps import reconstruction, stage2, stage4


@dataclasses.dataclass(frozen=True)
class StageSpec:
    compute_losses: Callable
    data_stage: int  # data_pipeline.loaders stage
    losses: tuple  # config.loss weights it reads
    gen_kinds: tuple  # generator kinds it trains


_RECON = ("l1", "perceptual", "gan", "ortho")
STAGES = {
    "stage1": StageSpec(reconstruction.compute_losses, 1, _RECON, ("lip_pose", "generator")),
    "stage2": StageSpec(stage2.compute_losses, 2,
                        _RECON + ("cross_l1", "cross_perceptual", "latent_lip", "latent_pose", "mouth_l1"),
                        ("lip_pose", "generator")),
    "stage3": StageSpec(reconstruction.compute_losses, 3, _RECON, ("generator",)),
    "stage4": StageSpec(stage4.compute_losses, 4,
                        ("coeff", "smooth", "l1", "perceptual", "gan", "mouth_l1", "sync"),
                        ("lip_pose", "generator")),
    "finetune": StageSpec(reconstruction.compute_losses, 1, _RECON, ("lip_pose", "generator")),
}
