"""Synthetic talking heads: procedurally drawn faces with known per-frame factors.

Modules: factors (identities, emotions, pose, speech), drawing (faces from factors),
dataset (clips as records, `write_dataset`). The names users need are here.

The embedded default dataset (docs/synthetic.md). Per speaker an identity (face shape,
colours, hair, voice pitch, background); per clip one emotion + level (MEAD style),
smooth random head pose, blinks, gaze, and speech-like audio whose amplitude envelope
drives the mouth. Each clip is a schema record: frames, mel windows of its own audio,
the drawn dlib-68 landmarks and the factors. Everything is deterministic from the seed.

Head frame: x right, y down, z toward the camera; the face is an ellipsoid with
half-height 1. Pose R = Rz(roll) Rx(pitch) Ry(yaw), orthographic projection: yaw > 0
turns the nose toward image +x, pitch > 0 tilts it down, roll > 0 turns the face
clockwise on screen.
"""

from data_pipeline.synthetic.dataset import draw_frames, render_clip, speaker_id, write_dataset
from data_pipeline.synthetic.drawing import FACE_PX, landmarks68
from data_pipeline.synthetic.factors import (EMOTION_PARAMS, FACTOR_NAMES, LEVEL_SCALE, POSE_RANGE,
                                             SyntheticConfig, clip_emotion, clip_factors, identity,
                                             speech, speech_factors)

__all__ = ["EMOTION_PARAMS", "FACE_PX", "FACTOR_NAMES", "LEVEL_SCALE", "POSE_RANGE", "SyntheticConfig",
           "clip_emotion", "clip_factors", "draw_frames", "identity", "landmarks68", "render_clip",
           "speaker_id", "speech", "speech_factors", "write_dataset"]
