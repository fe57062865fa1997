"""Clip records -> training batches: the per-stage samplers (stages), the mouth swap of
stage 2 (mouth_swap), the stage-4 coefficient targets (targets), the image rules they
share (images) and the grain pipeline (pipeline), whose names are here:

    from data_pipeline import loaders
    it = loaders.make_loader(loaders.LoaderConfig(shards_dir=..., stage=2))
"""

from data_pipeline.loaders.images import to_float
from data_pipeline.loaders.pipeline import (EpochOrder, LoaderConfig, LoaderError, LoaderIterator,
                                            fingerprint, make_loader, stage1_loader, stage2_loader,
                                            stage3_loader, stage4_loader, to_global_arrays,
                                            tune_malloc)

__all__ = ["EpochOrder", "LoaderConfig", "LoaderError", "LoaderIterator", "fingerprint", "make_loader",
           "stage1_loader", "stage2_loader", "stage3_loader", "stage4_loader", "to_float",
           "to_global_arrays", "tune_malloc"]
