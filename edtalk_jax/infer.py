"""Inference from raw media: every official demo mode as one call (`launch.infer`).

What drives each motion part is chosen by the inputs given:

  lips        --lip-video (EDTalk-V), else --audio through Audio2Lip (EDTalk-A)
  pose        --pose-video, else the source's own pose (held fixed: the official --fix_pose)
  expression  --exp-video, --exp-image or --emotion NAME|FILE.npy, else the source's own
              (the full model only: the lip-pose model has no expression space)

  re-lipping  --source VIDEO --audio AUDIO: every frame of the video is the identity and
              the pose (and the expression) of its output frame; the lips come from the audio

The output has T frames: the audio's whole 25 fps frames (floor(samples / 640)) when the
lips come from audio, else the lip video's frames. Official rules for the other drivers,
each switchable: a pose video is held at its last frame (`hold`; EDTalk-A/V) or, for the
lip-pose model driven by audio, extended by time-reversed copies (`pingpong`, demo_lip_pose);
an expression video loses its last 20 frames (when longer) and is ping-ponged; the source
video of re-lipping is ping-ponged. Audio coefficients are smoothed over time with the
official Gaussian (`smooth`).

Inputs may be uncropped: with `crop="auto"` a photo's single face is cropped with the
data pipeline's square crop (the official framing), and a video's face track is found
on keyframes and cropped with one square for the whole video (crop_video.py). Several
faces, or none, is an error naming the file. `crop="none"` takes inputs as cropped
faces and only resizes them (area down, bicubic up).

Compute: the source is encoded once; driving videos are decoded (in a thread) and
reduced to bank coefficients chunk by chunk, one encoder pass per video whatever number
of parts it drives; frames are rendered in batches of `batch_size` through one jitted
function that takes the weights as arguments (the last batch padded), and encoded to
h264 in a writer thread while the next batch renders. The mp4 (h264 + AAC of the
driving audio, 25 fps) is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional

import jax
import numpy as np

from data_pipeline.preprocess import PreprocessOptions, audio as audio_lib, faces, video_io
from data_pipeline.loaders import to_float
from data_pipeline.records.schema import FPS
from data_pipeline.loaders.images import resize_frames
from edtalk_jax import inference, metrics
from edtalk_jax.models.generator import Generator

log = logging.getLogger(__name__)

EXTEND_RULES = ("auto", "hold", "pingpong", "loop")
CROP_MODES = ("auto", "none")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SILENCE_PEAK = 1e-4  # -80 dBFS: audio whose peak stays below this is silent


class InferenceError(ValueError):
    """Inputs that cannot be rendered; the message names the input and the problem."""


@dataclasses.dataclass
class Options:
    batch_size: int = 8  # frames per jitted render call
    crop: str = "auto"  # auto: find and crop the face; none: inputs are face crops
    detector: str = "dlib"  # dlib | haar | auto (faces.detect)
    smooth: bool = True  # official Gaussian smoothing of audio lip coefficients
    pose_extend: str = "auto"  # how a pose video shorter than T is extended
    exp_extend: str = "auto"  # how an expression video shorter than T is extended
    exp_trim_end: int = 20  # official: an expression video loses its last 20 frames
    max_length_mismatch: float = 1.0  # s: --audio muxed onto a lip video of another length
    progress: bool = True

    def check(self) -> None:
        if self.batch_size < 1:
            raise InferenceError(f"batch size must be at least 1, got {self.batch_size}")
        if self.crop not in CROP_MODES:
            raise InferenceError(f"crop {self.crop!r}: expected one of {CROP_MODES}")
        for name in ("pose_extend", "exp_extend"):
            if getattr(self, name) not in EXTEND_RULES:
                raise InferenceError(f"{name} {getattr(self, name)!r}: expected one of {EXTEND_RULES}")
        if self.exp_trim_end < 0:
            raise InferenceError("exp_trim_end must be >= 0")


@dataclasses.dataclass
class Models:
    gen: Generator
    gen_variables: Dict[str, Any]
    gen_config: Dict[str, Any]
    where: str  # the generator's weights (file or step directory)
    audio2lip: Any = None
    audio2lip_variables: Optional[Dict[str, Any]] = None
    audio2lip_target: str = "absolute"  # or "offset" (config.audio2lip.target)

    @property
    def size(self) -> int:
        return int(self.gen_config["size"])


def load_models(checkpoint: str, audio2lip: Optional[str] = None, need_audio2lip: bool = False) -> Models:
    """The generator of `checkpoint` (official .pt, launch.convert directory, training
    workdir or step directory) and an Audio2Lip: from `audio2lip` when given, else the
    checkpoint's own (a stage-4 run), else none (an error when `need_audio2lip`)."""
    from edtalk_jax import checkpointing, initialize
    from edtalk_jax.run_config import ConfigError

    gen, variables, cfg, where = initialize.load_generator(checkpoint, "--checkpoint")
    models = Models(gen, variables, cfg, where)
    path, field = audio2lip, "--audio2lip"
    if path is None:
        path, field = checkpoint, "--checkpoint"
        if checkpointing.resolve(checkpoint).kind not in ("workdir", "step"):
            if need_audio2lip:
                raise InferenceError(f"--checkpoint {checkpoint} holds no Audio2Lip: the lips come from "
                                     "audio, so give --audio2lip (Audio2Lip.pt or a stage-4 run)")
            return models
    try:
        models.audio2lip, models.audio2lip_variables, models.audio2lip_target = initialize.load_audio2lip(
            path, field)
    except ConfigError:
        if need_audio2lip or field == "--audio2lip":
            raise
        return models  # a run without an Audio2Lip (stages 1-3): none needed
    if models.audio2lip.lip_dim != gen.lip_dim:
        raise InferenceError(f"{field} {path}: predicts {models.audio2lip.lip_dim} lip coefficients, the "
                             f"generator of {checkpoint} has {gen.lip_dim}")
    return models


# ------------------------------------------------------------------ media
def read_image(path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB, EXIF orientation applied (OpenCV's default)."""
    import cv2

    name = video_io.display_path(path)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise InferenceError(f"{name}: cannot read ({e.strerror or e})") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InferenceError(f"{name}: not a readable image")
    return np.ascontiguousarray(bgr[..., ::-1])


def is_video(path: str) -> bool:
    return path.lower().endswith(video_io.VIDEO_EXTENSIONS)


def _detect_scaled(rgb_or_gray: np.ndarray, detector: str, max_side: int) -> np.ndarray:
    """Face (landmark) boxes in full-resolution pixels of an RGB or gray frame."""
    import cv2

    gray = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    boxes = faces.face_boxes(gray, faces.detect(gray, detector))
    return boxes * np.float32([w / gray.shape[1], h / gray.shape[0]] * 2)


def crop_image(rgb: np.ndarray, name: str, size: int, options: Options) -> np.ndarray:
    """The face of a photo as a uint8 (size, size, 3) crop (options.crop)."""
    if options.crop == "none":
        return resize_frames(rgb[None], size)[0]
    boxes = _detect_scaled(rgb, options.detector, PreprocessOptions.detect_max_side)
    if len(boxes) != 1:
        what = "no face found" if not len(boxes) else f"{len(boxes)} faces found; it must show one"
        raise faces.FaceError(f"{name}: {what} (crop it to one face, or pass crop none for a face crop)")
    crop = faces.square_crop(boxes[0], rgb.shape[1], rgb.shape[0], PreprocessOptions.enlargement)
    return faces.crop_resize(rgb, crop, size)


def video_crop(path: str, options: Options) -> faces.Crop:
    """One square for the whole video around its face track (keyframe detections
    tracked as in preprocessing); FaceError for no face or several at once."""
    popts = PreprocessOptions()
    info = video_io.probe(path)
    name = video_io.display_path(path)
    # Keyframes decoded straight to small grayscale (one swscale call), boxes scaled back.
    scale = min(1.0, popts.detect_max_side / max(info.width, info.height))
    small = (max(1, round(info.width * scale)), max(1, round(info.height * scale)))
    back = np.float32([info.width / small[0], info.height / small[1]] * 2)
    detections = []
    stream = video_io.FrameStream(path, stride=popts.detect_stride, size=small, gray=True)
    for k, gray in stream:
        detections.append((k, faces.face_boxes(gray, faces.detect(gray, options.detector)) * back))
    if not any(len(b) for _, b in detections):
        raise faces.FaceError(f"{name}: no face found in {len(detections)} sampled frames")
    tubes = faces.track(detections, popts.iou_threshold, popts.max_landmark_gap)
    # A face seen on one keyframe only is a false detection, not a second person.
    kept, num_faces = faces.select(tubes, min(popts.detect_stride + 1, stream.num_frames or 1))
    if num_faces > 1:
        raise faces.FaceError(f"{name}: {num_faces} faces at the same time; the driving video must "
                              "show one (crop it, or pass crop none for a face crop)")
    tube = max(kept or tubes, key=lambda t: t.score())
    return faces.square_crop(tube.union_box(), info.width, info.height, popts.enlargement)


def video_faces(path: str, size: int, options: Options) -> Iterator[np.ndarray]:
    """The video's face crops, uint8 (size, size, 3), one per 25 fps frame."""
    crop = video_crop(path, options) if options.crop == "auto" else None
    count = 0
    for _, rgb in video_io.iter_frames(path, fps=FPS):
        count += 1
        yield faces.crop_resize(rgb, crop, size) if crop else resize_frames(rgb[None], size)[0]
    if not count:
        raise video_io.VideoError(f"{video_io.display_path(path)}: no frames at {FPS} fps")


def load_audio(path: str) -> np.ndarray:
    """16 kHz mono float32 of at least one video frame; AudioError when silent or short."""
    wav = audio_lib.load_audio(path)
    name = video_io.display_path(path)
    if audio_lib.num_video_frames(len(wav)) < 1:
        raise audio_lib.AudioError(f"{name}: {len(wav) / audio_lib.SAMPLE_RATE:.3f} s of audio is shorter "
                                   f"than one video frame")
    if float(np.max(np.abs(wav))) < SILENCE_PEAK:
        raise audio_lib.AudioError(f"{name}: the audio is silent (peak below -80 dBFS)")
    return wav


def load_emotion(spec: str, exp_dim: int) -> np.ndarray:
    """(exp_dim,) float32 expression coefficients: an official name or a .npy file."""
    names = inference.predefined_emotions()
    if spec in names:
        value = names[spec]
    elif spec.endswith(".npy"):
        try:
            value = np.load(spec, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InferenceError(f"--emotion {spec}: cannot read as .npy ({e})") from None
        if not np.issubdtype(value.dtype, np.number):
            raise InferenceError(f"--emotion {spec}: holds {value.dtype}, not numbers")
    else:
        raise InferenceError(f"--emotion {spec!r}: not one of {', '.join(sorted(names))} and not a .npy file")
    value = np.asarray(value, np.float32).reshape(-1)
    if value.size != exp_dim:
        raise InferenceError(f"--emotion {spec}: {value.size} values, the model's expression space has {exp_dim}")
    if not np.isfinite(value).all():
        raise InferenceError(f"--emotion {spec}: holds NaN or infinite values")
    return value


# ------------------------------------------------------------------ time rules
def extend_indices(n: int, t: int, rule: str) -> np.ndarray:
    """Indices (t,) into a sequence of n frames covering t output frames:
    hold (official min(i, n-1)), pingpong (appending time-reversed copies: 0..n-1,
    n-1..0, 0..), loop (0..n-1, 0..)."""
    i = np.arange(t)
    if rule == "hold":
        return np.minimum(i, n - 1)
    if rule == "loop":
        return i % n
    if rule == "pingpong":
        j = i % (2 * n)
        return np.where(j < n, j, 2 * n - 1 - j)
    raise InferenceError(f"unknown extend rule {rule!r}; expected one of {EXTEND_RULES[1:]}")


def _prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterates `items` in a background thread, `depth` ahead (decode overlaps compute)."""
    q: queue.Queue = queue.Queue(depth)
    done = object()

    def work():
        try:
            for item in items:
                q.put((True, item))
        except BaseException as e:  # handed to the consumer, raised there
            q.put((False, e))
        q.put((True, done))

    threading.Thread(target=work, daemon=True).start()
    while True:
        ok, item = q.get()
        if not ok:
            raise item
        if item is done:
            return
        yield item


def _chunks(frames: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: List[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """The first axis padded to `size` with copies of the last row."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


class _Writer:
    """Encodes uint8 batches to an mp4 in a thread; `put` takes device arrays, so the
    conversion waits there, not in the loop that dispatches the next batch."""

    def __init__(self, path: str, audio: Optional[np.ndarray]):
        self.q: queue.Queue = queue.Queue(2)
        self.error: Optional[BaseException] = None
        self.writer = video_io.VideoWriter(path, fps=FPS, audio=audio)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    images, n = item
                    self.writer.write(metrics.to_uint8(np.asarray(images)[:n]))
                except BaseException as e:
                    self.error = e

    def put(self, images, n: int) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((images, n))

    def close(self, ok: bool) -> None:
        self.q.put(None)
        self.thread.join()
        if ok and self.error is None:
            self.writer.close()
        else:
            self.writer.container.close()
        if ok and self.error is not None:
            raise self.error


# ------------------------------------------------------------------ compute
class Renderer:
    """The jitted inference functions of one model, the weights passed as arguments."""

    def __init__(self, models: Models, batch_size: int):
        self.models, self.batch_size = models, batch_size
        gen = models.gen
        self.variables = jax.device_put(models.gen_variables)
        self.parts = gen.parts
        self._encode = jax.jit(lambda v, x: inference.encode_source(gen, v, x))
        self._coeffs = jax.jit(lambda v, latent: gen.apply(v, latent, method=Generator.coefficients))

        def render(v, source, alphas):
            return inference.drive(gen, v, source, **{f"{p}_alpha": a for p, a in alphas.items()})["image"]

        def relip(v, frames, given):
            source = inference.encode_source(gen, v, frames)
            own = gen.apply(v, source["latent"], method=Generator.coefficients)
            return render(v, source, dict(own, **given))

        self._render, self._relip = jax.jit(render), jax.jit(relip)
        if models.audio2lip is not None:
            a2l = models.audio2lip
            self.a2l_variables = jax.device_put(models.audio2lip_variables)
            self._a2l = jax.jit(lambda v, mel: a2l.apply(v, mel))

    def source(self, face: np.ndarray) -> Dict[str, Any]:
        """Encoded source (batch 1) plus its own coefficients under "alphas"."""
        enc = self._encode(self.variables, to_float(face[None]))
        return dict(enc, alphas=self._coeffs(self.variables, enc["latent"]))

    def video_coefficients(self, frames: Iterable[np.ndarray], parts, desc: str, progress: bool):
        """{part: (N, K) numpy} of a stream of uint8 face crops (one encoder pass each)."""
        from tqdm import tqdm

        out: Dict[str, List[np.ndarray]] = {p: [] for p in parts}
        bar = tqdm(desc=desc, unit="frame", disable=not progress, leave=False)
        for chunk in _prefetch(_chunks(frames, self.batch_size)):
            n = len(chunk)
            enc = self._encode(self.variables, to_float(_pad(chunk, self.batch_size)))
            alphas = self._coeffs(self.variables, enc["latent"])
            for p in parts:
                out[p].append(np.asarray(alphas[p])[:n])
            bar.update(n)
        bar.close()
        return {p: np.concatenate(v) for p, v in out.items()}

    def audio_lips(self, wav: np.ndarray, smooth: bool) -> np.ndarray:
        """(T, L) Audio2Lip output of the audio's T whole frames (official mel windows),
        smoothed over time when asked."""
        windows = audio_lib.mel_windows(wav)
        chunk = min(256, 1 << (len(windows) - 1).bit_length())  # few shapes, little padding
        outs = [np.asarray(self._a2l(self.a2l_variables, _pad(windows[i:i + chunk], chunk)))[:len(windows[i:i + chunk])]
                for i in range(0, len(windows), chunk)]
        lips = np.concatenate(outs)
        return np.asarray(inference.smooth_coefficients(lips)) if smooth else lips

    def render(self, writer: _Writer, source, alphas: Dict[str, np.ndarray], t: int, progress: bool,
               frames: Optional[np.ndarray] = None) -> None:
        """Renders t frames from per-frame `alphas` {part: (t, K)}: from one encoded source,
        or (re-lipping) from `frames` (t, S, S, 3) uint8, each its own source and driver."""
        from tqdm import tqdm

        b = self.batch_size
        bar = tqdm(total=t, desc="render", unit="frame", disable=not progress)
        for i in range(0, t, b):
            n = min(b, t - i)
            chunk = {p: _pad(a[i:i + n], b) for p, a in alphas.items()}
            if frames is None:
                images = self._render(self.variables, source, chunk)
            else:
                images = self._relip(self.variables, to_float(_pad(frames[i:i + n], b)), chunk)
            writer.put(images, n)
            bar.update(n)
        bar.close()


def _atomic_target(out: str) -> str:
    directory = os.path.dirname(os.path.abspath(out)) or "."
    if not os.path.isdir(directory):
        raise InferenceError(f"--out {out}: the directory {directory} does not exist")
    stem, ext = os.path.splitext(os.path.basename(out))
    if ext.lower() not in (".mp4", ".mov", ".mkv"):
        raise InferenceError(f"--out {out}: expected an .mp4 (or .mov/.mkv) file name")
    return os.path.join(directory, f".{stem}.tmp{os.getpid()}{ext}")


@dataclasses.dataclass
class Inputs:
    """What drives the video (module docstring); paths as the user gave them."""
    source: str
    audio: Optional[str] = None
    lip_video: Optional[str] = None
    pose_video: Optional[str] = None
    exp_video: Optional[str] = None
    exp_image: Optional[str] = None
    emotion: Optional[str] = None

    @property
    def relip(self) -> bool:
        return is_video(self.source)

    @property
    def lips_from_audio(self) -> bool:
        return self.lip_video is None

    def check(self, models: Models) -> None:
        exp_given = self.exp_flags()
        if len(exp_given) > 1:
            raise InferenceError(f"give at most one of {', '.join(exp_given)}")
        if exp_given and "exp" not in models.gen.parts:
            raise InferenceError(f"{exp_given[0]}: the lip-pose model ({models.where}) has no expression "
                                 "space; use EDTalk.pt for expressions")
        if self.relip and (self.lip_video or self.pose_video):
            raise InferenceError("re-lipping a video (--source VIDEO) takes the pose from the video itself: "
                                 "--lip-video and --pose-video do not apply")
        if self.relip and self.audio is None:
            raise InferenceError(f"--source {self.source} is a video: re-lipping it needs --audio")
        if self.lip_video is None and self.audio is None:
            raise InferenceError("nothing drives the lips: give --audio (EDTalk-A) or --lip-video (EDTalk-V)")
        for field in ("source", "audio", "lip_video", "pose_video", "exp_video", "exp_image"):
            path = getattr(self, field)
            if path is not None and not os.path.isfile(path):
                raise InferenceError(f"--{field.replace('_', '-')} {video_io.display_path(path)}: no such file")
        if self.lips_from_audio and models.audio2lip is None:
            raise InferenceError("the lips come from --audio but no Audio2Lip is loaded (give --audio2lip)")

    def exp_flags(self) -> List[str]:
        return [f"--{n.replace('_', '-')}" for n in ("exp_video", "exp_image", "emotion")
                if getattr(self, n) is not None]

    def mode(self, models: Models) -> str:
        if self.relip:
            return "relip"
        if "exp" not in models.gen.parts:
            return "lip-pose-A" if self.lips_from_audio else "lip-pose-V"
        exp = self.exp_flags()
        return ("EDTalk-A" if self.lips_from_audio else "EDTalk-V") + (
            f" ({exp[0][2:]})" if exp else " (source expression)")


@dataclasses.dataclass
class Job:
    """A video ready to render: T frames of coefficients and what they are applied to."""
    t: int
    alphas: Dict[str, np.ndarray]  # part -> (T, K); a relip job lacks the parts its frames give
    source: Optional[Dict[str, Any]]  # the encoded source face (batch 1), or None (relip)
    frames: Optional[np.ndarray]  # relip: (T, S, S, 3) uint8, each frame its own source
    audio: Optional[np.ndarray]  # 16 kHz track to mux, T * 640 samples, or None
    extend: Dict[str, str]  # part -> the rule that extended its driver


def prepare(renderer: Renderer, inputs: Inputs, options: Options) -> Job:
    """Decodes, crops and encodes every input into per-frame coefficients (module docstring)."""
    models = renderer.models
    gen, size = models.gen, models.size
    progress = options.progress
    wav = load_audio(inputs.audio) if inputs.audio is not None else None
    videos: Dict[str, List[str]] = {}  # one encoder pass per video, whatever it drives
    for part, path in (("lip", inputs.lip_video), ("pose", inputs.pose_video), ("exp", inputs.exp_video)):
        if path:
            videos.setdefault(path, []).append(part)
    coeffs: Dict[str, np.ndarray] = {}
    for path, parts in videos.items():
        coeffs.update(renderer.video_coefficients(video_faces(path, size, options), parts,
                                                  f"encode {os.path.basename(path)}", progress))
    frames = src = None
    if inputs.relip:
        frames = np.stack(list(video_faces(inputs.source, size, options)))
        own = renderer.source(frames[0])["alphas"]
    else:
        face = crop_image(read_image(inputs.source), video_io.display_path(inputs.source), size, options)
        src = renderer.source(face)
        own = src.pop("alphas")
    own = {p: np.asarray(a) for p, a in own.items()}

    if inputs.lips_from_audio:
        coeffs["lip"] = renderer.audio_lips(wav, options.smooth)
        if models.audio2lip_target == "offset":
            coeffs["lip"] = coeffs["lip"] + own["lip"]
    t = len(coeffs["lip"])
    alphas, extend = {"lip": coeffs["lip"]}, {}
    if "pose" in coeffs:
        rule = options.pose_extend
        if rule == "auto":  # official: demo_lip_pose ping-pongs, EDTalk-A/V hold the last frame
            rule = "pingpong" if (inputs.lips_from_audio and "exp" not in gen.parts) else "hold"
        alphas["pose"] = coeffs["pose"][extend_indices(len(coeffs["pose"]), t, rule)]
        extend["pose"] = rule
    if "exp" in coeffs:
        exp = coeffs["exp"]
        if len(exp) > options.exp_trim_end:
            exp = exp[:len(exp) - options.exp_trim_end]
        rule = "pingpong" if options.exp_extend == "auto" else options.exp_extend
        alphas["exp"] = exp[extend_indices(len(exp), t, rule)]
        extend["exp"] = rule
    elif inputs.exp_image is not None:
        face = crop_image(read_image(inputs.exp_image), video_io.display_path(inputs.exp_image), size, options)
        alphas["exp"] = np.repeat(np.asarray(renderer.source(face)["alphas"]["exp"]), t, axis=0)
    elif inputs.emotion is not None:
        alphas["exp"] = np.repeat(load_emotion(inputs.emotion, gen.exp_dim)[None], t, axis=0)
    if inputs.relip:
        frames = frames[extend_indices(len(frames), t, "pingpong")]
        extend["source"] = "pingpong"
    else:
        for p in gen.parts:  # parts nothing drives keep the source's own
            alphas.setdefault(p, np.repeat(own[p], t, axis=0))
    return Job(t, alphas, src, frames, _audio_track(inputs, wav, t, options), extend)


def _audio_track(inputs: Inputs, wav: Optional[np.ndarray], t: int, options: Options) -> Optional[np.ndarray]:
    """The driving audio, else the lip video's own track, cut or padded to T frames."""
    if wav is not None:
        seconds = len(wav) / audio_lib.SAMPLE_RATE
        if not inputs.lips_from_audio and abs(seconds - t / FPS) > options.max_length_mismatch:
            raise InferenceError(
                f"--audio {inputs.audio} lasts {seconds:.2f} s, --lip-video {inputs.lip_video} {t / FPS:.2f} s "
                f"({t} frames): more than {options.max_length_mismatch:g} s apart")
        return audio_lib.crop_pad_audio(wav, t)
    if inputs.lip_video is not None and video_io.probe(inputs.lip_video).has_audio:
        try:
            return audio_lib.crop_pad_audio(audio_lib.load_audio(inputs.lip_video), t)
        except audio_lib.AudioError as e:
            log.warning("%s: its audio track is not muxed (%s)", inputs.lip_video, e)
    return None


def write(renderer: Renderer, job: Job, out: str, progress: bool = True) -> None:
    """Renders the job into `out`, which appears only when complete."""
    tmp = _atomic_target(out)
    writer = _Writer(tmp, job.audio)
    ok = False
    try:
        renderer.render(writer, job.source, job.alphas, job.t, progress, frames=job.frames)
        ok = True
    finally:
        try:
            writer.close(ok)
        finally:
            if not ok and os.path.exists(tmp):
                os.remove(tmp)
    os.replace(tmp, out)


def run(models: Models, inputs: Inputs, out: str, options: Options = Options()) -> dict:
    """Renders one talking-head video (module docstring) to `out`; returns a summary."""
    options.check()
    inputs.check(models)
    _atomic_target(out)  # a bad --out fails before any work
    start = time.perf_counter()
    renderer = Renderer(models, options.batch_size)
    job = prepare(renderer, inputs, options)
    write(renderer, job, out, options.progress)
    seconds = time.perf_counter() - start
    return {"out": out, "mode": inputs.mode(models), "checkpoint": models.where, "size": models.size,
            "frames": job.t, "seconds": round(seconds, 3), "frames_per_s": round(job.t / seconds, 3),
            "extend": job.extend, "audio": job.audio is not None,
            "smoothed": bool(inputs.lips_from_audio and options.smooth)}
