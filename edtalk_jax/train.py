"""`train_and_evaluate(config, workdir)`: one training stage on a device mesh.

  config -> checks (run_config) -> mesh -> data (synthetic when none is given) -> models
  -> initial state (resume / resume_from / init_from / fresh, created sharded)
  -> jitted step with donation -> loop: log, evaluate, sample grids, checkpoint.

Writes WORKDIR/checkpoints/<step>/ (state + data iterator), WORKDIR/config.json,
WORKDIR/tensorboard/ (event files + metrics.jsonl), WORKDIR/samples/<step>.png and
WORKDIR/final_metrics.json. SIGTERM saves a checkpoint and returns. A non-finite loss
stops the run (NonFiniteError naming the step and the terms) without writing a
checkpoint of the broken state.
"""

import functools
import hashlib
import json
import logging
import math
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import checkpointing, initialize, metrics, optim, run_config, sharding
from edtalk_jax.steps import STAGES, common

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm became NaN or infinite."""


def _is_main() -> bool:
    return jax.process_index() == 0


def prepare_data(config, workdir: str, size: int, progress: bool = True) -> str:
    """The dataset directory; builds the synthetic dataset into WORKDIR/data when
    config.data.shards_dir is empty (process 0 builds, every process waits)."""
    data_dir = run_config.resolve_data_dir(config, workdir)
    if not config.data.shards_dir:
        from data_pipeline import synthetic
        syn = config.data.synthetic
        if _is_main():
            scfg = synthetic.SyntheticConfig(num_speakers=syn.speakers, clips_per_speaker=syn.clips_per_speaker,
                                             frames_per_clip=syn.frames_per_clip, size=size, seed=syn.seed,
                                             mouth_scale=syn.mouth_scale)
            synthetic.write_dataset(scfg, data_dir, workers=syn.render_workers, progress=progress)
        _sync("synthetic data")
    return data_dir


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def loader_config(config, data_dir: str, split: str, stage: int, shuffle: bool = True):
    from data_pipeline import loaders
    per_process = config.batch_size // jax.process_count()
    return loaders.LoaderConfig(
        shards_dir=data_dir, stage=stage, split=split or None, batch_size=per_process,
        image_size=config.model.size, seed=config.seed, shuffle=shuffle,
        worker_count=config.data.workers, prefetch=config.data.prefetch, dtype="uint8",
        T=config.data.T, targets=config.data.targets, exclude_neutral=config.data.exclude_neutral,
        datasets=tuple(config.data.datasets) if config.data.datasets else None,
        max_skip_fraction=config.data.max_skip_fraction)


def make_context(config, models: initialize.Models, abstract_params) -> common.Context:
    spec = STAGES[config.stage]
    weights = {k: float(config.loss[k]) for k in spec.losses}
    o = config.optimizer
    freeze = tuple(o.freeze)
    mults = tuple((p, float(m)) for p, m in o.lr_multipliers)
    g_params = common.g_side(abstract_params)
    from data_pipeline.loaders import stages as data_stages
    return common.Context(
        name=config.stage, models=models.as_dict(), weights=weights, loss_cfg=config.loss, config=config,
        compute_losses=spec.compute_losses, image_keys=data_stages.IMAGE_KEYS[spec.data_stage],
        g_tx=optim.make_optimizer(o.g.to_dict(), g_params, freeze, mults, "optimizer", config.total_steps),
        d_tx=optim.make_optimizer(o.d.to_dict(), common.d_side(abstract_params), freeze, mults, "optimizer",
                                  config.total_steps),
        g_mask=optim.trainable_mask(g_params, freeze),
        d_mask=optim.trainable_mask(common.d_side(abstract_params), freeze),
        train_d=bool(config.train_discriminator), ema_decay=float(config.ema_decay),
        sum_losses=("latent_lip", "latent_pose") if config.loss.latent_reduction == "sum" else ())


class Run:
    """Everything a stage needs, set up once (see train_and_evaluate)."""

    def __init__(self, config, workdir: str, progress: bool = True):
        run_config.validate(config)
        self.config, self.workdir, self.progress = config, workdir, progress
        os.makedirs(workdir, exist_ok=True)
        self.mesh = sharding.make_mesh(config.mesh)
        sharding.check_batch(config.batch_size, self.mesh, "batch_size")
        run_config.check_discriminator_batch(config)
        self.ckpts = checkpointing.Checkpoints(
            workdir, keep_last=config.keep_checkpoints, keep_every_steps=config.keep_every_steps or None)
        self.source, self.mode = self._choose_source()
        if self.source is not None and "gen" not in self.source.params:  # before anything compiles
            field = "init_from" if self.mode == "init" else "resume_from"
            raise run_config.ConfigError(
                f"{field}={self.source.name}: holds a {self.source.model.get('kind', 'checkpoint without a generator')}, "
                f"not a generator this {config.stage} run can start from")
        self.model_cfg = run_config.resolve_model(config, self.source.model if self.source else None,
                                                  "init_from" if self.mode == "init" else "resume_from")
        with config.unlocked():
            for k in ("size", "style_dim", "lip_dim", "pose_dim", "exp_dim", "eem_hidden"):
                config.model[k] = self.model_cfg[k]
            config.model.channels = tuple(self.model_cfg["channels"])
        spec = STAGES[config.stage]
        weights = {k: float(config.loss[k]) for k in spec.losses}
        self.models, consts = initialize.build_models(config, self.model_cfg, weights)
        self.data_dir = prepare_data(config, workdir, self.model_cfg["size"], progress)
        self.repl = sharding.replicated(self.mesh)
        self.consts = jax.device_put(consts, self.repl)
        self.ctx, self.state = self._init_state()
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.start_step = 0
        if self.mode == "resume":  # the state first: stage 4 computes missing targets with it
            self.start_step, self.state = self.ckpts.restore_latest(self.abstract_state)
        self.train_iter = self._loaders(spec.data_stage)
        if spec.data_stage == 4:  # stage 4's predict-the-mean baseline
            self.consts = dict(self.consts, lip_mean=jax.device_put(self._lip_mean(), self.repl))
        self._restore_or_save_config()

    # ---- where the state comes from ----
    def _choose_source(self):
        if self.ckpts.latest_step() is not None:
            return None, "resume"
        if self.config.resume_from:
            return initialize.read_source(self.config.resume_from, "resume_from"), "resume_from"
        if self.config.init_from:
            return initialize.read_source(self.config.init_from, "init_from"), "init"
        return None, "fresh"

    def _init_state(self):
        config, rng = self.config, jax.random.key(self.config.seed, impl=self.config.init_prng)
        if self.mode == "resume":
            saved = checkpointing.read_config(checkpointing.resolve(self.workdir)) or {}
            if saved.get("resolved_model") and _norm(saved["resolved_model"]) != _norm(self.model_cfg):
                raise run_config.ConfigError(
                    f"{self.workdir}: its checkpoints hold model {saved['resolved_model']}, the config "
                    f"asks for {self.model_cfg}; use another --workdir")
        init_vars = functools.partial(initialize.init_variables, self.models, config, self.model_cfg)
        abstract_params, abstract_ms = jax.eval_shape(init_vars, rng)
        ctx = make_context(config, self.models, abstract_params)
        fsdp = config.mesh.fsdp != 1
        min_size = config.mesh.fsdp_min_size
        var_sh = sharding.state_sharding(self.mesh, (abstract_params, abstract_ms), fsdp=fsdp, min_size=min_size)
        params, model_state = jax.jit(init_vars, out_shardings=var_sh)(rng)
        if self.mode in ("init", "resume_from"):
            params, model_state = self._merge(params, model_state)
        build = functools.partial(initialize.state_from, ctx)
        abstract_state = jax.eval_shape(build, params, model_state)
        self.state_sharding = sharding.state_sharding(self.mesh, abstract_state, fsdp=fsdp, min_size=min_size)
        state = jax.jit(build, out_shardings=self.state_sharding)(params, model_state)
        if self.mode == "resume_from" and self.source.state is not None:
            state = self._resume_from(state)
        self.abstract_state = sharding.abstract_with_sharding(abstract_state, self.state_sharding)
        return ctx, state

    def _merge(self, params, model_state):
        src = self.source
        keep = tuple(self.config.init_keep) if self.mode == "init" else (".*",)
        convert = initialize.bank_converter(src.model.get("bank_mode", "qr"), self.config.model.bank_mode,
                                            src.params)
        params, counts = initialize.merge_source(params, src.params, keep, src.name, convert)
        copied = counts.pop("paths")
        if self.config.model.bank_mode == "free":
            params = initialize.exp_against_loaded(params, copied)
        if self.config.model.eem_identity_init:
            params = initialize.eem_identity(params, copied)
        model_state, _ = initialize.merge_source(model_state, src.model_state, keep, src.name)
        a2l = self.config.audio2lip.init if self.config.stage == "stage4" else ""
        if a2l:
            params, model_state = self._audio2lip_init(params, model_state, a2l)
        log.info("parameters from %s: %s", src.name, counts)
        self.init_counts = counts
        return params, model_state

    def _audio2lip_init(self, params, model_state, path):
        try:
            a2l = initialize.read_source(path, "audio2lip.init")
            tree, ms = {"audio2lip": a2l.params["audio2lip"]}, {"audio2lip": a2l.model_state["audio2lip"]}
        except (run_config.ConfigError, KeyError, ValueError):
            from edtalk_jax.models import syncnet  # a Wav2Lip checkpoint: its audio encoder only
            variables = syncnet.load_wav2lip_audio_encoder(path)
            tree = {"audio2lip": variables["params"]}
            ms = {"audio2lip": {k: v for k, v in variables.items() if k != "params"}}
        params, _ = initialize.merge_source(params, tree, (".*",), path)
        model_state, _ = initialize.merge_source(model_state, ms, (".*",), path)
        return params, model_state

    def _resume_from(self, state):
        """The whole train state of another run (step, optimizer, EMA), resharded here."""
        tree = self.source.state
        host = jax.tree_util.tree_map(np.asarray, tree)
        flat_new = optim.leaf_paths(state)
        flat_old = optim.leaf_paths(host)
        missing = sorted(set(flat_new) - set(flat_old))
        if missing:
            raise run_config.ConfigError(f"resume_from={self.source.name}: its train state differs from "
                                         f"this config's (missing {missing[:3]}...); use init_from")
        return jax.tree_util.tree_map_with_path(
            lambda p, leaf: jax.device_put(np.asarray(flat_old[optim.path_str(p)]).astype(leaf.dtype), leaf.sharding),
            state)

    # ---- data ----
    def _loaders(self, data_stage: int):
        from data_pipeline import loaders
        config = self.config
        if data_stage == 4:
            self._ensure_targets()
        try:
            it = loaders.make_loader(loader_config(config, self.data_dir, config.data.split, data_stage))
        except (loaders.LoaderError, FileNotFoundError) as e:
            raise run_config.ConfigError(f"data.shards_dir ({self.data_dir}): {e}") from None
        self.eval_batches = []
        if config.data.eval_split and config.eval_every_steps and config.eval_batches:
            try:
                ev = loaders.make_loader(loader_config(config, self.data_dir, config.data.eval_split, data_stage))
                self.eval_batches = [next(ev) for _ in range(config.eval_batches)]
            except (loaders.LoaderError, FileNotFoundError) as e:
                log.warning("no evaluation: split %r cannot feed stage %s (%s)", config.data.eval_split,
                            config.stage, e)
        return it

    def _ensure_targets(self):
        """Stage 4 targets: reused when stored, else computed with the run's lip-pose model."""
        from data_pipeline.loaders import targets
        name = self.config.data.targets
        try:
            targets.load_targets(self.data_dir, name, size=self.config.model.size)
            return
        except targets.TargetsError as e:
            if os.path.exists(os.path.join(targets.targets_dir(self.data_dir, name), "targets.json")) \
                    and "incomplete" not in str(e):
                raise run_config.ConfigError(f"data.targets: {e}") from None
        gen, params = self.models.gen, self.state.params["gen"]
        coeff = jax.jit(lambda p, x: gen.apply({"params": p}, x, method=_lip_pose_coefficients))
        if _is_main():
            log.info("computing stage-4 targets %r with the initial generator", name)
            targets.compute_targets(self.data_dir, name, lambda x: jax.device_get(coeff(params, jnp.asarray(x))),
                                    batch_size=32, progress=self.progress, size=self.config.model.size,
                                    model=_params_sha256(params))
        _sync("targets")

    def _lip_mean(self) -> np.ndarray:
        """The mean lip target over the training split's clips (lip_dim,)."""
        from data_pipeline.loaders import targets
        from data_pipeline.records import directory
        store = directory.open_clips(self.data_dir, self.config.data.split or None)
        stored = targets.load_targets(self.data_dir, self.config.data.targets)
        total, count = np.zeros(stored.lip_dim, np.float64), 0
        for i in range(len(store)):
            try:
                lip, _ = stored.get(store.global_index(i))
            except targets.TargetsError:  # a clip without targets: the loader skips it too
                continue
            total += lip.sum(axis=0)
            count += len(lip)
        return (total / max(count, 1)).astype(np.float32)

    def _restore_or_save_config(self):
        if self.mode == "resume":  # then the data position of the same step
            self.state = self.ckpts.restore(self.start_step, self.abstract_state, self.train_iter)
            self.start_step = int(self.start_step)
            log.info("resumed %s at step %d", self.workdir, self.start_step)
        if _is_main():
            checkpointing.write_config(self.workdir, dict(
                self.config.to_dict(), resolved_model=_norm(self.model_cfg), data_dir=self.data_dir))


def _params_sha256(params) -> str:
    """"params:" + sha256 of a parameter tree (paths, dtypes, shapes and values): the
    identity of the generator that computed stage-4 targets."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
        leaf = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype.str}:{leaf.shape};".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return "params:" + h.hexdigest()


def _lip_pose_coefficients(gen, frames):
    return gen.coefficients(gen.encode(frames)["latent"], parts=("lip", "pose"))


def _norm(cfg: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in cfg.items() if k != "path"}, default=list))


def _fetch(tree) -> Dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _check_finite(step: int, scalars: Dict[str, float]) -> None:
    bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
    if bad:
        raise NonFiniteError(f"step {step}: non-finite {', '.join(bad)}; the run stopped without "
                             "checkpointing this state (the last good checkpoint is kept)")


def train_and_evaluate(config, workdir: str, progress: bool = True) -> Dict[str, Any]:
    """Trains `config.stage` in `workdir` up to config.total_steps; returns the final
    metrics (also written to WORKDIR/final_metrics.json)."""
    from tqdm import tqdm

    setup_start = time.perf_counter()
    run = Run(config, workdir, progress)
    ctx, mesh = run.ctx, run.mesh
    step_fn = jax.jit(functools.partial(common.train_step, ctx),
                      in_shardings=(run.state_sharding, run.batch_sharding, run.repl, run.repl),
                      out_shardings=(run.state_sharding, run.repl), donate_argnums=(0,))
    eval_fn = jax.jit(functools.partial(common.eval_step, ctx),
                      in_shardings=(run.state_sharding, run.batch_sharding, run.repl), out_shardings=run.repl)
    writer = metrics.MetricWriter(os.path.join(workdir, "tensorboard"))
    rng = jax.random.PRNGKey(config.seed + 1)
    state, step = run.state, run.start_step
    total = config.total_steps
    guard = checkpointing.PreemptionGuard()
    throughput = metrics.Throughput(peak=metrics.peak_flops(override=config.peak_flops or None),
                                    num_devices=jax.device_count())
    last: Dict[str, float] = {}
    compiled = None
    every = lambda n, s: bool(n) and s % n == 0
    bar = tqdm(total=total, initial=step, desc=config.stage, unit="step", disable=not (progress and _is_main()))
    try:
        with jax.set_mesh(mesh):
            while step < total:
                batch = sharding.global_batch(next(run.train_iter), mesh)
                if compiled is None:  # compiled once, ahead of time: its cost analysis gives MFU
                    t0 = time.perf_counter()
                    compiled = step_fn.lower(state, batch, rng, run.consts).compile()
                    throughput.flops_per_step = _flops(compiled)
                    last["perf/compile_seconds"] = time.perf_counter() - t0
                    last["perf/setup_seconds"] = t0 - setup_start
                    log.info("%s: set up in %.1f s, step compiled in %.1f s", config.stage,
                             t0 - setup_start, last["perf/compile_seconds"])
                    if throughput.flops_per_step:
                        last["perf/flops_per_step"] = throughput.flops_per_step
                state, step_metrics = compiled(state, batch, rng, run.consts)
                step += 1
                bar.update(1)
                is_last = step == total
                save = every(config.checkpoint_every_steps, step) or is_last
                if every(config.log_every_steps, step) or save or is_last:
                    scalars = _fetch(step_metrics)
                    _check_finite(step, scalars)
                    scalars.update(throughput.tick(step, config.batch_size))
                    scalars.update(_data_stats(run.train_iter))
                    writer.write_scalars(step, scalars)
                    last.update(scalars)
                    bar.set_postfix(loss=f"{scalars['loss/g_total']:.3f}",
                                    psnr=f"{scalars.get('train/psnr', float('nan')):.2f}")
                want_images = every(config.images_every_steps, step) or is_last
                if run.eval_batches and (every(config.eval_every_steps, step) or is_last or want_images):
                    t_eval = time.perf_counter()
                    ev, images = evaluate(eval_fn, state, run.eval_batches, mesh, run.consts)
                    log.info("%s: evaluated step %d in %.1f s", config.stage, step, time.perf_counter() - t_eval)
                    writer.write_scalars(step, ev)
                    last.update(ev)
                    if want_images:
                        write_samples(images, run.workdir, step, writer)
                    throughput.reset(step)
                stop = guard.should_stop(step)
                if save or stop:
                    run.ckpts.save(step, state, run.train_iter, force=True)
                if stop:
                    log.warning("preemption requested: saved step %d, stopping", step)
                    break
    finally:
        bar.close()
        guard.close()
        run.ckpts.wait_until_finished()
        writer.close()
    final = {"step": step, "stage": config.stage, "metrics": last, "workdir": workdir,
             "preempted": step < total}
    if _is_main():
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(final, f, indent=1)
    run.ckpts.close()
    run.final_state = state
    final["_run"] = run
    return final


def _flops(compiled) -> Optional[float]:
    flops = metrics.compiled_flops(compiled)
    return None if flops is None else flops * jax.device_count()  # per device -> whole step


def _data_stats(it) -> Dict[str, float]:
    stats = getattr(it, "stats", None) or {}
    out = {"data/skipped": float(sum(stats.get("skipped", {}).values()))}
    return out


def evaluate(eval_fn, state, batches, mesh, consts):
    """(means of the eval metrics over the held-out batches, grid columns of the first)."""
    rows, images = [], None
    for b in batches:
        m, cols = eval_fn(state, sharding.global_batch(b, mesh), consts)
        rows.append(_fetch(m))
        images = images if images is not None else cols
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, images


def write_samples(columns, workdir: str, step: int, writer) -> None:
    """The grid PNG (WORKDIR/samples/<step>.png) and its TensorBoard image."""
    columns = jax.device_get(columns)
    grid = metrics.image_grid([(name.split(" ", 1)[1], np.asarray(x)) for name, x in sorted(columns.items())],
                              min_cell=128)
    writer.write_images(step, {"samples": grid})
    if _is_main():
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        metrics.save_png(os.path.join(workdir, "samples", f"{step:07d}.png"), grid)
