"""Raw talking-head video -> schema clips: the one function every runner calls.

`process(item, options)` (and its streaming form `iter_clips`) does, for one video:
  1. audio: the separate audio file or the video's own track, 16 kHz mono, shifted by
     the container's audio/video start offset, decoded and resampled in chunks into a
     temporary file (audio.SpooledAudio; fails fast before any video work);
  2. pass 1: decode at 25 fps by timestamps, upright and in square pixels (display
     matrix, sample aspect ratio; a timestamp hole longer than `max_timestamp_gap`
     cuts every track and is reported, never filled with a held frame: video_io),
     detect faces every `detect_stride` frames on grayscale frames downscaled to
     `detect_max_side` (boxes refined to their landmarks' bounding boxes, see
     data_pipeline.preprocess.faces), track FOMM tubes, keep one
     face at a time (the largest/most persistent) and cut where it is lost for longer
     than `max_landmark_gap` frames; with the identity check (`identity_seconds`), each
     track is described with dlib's face descriptor along the way and split where the
     person changes, and clips of other people than the video's main person get
     speaker labels of their own (data_pipeline.preprocess.identity);
  3. pass 2: decode again, crop each kept frame to a square around the union of the
     face boxes over its clip (`crop_span="clip"`) or over the whole track ("tube", as
     FOMM and the official scripts; on long videos the head's wanderings make the face
     small), resize to `size`, 68 landmarks in crop pixels (rows inside detection gaps
     linearly interpolated, landmark_valid=False), JPEG;
  4. cut each face segment into clips of `clip_seconds` (a shorter last one kept when at
     least `min_clip_seconds`), each with its own audio (T * 640 samples) and mel windows.
Two decoding passes keep memory bounded (pass 1 keeps boxes, a descriptor per track
and `identity_seconds`, and the small frames of the last `identity_seconds`; pass 2 one
clip of JPEGs; the audio is read back from its file a clip at a time): a 20-minute video
streams. Bad input (VideoError, AudioError, FaceError and this module's skips) never
raises: it becomes a skip with a reason "<kind>: <details>" in `ProcessResult.skipped`.
Any other exception is a bug (or a full disk) and propagates, naming the video.

data_pipeline.preprocess.runner runs `process` over a process pool, one shard per video,
resumable, and stops when more than `max_failure_rate` of the videos are skipped whole.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np

from data_pipeline.preprocess import audio, faces, identity, video_io
from data_pipeline.records import schema
from data_pipeline.records.schema import FPS, SAMPLES_PER_FRAME


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One raw video to preprocess (picklable: it travels to pool and Beam workers)."""

    path: str  # file system path (str; non-UTF-8 names as os.fsdecode gives them)
    key: str  # unique, file-system safe: the shard name and the clip_id prefix
    dataset: str = "folder"
    speaker: str = ""
    emotion: str = ""  # one of schema.EMOTIONS or ""
    level: int = 0  # MEAD intensity 1..3, 0 unknown
    audio_path: Optional[str] = None  # separate audio file; None: the video's own track
    source: str = ""  # printable relative path, for the clips' meta "source"


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    size: int = 256  # crop side in pixels
    clip_seconds: float = 5.0  # official HDTF split length
    min_clip_seconds: float = 1.0  # a shorter last piece of a segment is dropped
    jpeg_quality: int = schema.JPEG_QUALITY  # measured choice (schema.py); the official LMDB used 75
    detector: str = "dlib"  # dlib (HOG), haar, or auto (dlib, Haar where dlib finds none)
    detect_stride: int = 5  # detect faces every n-th frame (boxes interpolated between)
    detect_max_side: int = 640  # frames downscaled to this longest side for detection (official)
    iou_threshold: float = 0.25  # FOMM: IoU with the tube's initial box to stay in the tube
    enlargement: float = 0.1  # FOMM `increase`: crop margin on each side
    crop_span: str = "clip"  # square around the face's boxes over each "clip", or the whole "tube" (official)
    max_landmark_gap: int = 15  # frames without a detection interpolated; longer gaps cut
    max_timestamp_gap: float = 0.25  # seconds between source frames beyond which a hole cuts the clip
    multi_face: str = "largest"  # several faces at once: keep the largest, or "skip" the video
    short_audio: str = "trim"  # audio shorter than video: "trim" the frames, or "skip"
    allow_silent: bool = False  # videos without audio: silent clips instead of a skip
    max_seconds: Optional[float] = None  # only the first seconds of each video (quick runs)
    max_failure_rate: float = 0.2  # run_local stops when more of the videos are skipped whole
    identity_seconds: Optional[float] = 1.0  # describe each face track this often (None: no identity check)
    identity_threshold: float = identity.THRESHOLD  # descriptor distance: different people above it

    def validate(self) -> "PreprocessOptions":
        if self.detector not in ("dlib", "haar", "auto"):
            raise ValueError(f"detector={self.detector!r}: expected dlib, haar or auto")
        if self.multi_face not in ("largest", "skip"):
            raise ValueError(f"multi_face={self.multi_face!r}: expected largest or skip")
        if self.crop_span not in ("clip", "tube"):
            raise ValueError(f"crop_span={self.crop_span!r}: expected clip or tube")
        if self.short_audio not in ("trim", "skip"):
            raise ValueError(f"short_audio={self.short_audio!r}: expected trim or skip")
        if self.detect_stride < 1 or self.max_landmark_gap < self.detect_stride - 1:
            raise ValueError("need detect_stride >= 1 and max_landmark_gap >= detect_stride - 1")
        if not 0 < self.min_clip_seconds <= self.clip_seconds:
            raise ValueError("need 0 < min_clip_seconds <= clip_seconds")
        if not self.max_timestamp_gap > 0:
            raise ValueError(f"max_timestamp_gap={self.max_timestamp_gap}: expected > 0 seconds")
        if not 0 <= self.max_failure_rate <= 1:
            raise ValueError(f"max_failure_rate={self.max_failure_rate}: expected 0..1")
        if self.identity_seconds is not None and not self.identity_seconds > 0:
            raise ValueError(f"identity_seconds={self.identity_seconds}: expected > 0 or None (no check)")
        if not self.identity_threshold > 0:
            raise ValueError(f"identity_threshold={self.identity_threshold}: expected > 0")
        if self.size < 16 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"size={self.size} (>= 16) or jpeg_quality={self.jpeg_quality} (1..100)")
        return self

    @property
    def clip_frames(self) -> int:
        return max(1, int(round(self.clip_seconds * FPS)))

    @property
    def min_clip_frames(self) -> int:
        return max(1, int(round(self.min_clip_seconds * FPS)))

    @property
    def identity_frames(self) -> int:
        """Frames between two descriptors of a face track (at least one keyframe)."""
        return max(self.detect_stride, int(round(self.identity_seconds * FPS)))


@dataclasses.dataclass
class ProcessResult:
    key: str
    clips: List[dict] = dataclasses.field(default_factory=list)
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (what, reason)
    stats: dict = dataclasses.field(default_factory=dict)


class _Skip(Exception):
    """The whole video is skipped; the message is the reason."""


class _Timer:
    def __init__(self, stats: dict):
        self.seconds = stats.setdefault("seconds", collections.defaultdict(float))

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - t

    def iterate(self, name: str, iterable):
        it = iter(iterable)
        while True:
            with self(name):
                value = next(it, StopIteration)
            if value is StopIteration:
                return
            yield value


def process(item: VideoItem, options: PreprocessOptions) -> ProcessResult:
    """All clips of one video (see the module docstring); never raises for bad input."""
    result = ProcessResult(item.key)
    result.clips = list(iter_clips(item, options, result))
    return result


def iter_clips(item: VideoItem, options: PreprocessOptions, result: ProcessResult) -> Iterator[dict]:
    """Yields the clips of one video as they are completed; skips and stats go to `result`.

    Only the named data errors (VideoError, AudioError, FaceError and the skips this
    module decides) become a skip of the video; anything else is a bug or an environment
    failure and propagates, with a note naming the video.
    """
    options.validate()
    start = time.perf_counter()
    try:
        yield from _clips(item, options, result, _Timer(result.stats))
    except _Skip as e:
        result.skipped.append((item.key, str(e)))
    except (video_io.VideoError, audio.AudioError, faces.FaceError) as e:
        result.skipped.append((item.key, _reason(e)))
    except Exception as e:
        e.add_note(f"while preprocessing {item.source or video_io.display_path(item.path)} (key {item.key})")
        raise
    result.stats["seconds"] = dict(result.stats.get("seconds", {}), total=time.perf_counter() - start)
    result.stats["clips"] = result.stats.get("clips", 0)


def _reason(e: Exception) -> str:
    kind = {video_io.VideoError: "bad video", audio.AudioError: "bad audio", faces.FaceError: "face"}
    return f"{kind[type(e)]}: {e}"


def _load_audio(item: VideoItem, info: video_io.VideoInfo, options: PreprocessOptions, timer):
    """16 kHz mono aligned with video frame 0 (an audio.SpooledAudio: decoded and resampled
    in chunks into a temporary file, so memory does not grow with the video's length), or
    None for an allowed silent video."""
    if item.audio_path is None and not info.has_audio:
        if options.allow_silent:
            return None
        raise _Skip("no audio: the video has no audio stream and no separate audio file "
                    "(allow_silent makes silent clips)")
    shift = 0
    if item.audio_path is None and abs(info.audio_offset) > 0.5 / audio.SAMPLE_RATE:
        shift = int(round(info.audio_offset * audio.SAMPLE_RATE))
    with timer("audio"):
        return audio.SpooledAudio(item.audio_path or item.path, offset=shift)


def _report_holes(item: VideoItem, stats: dict, result: ProcessResult) -> None:
    """Timestamp holes (video_io.FrameStream.gaps, in stats) as reported skips of their frames."""
    for a, b in stats.get("timestamp_gaps", []):
        result.skipped.append((f"{item.key}@{a / FPS:.2f}-{b / FPS:.2f}",
                               f"timestamp gap: no video frame for {(b - a) / FPS:.2f} s; the clip is cut "
                               "there (frames are not held across it)"))


def _cut_at_holes(tubes: List[faces.Tube], stream: video_io.FrameStream, stats: dict) -> List[faces.Tube]:
    """Splits face tubes at the stream's timestamp holes, so no clip spans one."""
    stats["timestamp_gaps"] = [list(g) for g in stream.gaps]
    if not stream.gaps:
        return tubes
    out = []
    for tube in tubes:
        for a, b in stream.segments():
            hits = {k: box for k, box in tube.hits.items() if a <= k < b}
            if hits:
                out.append(dataclasses.replace(
                    tube, first_box=hits[min(hits)], hits=hits,
                    descriptors={k: d for k, d in tube.descriptors.items() if a <= k < b}))
    return sorted(out, key=lambda t: t.start)


def _clips(item, options, result, timer) -> Iterator[dict]:
    info = video_io.probe(item.path)
    stats = result.stats
    stats.update(width=info.width, height=info.height, source_fps=round(info.fps, 3),
                 rotation=info.rotation, sample_aspect_ratio=round(info.sample_aspect_ratio, 4))
    wav = _load_audio(item, info, options, timer)

    # Pass 1: keyframe detections on small frames, tracked (and described) as they come.
    tubes, num_frames = _track_faces(item, info, options, timer, stats)
    stats["frames"] = num_frames
    _report_holes(item, stats, result)
    usable = num_frames
    if wav is not None:
        audio_frames = len(wav) // SAMPLES_PER_FRAME
        if audio_frames < num_frames:
            span = f"{item.key}@{audio_frames / FPS:.2f}-{num_frames / FPS:.2f}"
            why = f"audio shorter than video: {len(wav) / audio.SAMPLE_RATE:.2f} s < {num_frames / FPS:.2f} s"
            if options.short_audio == "skip":
                raise _Skip(why)
            result.skipped.append((span, why + ": frames after the audio dropped"))
            usable = audio_frames

    # Tubes -> one person per tube -> one face at a time -> segments.
    tubes = [t for t in (t.before(usable) for t in tubes) if t is not None]
    if options.identity_seconds is not None:
        whole = len(tubes)
        tubes = [part for t in tubes for part in identity.split(t, options.identity_threshold)]
        stats["identity_cuts"] = len(tubes) - whole
    kept, num_faces = faces.select(tubes, options.min_clip_frames)
    stats.update(faces=num_faces, tubes=len(tubes))
    if not stats["detections"]:
        raise _Skip(f"no face: none detected in {stats['keyframes']} keyframes")
    if num_faces > 1:
        if options.multi_face == "skip":
            raise _Skip(f"several faces: {num_faces} at the same time")
        stats["note"] = (f"several faces ({num_faces} at once): kept the largest, most persistent "
                         "one (see crops: x0, y0, side of each clip)")
    if not kept:
        raise _Skip(f"too short: no face track of at least {options.min_clip_seconds:g} s")
    speakers = _speakers(item, kept, options, stats)
    plans = [_Plan(t, info, options, speaker) for t, speaker in zip(kept, speakers)]
    stats["crops"] = [[c.x0, c.y0, c.side] for p in plans for c in p.crops]
    for plan in plans:
        for a, b in plan.dropped:
            result.skipped.append((f"{item.key}@{a / FPS:.2f}-{b / FPS:.2f}",
                                   f"too short: the face segment's last {b - a} frames"))

    # Pass 2: crop, landmarks, JPEG; emit clips as soon as their landmark rows are known.
    frames = video_io.FrameStream(item.path, max_seconds=options.max_seconds,
                                  max_gap=options.max_timestamp_gap)
    stats["clips"] = 0
    for k, rgb in timer.iterate("decode", frames):
        for plan in plans:
            if plan.start <= k <= plan.end:
                plan.add(k, rgb, timer)
            for i, a, b in plan.ready(k):
                yield _make_clip(item, options, plan, i, a, b, wav, timer, stats)
        if k >= plans[-1].end:
            break
    for plan in plans:
        for _, a, b, _ in plan.pending:
            result.skipped.append((f"{item.key}@{a / FPS:.2f}-{b / FPS:.2f}", "video ended early in pass 2"))
    stats["landmarks_interpolated"] = sum(p.interpolated for p in plans)


def _track_faces(item, info, options, timer, stats) -> Tuple[List[faces.Tube], int]:
    """Pass 1: (every face tube, with descriptors under the identity check; the number of
    output frames). Adds keyframes, detections and descriptors to `stats`."""
    scale = min(1.0, options.detect_max_side / max(info.width, info.height))
    small = (max(1, round(info.width * scale)), max(1, round(info.height * scale)))
    to_source = np.float32([info.width / small[0], info.height / small[1]] * 2)
    describer = None
    if options.identity_seconds is not None:  # descriptors need colour: decode RGB
        describer = identity.Describer(options.identity_frames, options.identity_threshold)
    stream = video_io.FrameStream(item.path, stride=options.detect_stride, size=small,
                                  gray=describer is None, max_seconds=options.max_seconds,
                                  max_gap=options.max_timestamp_gap)
    tracker = faces.Tracker(options.iou_threshold, options.max_landmark_gap)
    keyframes = detections = 0
    for k, frame in timer.iterate("decode", stream):
        gray = frame if describer is None else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        with timer("detect"):
            points = faces.face_points(gray, faces.detect(gray, options.detector))
        found, closed = tracker.update(k, faces.points_boxes(points) * to_source)
        keyframes, detections = keyframes + 1, detections + len(points)
        if describer is not None:
            with timer("identity"):
                describer.close(closed)
                describer.add(k, frame, list(zip(found, points)))
    if describer is not None:
        with timer("identity"):
            describer.close(tracker.open)
        stats["descriptors"] = describer.count
    stats.update(keyframes=keyframes, detections=detections)
    return _cut_at_holes(tracker.tubes(), stream, stats), stream.num_frames


def _speakers(item, kept: List[faces.Tube], options, stats) -> List[str]:
    """The speaker label of each kept tube: the item's for the video's main person (the
    most frames), "<speaker>+<key>.<n>" for the n-th other person (identity.people,
    identity.speaker_label); the item's for all without the identity check. Each
    person's frames and mean descriptor go to stats["persons"] (cross-video checks)."""
    if options.identity_seconds is None:
        return [item.speaker] * len(kept)
    person = identity.people(kept, options.identity_threshold)
    labels = [identity.speaker_label(item.speaker, item.key, p) for p in person]
    stats["persons"] = []
    for p in range(max(person) + 1):
        tubes = [t for t, q in zip(kept, person) if q == p]
        described = [d for t in tubes for d in t.descriptors.values()]
        mean = np.mean(described, 0).round(4).tolist() if described else None
        stats["persons"].append({"speaker": labels[person.index(p)], "frames": sum(t.num_frames for t in tubes),
                                 "descriptors": len(described), "descriptor": mean})
    return labels


class _Plan:
    """One kept face tube: its speaker label, clip ranges and their crops, per-frame
    boxes, and the landmark rows so far (in source pixels, so a gap may span clips with
    other crops)."""

    def __init__(self, tube: faces.Tube, info: video_io.VideoInfo, options: PreprocessOptions,
                 speaker: str):
        self.options, self.speaker = options, speaker
        self.boxes = faces.box_schedule(tube, options.detect_stride)
        self.start, self.end = tube.start, tube.end
        self.step = step = options.clip_frames
        ranges = [(a, min(a + step, self.end + 1)) for a in range(self.start, self.end + 1, step)]
        clips = [r for r in ranges if r[1] - r[0] >= options.min_clip_frames]  # never empty
        self.dropped = [r for r in ranges if r[1] - r[0] < options.min_clip_frames]
        self.clip_end = clips[-1][1]
        # Gap frames (no box): the detected frames around them, whose rows they interpolate.
        self.prev_hit: Dict[int, int] = {}
        self.next_hit: Dict[int, int] = {}
        for k in range(self.start, self.end + 1):
            if self.boxes[k] is None:
                self.prev_hit[k] = self.prev_hit.get(k - 1, k - 1)
        for k in range(self.end, self.start - 1, -1):
            if self.boxes[k] is None:
                self.next_hit[k] = self.next_hit.get(k + 1, k + 1)
        if options.crop_span == "tube":
            tube_crop = faces.square_crop(tube.union_box(), info.width, info.height, options.enlargement)
            self.crops = [tube_crop] * len(clips)
        else:
            self.crops = [self._clip_crop(a, b, info) for a, b in clips]
        # (clip index, a, b, frame after which the clip is complete), in order.
        self.pending = collections.deque(
            (i, a, b, max([b - 1] + [self.next_hit.get(j, j) for j in range(a, b)]))
            for i, (a, b) in enumerate(clips))
        self.rows: Dict[int, np.ndarray] = {}
        self.jpegs: Dict[int, bytes] = {}
        self.interpolated = 0

    def _clip_crop(self, a: int, b: int, info: video_io.VideoInfo) -> faces.Crop:
        """The square around the union of the clip's boxes (and of the hits around its gaps)."""
        frames = set(range(a, b))
        frames |= {self.prev_hit[j] for j in range(a, b) if j in self.prev_hit}
        frames |= {self.next_hit[j] for j in range(a, b) if j in self.next_hit}
        boxes = [self.boxes[k] for k in frames if self.boxes[k] is not None]
        return faces.square_crop(faces.union(boxes), info.width, info.height, self.options.enlargement)

    def add(self, k: int, rgb: np.ndarray, timer) -> None:
        size = self.options.size
        # Frames after the last clip (a dropped tail) only give gap endpoints: last crop.
        crop = self.crops[min((k - self.start) // self.step, len(self.crops) - 1)]
        with timer("crop"):
            face = faces.crop_resize(rgb, crop, size)
        box = self.boxes[k]
        if box is not None:
            with timer("landmarks"):
                gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
                seed = crop.to_crop(faces.predictor_box(box).reshape(2, 2), size).reshape(4)
                rows = faces.landmarks(gray, seed)
                self.rows[k] = crop.from_crop(rows, size)
        if k < self.clip_end:
            with timer("jpeg"):
                self.jpegs[k] = _encode_jpeg(face, self.options.jpeg_quality)

    def ready(self, k: int) -> List[Tuple[int, int, int]]:
        """(clip index, a, b) of the clips whose frames and rows are all known after frame k."""
        done = []
        while self.pending and self.pending[0][3] <= k:
            done.append(self.pending.popleft()[:3])
        return done

    def landmarks(self, i: int, a: int, b: int) -> Tuple[np.ndarray, np.ndarray]:
        """Rows (b - a, 68, 2) in clip i's crop pixels, gap rows interpolated; the valid mask."""
        valid = np.array([self.boxes[j] is not None for j in range(a, b)])
        lo, hi = self.prev_hit.get(a, a), self.next_hit.get(b - 1, b - 1)
        span = range(lo, hi + 1)
        known = np.array([j in self.rows for j in span])
        rows = np.stack([self.rows.get(j, np.zeros((68, 2), np.float32)) for j in span])
        rows = faces.fill_gaps(rows, known)[a - lo : b - lo]
        self.interpolated += int((~valid).sum())
        for j in [j for j in self.rows if j < b - self.options.max_landmark_gap - 1]:
            del self.rows[j]  # too far behind to be the start of a later clip's gap
        return self.crops[i].to_crop(rows, self.options.size), valid


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from data_pipeline.records import shards

    return shards.encode_jpeg(rgb, quality)


def _make_clip(item, options, plan: _Plan, i: int, a: int, b: int, wav, timer, stats) -> dict:
    t = b - a
    rows, valid = plan.landmarks(i, a, b)
    if wav is None:
        pcm = np.zeros(t * SAMPLES_PER_FRAME, np.float32)
    else:
        pcm = wav[a * SAMPLES_PER_FRAME : b * SAMPLES_PER_FRAME]
    with timer("mel"):
        mel = audio.mel_windows(pcm, num_frames=t)
    stats["clips"] += 1
    clip = {
        "frames": [plan.jpegs.pop(j) for j in range(a, b)],
        "mel_windows": mel,
        "landmarks": rows.astype(np.float32),
        "landmark_valid": valid,
        "audio": audio.wav_to_int16(pcm),
        "factors": np.zeros((t, 0), np.float32),
        "meta": schema.make_meta(
            dataset=item.dataset, speaker=plan.speaker, clip_id=f"{item.key}#{stats['clips']}",
            emotion=item.emotion, level=item.level, fps=float(FPS),
            source=f"{item.source}@{a / FPS:.2f}-{b / FPS:.2f}", num_frames=t, size=options.size,
            factor_names=""),
    }
    schema.validate_clip(clip, f"{item.key} clip {stats['clips']}")
    return clip


# --- the local runner -------------------------------------------------------------------
