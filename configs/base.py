"""Base configuration: the official EDTalk model and the embedded synthetic dataset.

  python -m launch.demo --config configs/base.py            # official sizes (256^2, full widths)
  python -m launch.demo --config configs/base.py:tiny       # 64^2, widths / 8: CPU smoke runs
  python -m launch.demo --config configs/base.py:size=128,width_div=4

The config argument is a comma-separated list of `key=value` overrides of the model
section (size, width_div, dtype, bank_mode, ...) or the name of a preset (`tiny`).
Command-line flags override any field: `--config.model.dtype=bfloat16`.
"""

from ml_collections import config_dict

PRESETS = {
    "tiny": dict(size=64, width_div=8),
}


def model_config() -> config_dict.ConfigDict:
    return config_dict.ConfigDict(dict(
        kind="generator",  # "generator" (EDTalk.pt: lip+pose+exp) or "lip_pose" (EDTalk_lip_pose.pt)
        size=256,  # image side, a power of two (64..512 and more)
        width_div=1,  # divides the official channel table (512..64); 8 for smoke tests
        channels=config_dict.placeholder(tuple),  # explicit widths for resolutions 4..size
        style_dim=512,  # latent / style width
        lip_dim=20,  # mouth bank size
        pose_dim=6,  # pose bank size
        exp_dim=10,  # expression bank size (0 for the lip-pose generator)
        bank_mode="qr",  # "qr": official QR-orthonormalised bases; "free": raw bases + ortho loss
        eem_hidden=128,  # hidden width of the EEM AdaIN MLP
        dtype="float32",  # compute dtype: float32 | bfloat16 (params stay float32)
        param_dtype="float32",
    ))


def data_config() -> config_dict.ConfigDict:
    return config_dict.ConfigDict(dict(
        shards_dir="",  # clip shards (launch.preprocess / launch.synthesize); "" = synthetic
        synthetic=dict(speakers=8, clips_per_speaker=4, frames_per_clip=125, seed=0),
        workers=2,  # grain worker processes per host
    ))


def _parse(arg: str) -> dict:
    overrides = {}
    for item in filter(None, (a.strip() for a in arg.split(","))):
        if item in PRESETS:
            overrides.update(PRESETS[item])
            continue
        if "=" not in item:
            raise ValueError(f"config argument {item!r}: expected a preset {sorted(PRESETS)} or key=value")
        key, value = item.split("=", 1)
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    return overrides


def get_config(arg: str = "") -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.seed = 0
    config.model = model_config()
    config.data = data_config()
    for key, value in _parse(arg).items():
        if key not in config.model:
            raise ValueError(f"unknown model field {key!r}; fields: {sorted(config.model)}")
        config.model[key] = value
    if config.model.kind == "lip_pose":
        config.model.exp_dim = 0
    return config
