"""Runs a curriculum config (configs/demo.py): its stages in order, each in
WORKDIR/<stage>/ with `init_from` the previous stage's workdir, on one dataset (the
synthetic one, built once in WORKDIR/data), then WORKDIR/report.json.

A finished stage (its final checkpoint exists) is not rerun, so an interrupted
curriculum resumes where it stopped.
"""

import json
import os
import time
from typing import Any, Dict

from edtalk_jax import train


def _stage_report(name: str, final: Dict[str, Any], seconds: float) -> Dict[str, Any]:
    m = final["metrics"]
    out: Dict[str, Any] = {"seconds": round(seconds, 1), "steps": final["step"],
                           "orthogonality_error": m.get("eval/bank/orthogonality_error",
                                                        m.get("bank/orthogonality_error"))}
    if name == "stage4":
        out["lip_error"] = m.get("eval/stage4/lip_mse")
        out["baseline_lip_error"] = m.get("eval/stage4/mean_baseline_mse")
        out["lip_motion_error"] = m.get("eval/stage4/lip_motion_mse")
        out["baseline_lip_motion_error"] = m.get("eval/stage4/still_baseline_mse")
        # A second baseline: copy the identity frame's coefficients (no audio at all).
        out["baseline_identity_lip_error"] = m.get("eval/stage4/identity_baseline_mse")
        out["beats_baseline"] = (None not in (out["lip_error"], out["baseline_lip_error"])
                                 and out["lip_error"] < out["baseline_lip_error"])
    else:
        out["psnr"] = m.get("eval/psnr")
        out["baseline_psnr"] = m.get("eval/recon/copy_source_psnr")
        out["beats_baseline"] = out["psnr"] is not None and out["psnr"] > out["baseline_psnr"]
        if "eval/recon/psnr_without_exp" in m:
            out["psnr_without_exp"] = m["eval/recon/psnr_without_exp"]
        if "eval/recon/cross_psnr" in m:
            out["cross_psnr"] = m["eval/recon/cross_psnr"]
    out["samples"] = os.path.join(final["workdir"], "samples")
    return out


def _judge_stage4(out: Dict[str, Any], mouth_r2: Dict[str, Any]) -> None:
    """Adds the audio mouth probe to stage 4's report. Stage 4 beats its baselines when its
    lip error is below predict-the-mean and the mouth read from its lips beats copying the
    identity frame (R² 0). Its lip error need not beat copy-the-identity: where most of
    the lip coefficients' motion within a clip is not the mouth (the demo, docs/training.md),
    no audio model can, and the probe is the measure of what the audio says."""
    out["mouth_r2"] = mouth_r2
    audio, copy = mouth_r2["audio"], mouth_r2["copy"]  # None: no mouth factor varies
    out["beats_baseline"] = bool(out["beats_baseline"] and audio is not None and audio > copy)


def _disentanglement(run_, data_dir: str, stage_dir: str) -> Dict[str, Any]:
    """The factor x space probe matrix of the stage's generator on the held-out speakers
    (edtalk_jax.disentanglement; the synthetic dataset has the ground truth), also drawn
    to STAGE_DIR/disentanglement.png."""
    from edtalk_jax import disentanglement
    from edtalk_jax.steps import common
    params = common.eval_params(run_.final_state)["gen"]
    matrix = disentanglement.evaluate(run_.models.gen, {"params": params}, data_dir,
                                      size=run_.config.model.size)["matrix"]
    disentanglement.heatmap_png(matrix, os.path.join(stage_dir, "disentanglement.png"))
    return matrix


def _audio_mouth(run_, data_dir: str) -> Dict[str, Any]:
    """How well the mouth can be read from stage 4's audio-driven lip coefficients on the
    held-out speakers, next to the generator's own (edtalk_jax.disentanglement.audio_mouth)."""
    from edtalk_jax import disentanglement
    from edtalk_jax.steps import common
    variables = {"params": common.eval_params(run_.final_state)["audio2lip"],
                 **run_.final_state.model_state["audio2lip"]}
    return disentanglement.evaluate_audio(run_.models.audio2lip, variables, data_dir,
                                          targets=run_.config.data.targets)["mouth_r2"]


def demo_video(workdir: str, data_dir: str, checkpoint: str, progress: bool = True) -> Dict[str, Any]:
    """A talking head from the trained model, by `launch.infer`'s code: the first held-out
    clip's first frame spoken by its own audio (Audio2Lip) with its head motion (the clip
    as the pose video), to WORKDIR/demo/talking.mp4, next to the clip itself
    (reference.mp4) and the inputs; the command that renders it is in the result."""
    import cv2

    from data_pipeline.preprocess import audio as audio_lib
    from data_pipeline.preprocess import video_io
    from data_pipeline.records import directory
    from edtalk_jax import infer

    out = os.path.join(workdir, "demo")
    os.makedirs(out, exist_ok=True)
    clip = directory.open_clips(data_dir, "test").clip(0)
    paths = {k: os.path.join(out, f) for k, f in (("source", "source.png"), ("audio", "speech.wav"),
                                                  ("pose", "pose.mp4"), ("reference", "reference.mp4"),
                                                  ("out", "talking.mp4"))}
    cv2.imwrite(paths["source"], clip["frames"][0][..., ::-1])
    wav = audio_lib.int16_to_wav(clip["audio"])
    video_io.write_video(paths["pose"], clip["frames"])
    video_io.write_video(paths["reference"], clip["frames"], audio=wav)
    import soundfile
    soundfile.write(paths["audio"], clip["audio"], audio_lib.SAMPLE_RATE)
    models = infer.load_models(checkpoint, need_audio2lip=True)
    inputs = infer.Inputs(paths["source"], audio=paths["audio"], pose_video=paths["pose"])
    summary = infer.run(models, inputs, paths["out"], infer.Options(crop="none", progress=progress))
    summary["command"] = (f"python -m launch.infer --checkpoint {checkpoint} --source {paths['source']} "
                          f"--audio {paths['audio']} --pose-video {paths['pose']} --crop none --out {paths['out']}")
    summary["reference"] = paths["reference"]
    return summary


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache: stages with the same model and a resumed
    curriculum reuse compiled programs instead of compiling again (minutes on a CPU).
    A cache the user configured already (JAX_COMPILATION_CACHE_DIR) is kept."""
    import jax
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(config, workdir: str, progress: bool = True) -> Dict[str, Any]:
    os.makedirs(workdir, exist_ok=True)
    enable_compilation_cache(os.path.join(workdir, "jax_cache"))
    report_path = os.path.join(workdir, "report.json")
    report: Dict[str, Any] = {"stages": {}}
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
    data_dir = os.path.join(workdir, "data")
    previous = ""
    for name in config.curriculum:
        stage = config.stages[name]
        stage_dir = os.path.join(workdir, name)
        with stage.unlocked():
            stage.data.shards_dir = data_dir if os.path.exists(os.path.join(data_dir, "manifest.json")) else ""
            stage.data.synthetic.update(config.synthetic.to_dict())
            stage.init_from = previous
        if name in report["stages"] and os.path.exists(os.path.join(stage_dir, "final_metrics.json")):
            previous = stage_dir
            continue
        start = time.perf_counter()
        if not stage.data.shards_dir:  # the first stage builds the dataset for all of them
            train.prepare_data(stage, workdir, stage.model.size, progress)
            from data_pipeline.records import splits
            splits.write_splits(data_dir, other_test_fraction=config.test_fraction)
            with stage.unlocked():
                stage.data.shards_dir = data_dir
        final = train.train_and_evaluate(stage, stage_dir, progress=progress)
        run_ = final.pop("_run", None)
        if final["preempted"]:  # SIGTERM: the stage saved its checkpoint; rerunning resumes it
            report["preempted"] = name
            return report
        report["stages"][name] = _stage_report(name, final, time.perf_counter() - start)
        if name != "stage4" and run_ is not None:  # stage 4 leaves the generator as it was
            report["stages"][name]["disentanglement"] = _disentanglement(run_, data_dir, stage_dir)
        elif run_ is not None:
            _judge_stage4(report["stages"][name], _audio_mouth(run_, data_dir))
        with open(report_path, "w") as f:
            json.dump(report, f, indent=1)
        previous = stage_dir
        if progress:
            print(f"{name}: {json.dumps(report['stages'][name])}")
    if "stage4" in config.curriculum and "demo_video" not in report:
        report["demo_video"] = demo_video(workdir, data_dir, os.path.join(workdir, "stage4"), progress)
        if progress:
            print(f"demo video: {report['demo_video']['out']} (the clip itself: {report['demo_video']['reference']})")
    report["all_beat_baselines"] = all(s.get("beats_baseline") for s in report["stages"].values())
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    return report
