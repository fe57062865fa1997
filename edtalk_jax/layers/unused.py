"""Weights the official checkpoints carry but the forward pass never uses.

They live in the `unused` variable collection: created at init (so a model trained from
scratch still exports a complete official state_dict), filled by the converter, never
trained (optimizers only see `params`) and never computed.
"""

import flax.linen as nn


def keep_unused(parent: nn.Module, name: str, module: nn.Module, *example_args) -> None:
    """Initialises a detached `module` (created with parent=None) into parent's `unused`
    collection under `name`. Call only while the parent is initialising."""
    key = parent.make_rng("params")
    params = module.init(key, *example_args)["params"]
    parent.variable("unused", name, lambda: params)
