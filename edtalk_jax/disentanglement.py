"""Disentanglement scores on data with ground-truth factors (the synthetic dataset): how
well each motion space's coefficients predict each factor group.

For every (factor group, space) pair a ridge probe maps the space's coefficients to the
group's factors. It is fitted on the training clips and scored on the held-out clips by
R² (clipped at 0: no better than predicting the mean), pooled over the group's factors,
each scaled by its training standard deviation so that degrees and frame fractions
weigh alike. Coefficients and factors are centred per clip first: a score says how a
space follows a factor *within* a clip. A speaker's constant offset, which any space may
carry, does not count; neither does what a clip holds constant.

`matrix[factor][space]`: the diagonal (mouth-lip, pose-pose, expression-exp) should be
high and the rest low. A group without varying factors, or a space the model lacks,
scores None.

`audio_mouth`: the same probe for Audio2Lip. Fitted from the generator's own lip
coefficients (its stage-4 targets) to the mouth factors on the training clips, it reads
the mouth from lip coefficients predicted from the audio of the held-out clips. Copying
the source's coefficients scores 0 (constant within a clip); the generator's coefficients
of the held-out frames themselves (what driving by video gives) are the comparison.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

FACTOR_GROUPS = {
    "mouth": ("mouth_open", "lip_round"),
    "pose": ("yaw", "pitch", "roll", "tx", "ty", "scale"),
    "expression": ("expr_intensity", "brow_raise", "brow_furrow", "brow_tilt", "eye_open",
                   "mouth_corner", "mouth_width", "mouth_asym", "lip_raise", "jaw_open"),
}
SPACES = ("lip", "pose", "exp")
RIDGE = 1e-3  # x the row count, on standardised coefficients: against near-collinear bases


def probe_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             ridge: float = RIDGE) -> float:
    """Held-out R² of a ridge regression y ~ x (columns of x standardised on the training
    rows, an intercept, y pooled over its columns), clipped at 0."""
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train, np.float64), np.asarray(y_test, np.float64)
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    a_train = np.hstack([(x_train - mu) / sd, np.ones((len(x_train), 1))])
    a_test = np.hstack([(x_test - mu) / sd, np.ones((len(x_test), 1))])
    reg = ridge * len(a_train) * np.eye(a_train.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    w = np.linalg.solve(a_train.T @ a_train + reg, a_train.T @ y_train)
    sse = np.sum((a_test @ w - y_test) ** 2)
    sst = np.sum((y_test - y_test.mean(0)) ** 2)
    return float(max(0.0, 1.0 - sse / sst)) if sst > 0 else 0.0


def score_matrix(clips: Sequence[Mapping[str, Any]], factor_names: Sequence[str],
                 ridge: float = RIDGE) -> Dict[str, Dict[str, Optional[float]]]:
    """clips: {"test": bool, "coeffs": {space: (T, K)}, "factors": (T, F)} each, with
    both splits present -> {group: {space: R² or None}}."""
    stack = _stacker(clips, "disentanglement")
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for group in FACTOR_GROUPS:
        cols = _varying(group, factor_names, stack(False, lambda c: np.asarray(c["factors"])))
        out[group] = {}
        for space in SPACES:
            if not cols or any(space not in c["coeffs"] for c in clips):
                out[group][space] = None
                continue
            f_train = stack(False, lambda c: np.asarray(c["factors"])[:, cols])
            f_test = stack(True, lambda c: np.asarray(c["factors"])[:, cols])
            scale = f_train.std(0)
            out[group][space] = probe_r2(stack(False, lambda c: c["coeffs"][space]), f_train / scale,
                                         stack(True, lambda c: c["coeffs"][space]), f_test / scale, ridge)
    return out


def _stacker(clips: Sequence[Mapping[str, Any]], what: str):
    """stack(test: bool, get) -> get(clip) of the split's clips, each centred, stacked."""
    split = {s: [c for c in clips if bool(c["test"]) == s] for s in (False, True)}
    if not split[False] or not split[True]:
        raise ValueError(f"{what}: need training and held-out clips, got "
                         f"{len(split[False])} and {len(split[True])}")

    def stack(s: bool, get) -> np.ndarray:
        return np.concatenate([(lambda x: x - x.mean(0, keepdims=True))(np.asarray(get(c), np.float64))
                               for c in split[s]])
    return stack


def _varying(group: str, factor_names: Sequence[str], factors_train: np.ndarray) -> list:
    """Columns of `group`'s factors that vary within the (clip-centred) training clips."""
    names = list(factor_names)
    cols = [names.index(n) for n in FACTOR_GROUPS[group] if n in names]
    return [k for k in cols if factors_train[:, k].std() > 1e-6]


def audio_mouth(clips: Sequence[Mapping[str, Any]], factor_names: Sequence[str],
                ridge: float = RIDGE) -> Dict[str, Optional[float]]:
    """clips: {"test": bool, "lip": (T, K) the generator's lip coefficients, "audio_lip":
    (T, K) Audio2Lip's (held-out clips only), "factors": (T, F)} -> {"audio": R² of the
    mouth factors read from the audio's lips, "video": from the generator's own, "copy": 0.0}
    on the held-out clips (module docstring); None without varying mouth factors."""
    stack = _stacker(clips, "audio_mouth")
    cols = _varying("mouth", factor_names, stack(False, lambda c: c["factors"]))
    if not cols:
        return {"audio": None, "video": None, "copy": None}
    f_train, f_test = (stack(s, lambda c: np.asarray(c["factors"])[:, cols]) for s in (False, True))
    scale = f_train.std(0)
    x_train = stack(False, lambda c: c["lip"])
    return {space: probe_r2(x_train, f_train / scale, stack(True, lambda c: c[key]), f_test / scale, ridge)
            for space, key in (("audio", "audio_lip"), ("video", "lip"))} | {"copy": 0.0}


def collect(coeff_fn, data_dir: str, test_keys: Iterable[str], size: int) -> tuple[list, list]:
    """(clips for score_matrix, factor names) of every clip in a shard directory that has
    ground-truth factors. coeff_fn: frames float32 (N, S, S, 3) in [-1, 1] -> {space:
    (N, K)} (inference.coefficient_fn); frames are resized to `size` as the loaders do."""
    from data_pipeline.loaders import images
    from data_pipeline.records import shards, source

    store = source.ClipStore(data_dir)
    test_keys = set(test_keys)
    clips, names = [], None
    for g in range(len(store)):
        meta = store.meta(g)
        clip_names = [n for n in meta.get("factor_names", "").split(",") if n]
        if not clip_names:
            continue
        if names is None:
            names = clip_names
        elif clip_names != names:
            raise ValueError(f"{data_dir}: clip {shards.clip_key(meta)} has factors {clip_names}, "
                             f"others {names}")
        clip = store.clip(g)
        frames = images.to_float(images.resize_frames(clip["frames"], size))
        clips.append({"test": shards.clip_key(meta) in test_keys, "coeffs": coeff_fn(frames),
                      "factors": clip["factors"]})
    if names is None:
        raise ValueError(f"{data_dir}: no clip has ground-truth factors (synthetic data has them)")
    return clips, names


def evaluate(model, variables, data_dir: str, size: int, batch_size: int = 64) -> Dict[str, Any]:
    """{"matrix", "clips": {"train", "test"}} of a generator on a shard directory with a
    held-out split (splits/test.json)."""
    import json
    import os

    from edtalk_jax import inference

    with open(os.path.join(data_dir, "splits", "test.json")) as f:
        test_keys = json.load(f)
    parts = tuple(p for p in SPACES if p in model.parts)
    fn = inference.coefficient_fn(model, variables, parts=parts, batch_size=batch_size)
    clips, names = collect(fn, data_dir, test_keys, size)
    return {"matrix": score_matrix(clips, names),
            "clips": {"train": sum(not c["test"] for c in clips), "test": sum(c["test"] for c in clips)}}


def evaluate_audio(audio2lip, variables, data_dir: str, targets: str = "lip_pose",
                   batch_size: int = 256) -> Dict[str, Any]:
    """{"mouth_r2": audio_mouth(...), "clips": {"train", "test"}, "skipped"} of an Audio2Lip
    on a shard directory with a held-out split and the generator's stored stage-4 targets
    `targets` (data_pipeline.loaders.targets). Clips without targets are counted as skipped."""
    import json
    import os

    import jax

    from data_pipeline.loaders import targets as targets_lib
    from data_pipeline.records import shards, source

    store = source.ClipStore(data_dir)
    lips = targets_lib.load_targets(data_dir, targets)
    with open(os.path.join(data_dir, "splits", "test.json")) as f:
        test_keys = set(json.load(f))
    predict = jax.jit(lambda v, mel: audio2lip.apply(v, mel))
    clips, names, skipped = [], None, 0
    for g in range(len(store)):
        meta = store.meta(g)
        clip_names = [n for n in meta.get("factor_names", "").split(",") if n]
        if not clip_names:
            continue
        names = names or clip_names
        if clip_names != names:
            raise ValueError(f"{data_dir}: clip {shards.clip_key(meta)} has factors {clip_names}, "
                             f"others {names}")
        try:
            lip = lips.get(g)[0]
        except targets_lib.TargetsError:
            skipped += 1
            continue
        data = store.read_frames(g, range(store.num_frames(g)), decode=False)
        clip = {"test": shards.clip_key(meta) in test_keys, "lip": lip, "factors": data["factors"]}
        if clip["test"]:
            mel = np.asarray(data["mel_windows"], np.float32)
            clip["audio_lip"] = np.concatenate([np.asarray(predict(variables, mel[k:k + batch_size]))
                                                for k in range(0, len(mel), batch_size)])
        clips.append(clip)
    if names is None:
        raise ValueError(f"{data_dir}: no clip has ground-truth factors (synthetic data has them)")
    return {"mouth_r2": audio_mouth(clips, names), "skipped": skipped,
            "clips": {"train": sum(not c["test"] for c in clips), "test": sum(c["test"] for c in clips)}}


def heatmap_png(matrix: Mapping[str, Mapping[str, Optional[float]]], path: str, cell: int = 96) -> None:
    """The matrix as a heat map (rows: factor groups, columns: spaces; white 0 to dark
    blue 1, hatched grey for None, the value printed in each cell), written with OpenCV."""
    import cv2

    groups, spaces = list(matrix), list(SPACES)
    label_w, head_h = 2 * cell, cell // 2
    img = np.full((head_h + cell * len(groups), label_w + cell * len(spaces), 3), 255, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, cell / 192
    for j, space in enumerate(spaces):
        cv2.putText(img, space, (label_w + j * cell + cell // 3, head_h * 2 // 3), font, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for i, group in enumerate(groups):
        y0 = head_h + i * cell
        cv2.putText(img, group, (8, y0 + cell // 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        for j, space in enumerate(spaces):
            x0 = label_w + j * cell
            v = matrix[group].get(space)
            if v is None:
                img[y0:y0 + cell, x0:x0 + cell] = 200
                for k in range(-cell, cell, 12):  # hatching
                    cv2.line(img, (x0 + k, y0 + cell), (x0 + k + cell, y0), (160, 160, 160), 1)
                text, ink = "n/a", (0, 0, 0)
            else:
                shade = np.array([255, 255, 255]) * (1 - v) + np.array([150, 60, 10]) * v  # BGR blue
                img[y0:y0 + cell, x0:x0 + cell] = shade.astype(np.uint8)
                text, ink = f"{v:.2f}", (255, 255, 255) if v > 0.5 else (0, 0, 0)
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), (120, 120, 120), 1)
            cv2.putText(img, text, (x0 + cell // 4, y0 + cell // 2 + 6), font, scale * 1.2, ink, 1, cv2.LINE_AA)
    if not cv2.imwrite(path, img):
        raise OSError(f"{path}: could not write the heat map")
