"""Per-stage samples (edtalk_spec.md §3): which clips a stage uses and how one sample is
drawn from a clip. The grain plumbing is in data_pipeline.loaders.

A sampler maps (epoch, clip) to a dict of numpy arrays, images uint8 (H, W, 3) at the
configured size. Its randomness is `np.random.default_rng([seed, stage, epoch, global
clip index])`, so a sample does not depend on worker count or iteration order. Frames
are chosen from the index (a clip's length and landmark validity) and only those frame
records are read (source.ClipSource.read_frames).

Landmarks place mouths only where they were detected: the mouth-swap frames of stage 2
and the T frames of stage 4 have `landmark_valid` set (clips without such frames are
excluded up front, counted by reason).

Bad data (schema.DataError: an unreadable record, a corrupt JPEG, missing or non-finite
targets, degenerate landmarks) is a counted skip: the sampler records the reason and
draws a replacement clip (any usable one) with the same generator, so batches keep
their size and stay deterministic. Any other exception is a bug and propagates. The
loader stops the run when skips pass its rate limit (LoaderConfig.max_skip_fraction).
"""

from __future__ import annotations

import numpy as np

from data_pipeline.loaders import images, mouth_swap, targets
from data_pipeline.records import schema, shards

# The image keys of each stage's samples (uint8 until the batch is converted).
IMAGE_KEYS = {
    1: ("source", "target"),
    2: ("a_identity", "a", "b_identity", "b", "mouth_a_on_b", "mouth_b_on_a"),
    3: ("identity", "target"),
    4: ("frames", "identity"),
}
MAX_ATTEMPTS = 16


def min_frames(stage: int, t: int) -> int:
    """Frames a clip needs: two distinct frames, or T consecutive ones for stage 4."""
    return t if stage == 4 else 2


def valid_starts(valid: np.ndarray, t: int) -> np.ndarray:
    """Starts of the windows of t consecutive frames whose landmarks are all valid."""
    run = np.convolve(np.asarray(valid, np.int64), np.ones(t, np.int64), "valid")
    return np.flatnonzero(run == t)


def usable_clips(store, cfg, target_store=None) -> tuple[np.ndarray, dict[str, int]]:
    """(store indices of the clips stage `cfg.stage` can use, {reason: count} of the
    others). Only the index is read (no record)."""
    excluded: dict[str, int] = {}
    usable = []
    need = min_frames(cfg.stage, cfg.T)
    for i in range(len(store)):
        meta = store.meta(i)
        if cfg.datasets is not None and meta["dataset"] not in cfg.datasets:
            reason = "other_dataset"
        elif meta["num_frames"] < need:
            reason = f"too_short(<{need})"
        elif cfg.stage == 3 and not meta["emotion"]:
            reason = "no_emotion"
        elif cfg.stage == 3 and cfg.exclude_neutral and meta["emotion"] == "neutral":
            reason = "neutral"
        elif cfg.stage == 2 and not store.landmark_valid(i).any():
            reason = "no_detected_landmarks"
        elif cfg.stage == 4 and not len(valid_starts(store.landmark_valid(i), cfg.T)):
            reason = f"no_{cfg.T}_frames_with_detected_landmarks"
        elif target_store is not None and store.global_index(i) in target_store.bad_clips:
            reason = "no_targets"
        else:
            usable.append(i)
            continue
        excluded[reason] = excluded.get(reason, 0) + 1
    return np.asarray(usable, np.int64), excluded


def skip_kind(error: schema.DataError) -> str:
    """The counter a skipped clip goes to."""
    if isinstance(error, targets.TargetsError):
        return "no_targets"
    if isinstance(error, shards.FrameError):
        return "corrupt_frame"
    if isinstance(error, shards.ShardError):
        return "unreadable"
    return "bad_data"


class Sampler:
    """Draws one stage's samples from a ClipSource (see the module docstring).

    `usable` are the store indices the stage may use: partners and replacements for
    skipped clips come from all of them."""

    def __init__(self, store, cfg, usable: np.ndarray, target_store=None):
        self.store = store
        self.stage, self.seed, self.size, self.t = cfg.stage, cfg.seed, cfg.image_size, cfg.T
        self.mouth_margin = cfg.mouth_margin
        self.usable = np.asarray(usable, np.int64)
        self.targets = target_store
        speakers: dict[tuple[str, str], list[int]] = {}
        for i in usable:
            meta = store.meta(int(i))
            speakers.setdefault((meta["dataset"], meta["speaker"]), []).append(int(i))
        self.speaker_keys = sorted(speakers)
        self.speaker_clips = [np.asarray(speakers[k], np.int64) for k in self.speaker_keys]
        neutral = {int(i) for i in usable if store.meta(int(i))["emotion"] == "neutral"}
        self.neutral_clips = [np.asarray([i for i in c if i in neutral], np.int64)
                              for c in self.speaker_clips]
        self.speaker_of = {int(i): s for s, c in enumerate(self.speaker_clips) for i in c}
        draws = {1: self._stage1, 2: self._stage2, 3: self._stage3, 4: self._stage4}
        self._draw = draws[self.stage]

    def __call__(self, item: tuple[int, int]) -> dict:
        """(epoch, store index) -> sample dict with "index" (global clip index of the
        sample's clip) and "skips" (list of (kind, message) for replaced clips)."""
        epoch, i = item
        rng = np.random.default_rng([self.seed, self.stage, epoch, self.store.global_index(i)])
        skips = []
        for _ in range(MAX_ATTEMPTS):
            try:
                sample = self._draw(i, rng)
            except schema.DataError as e:
                skips.append((skip_kind(e), f"sample of clip {self.store.global_index(i)}: {e}"))
                i = int(self.usable[rng.integers(len(self.usable))])
                continue
            sample["index"] = np.int32(self.store.global_index(i))
            sample["skips"] = skips
            return sample
        raise schema.DataError(f"{self.store.shards_dir}: {MAX_ATTEMPTS} clips in a row could not "
                               f"be used; the last errors: {[m for _, m in skips[-3:]]}")

    # --- helpers ---------------------------------------------------------------------

    def _read(self, i: int, frames) -> tuple[dict, float]:
        """Frames `frames` of clip i (source.ClipSource.read_frames, images at their stored
        size) and the scale factor to the output size (for landmarks)."""
        data = self.store.read_frames(i, frames)
        return data, self.size / data["frames"].shape[1]

    def _resize(self, img: np.ndarray) -> np.ndarray:
        return images.resize_frames(img[None], self.size)[0]

    def _frames(self, i: int, frames) -> np.ndarray:
        return images.resize_frames(self.store.read_frames(i, frames)["frames"], self.size)

    @staticmethod
    def _two(rng, n: int) -> np.ndarray:
        return rng.choice(n, 2, replace=False)

    def _frame(self, rng, i: int) -> int:
        return int(rng.integers(self.store.num_frames(i)))

    def _speaker(self, i: int) -> int:
        return self.speaker_of[int(i)]

    def _swap_pair(self, rng, i: int) -> list[int]:
        """[identity frame, mouth frame] of clip i: the mouth frame among those with
        detected landmarks, the identity frame any other frame."""
        mouth = int(rng.choice(np.flatnonzero(self.store.landmark_valid(i))))
        other = int(rng.integers(self.store.num_frames(i) - 1))
        return [other + (other >= mouth), mouth]

    # --- stages ----------------------------------------------------------------------

    def _stage1(self, i: int, rng) -> dict:
        """MEAD-style clips (emotion known): source from a random neutral clip of the
        speaker (any clip when none is neutral), target from a random clip of the
        speaker. Others (HDTF): two random frames of one random clip of the speaker."""
        s = self._speaker(i)
        clips = self.speaker_clips[s]
        if self.store.meta(i)["emotion"]:
            pool = self.neutral_clips[s] if len(self.neutral_clips[s]) else clips
            src, tgt = int(rng.choice(pool)), int(rng.choice(clips))
            source = self._frames(src, [self._frame(rng, src)])[0]
            target = self._frames(tgt, [self._frame(rng, tgt)])[0]
        else:
            c = int(rng.choice(clips))
            source, target = self._frames(c, self._two(rng, self.store.num_frames(c)))
        return {"source": source, "target": target}

    def _stage2(self, i: int, rng) -> dict:
        """Clip A = clip i, clip B = a random clip of a random other speaker; two frames
        of each (the second with detected landmarks), the two mouth swaps (official
        get_IA_MB at full frame size) and the mouth boxes of A and B (for
        `loss.mouth_l1`)."""
        s = self._speaker(i)
        other = int(rng.integers(len(self.speaker_clips) - 1))
        other += other >= s
        j = int(rng.choice(self.speaker_clips[other]))
        rec_a, scale_a = self._read(i, self._swap_pair(rng, i))
        rec_b, scale_b = self._read(j, self._swap_pair(rng, j))
        (a_id, a), (b_id, b) = rec_a["frames"], rec_b["frames"]
        la, lb = rec_a["landmarks"][1], rec_b["landmarks"][1]
        out = {"a_identity": a_id, "a": a, "b_identity": b_id, "b": b,
               "mouth_a_on_b": mouth_swap.swap_mouth(a, la, b, lb),
               "mouth_b_on_a": mouth_swap.swap_mouth(b, lb, a, la)}
        out = {k: self._resize(v) for k, v in out.items()}
        out["a_mouth_box"] = square_mouth_box(la * scale_a, self.mouth_margin, self.size)
        out["b_mouth_box"] = square_mouth_box(lb * scale_b, self.mouth_margin, self.size)
        return out

    def _stage3(self, i: int, rng) -> dict:
        """Identity and target: two random frames of the (emotional) clip i."""
        identity, target = self._frames(i, self._two(rng, self.store.num_frames(i)))
        meta = self.store.meta(i)
        return {"identity": identity, "target": target,
                "emotion": np.int32(schema.emotion_label(meta["emotion"])),
                "level": np.int32(meta["level"])}

    def _stage4(self, i: int, rng) -> dict:
        """T consecutive frames with detected landmarks from a random start, their mel
        windows, mouth boxes and stored lip/pose targets, and a random identity frame of
        the same clip with its stored lip coefficients (`identity_lip`, the anchor of
        `audio2lip.target="offset"`)."""
        n = self.store.num_frames(i)
        start = int(rng.choice(valid_starts(self.store.landmark_valid(i), self.t)))
        span = np.arange(start, start + self.t)
        lip, pose = self.targets.get(self.store.global_index(i))
        if len(lip) != n or not (np.isfinite(lip[span]).all() and np.isfinite(pose[span]).all()):
            raise targets.TargetsError(f"targets of {len(lip)} frames (clip has {n}) or not finite")
        ident = int(rng.integers(n))
        if not np.isfinite(lip[ident]).all():
            raise targets.TargetsError(f"lip target of identity frame {ident} is not finite")
        rec, scale = self._read(i, [ident, *span])
        if not np.isfinite(rec["landmarks"][1:]).all():
            raise schema.DataError(f"landmarks of frames {start}..{start + self.t - 1} are not finite")
        boxes = np.stack([square_mouth_box(lm * scale, self.mouth_margin, self.size)
                          for lm in rec["landmarks"][1:]])
        frames = images.resize_frames(rec["frames"], self.size)
        return {"frames": frames[1:], "mel": rec["mel_windows"][1:], "identity": frames[0],
                "mouth_boxes": boxes, "lip_targets": lip[span], "pose_targets": pose[span],
                "identity_lip": lip[ident]}


def square_mouth_box(landmarks: np.ndarray, margin: float, size: int) -> np.ndarray:
    """float32 (x1, y1, x2, y2): the square of side max(w, h) * (1 + 2 * margin) centred
    on the bounding box of landmarks 48-67, moved inside the size x size frame."""
    mouth = np.asarray(landmarks, np.float64)[list(schema.MOUTH)]
    lo, hi = mouth.min(0), mouth.max(0)
    side = min(float((hi - lo).max()) * (1 + 2 * margin), float(size))
    corner = np.clip((lo + hi) / 2 - side / 2, 0, size - side)
    return np.array([corner[0], corner[1], corner[0] + side, corner[1] + side], np.float32)
