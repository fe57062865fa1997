"""Who is who in a video: dlib face descriptors along face tracks.

IoU tracking links a cut to another person framed at the same place (an interview) into
one track, and every clip used to get the video's speaker. Here each track is described
with dlib's 128-d face descriptor (`dlib_face_recognition_resnet_model_v1.dat`, shipped
offline by face_recognition_models; the same network `launch.evaluate` scores identity
with), and:
  - `Describer` (during pass 1 of preprocessing) describes every track at its first hit,
    then again once `every` frames have passed since its last descriptor, and at its last
    hit. When a descriptor is farther than `threshold` from the previous one, the hits in
    between (their small frames are held, at most `every` frames' worth) are bisected, so
    a cut is located to the keyframe;
  - `segments` splits a track's descriptor sequence where the identity changes: a
    descriptor farther than `threshold` from the running mean of the current segment
    starts a new segment when the next descriptor is far too (or none follows); a lone
    far descriptor between near ones is an outlier (a blurred or turned face), ignored;
  - `split` cuts a track into one track per segment; the hits between two segments
    (never described: unknown person; none when bisection found the cut) are dropped;
  - `people` groups a video's kept tracks into persons (mean descriptors within
    `threshold`), the person with the most frames first; `speaker_label` names them;
  - `speaker_conflicts` (also `python -m data_pipeline.preprocess.identity DIR/report.json`) checks
    labels across videos from the persons' mean descriptors in a preprocessing report.

Distances are Euclidean between descriptors. dlib documents 0.6 as its same-person
threshold; the default here is 0.5, from the sample media (6 people, 4 videos described
once a second, 2 stills; edtalk_samples): one person's frame to the mean of its other
frames <= 0.40 (frame to frame <= 0.59, an expressive face), halves of one video 0.09-0.23
apart; two different people frame to mean >= 0.597 (frame to frame >= 0.593), mean to
mean >= 0.634. At 0.6 the closest pair of different people (mouth_source and
expression_source) would be one person.

Another person on screen only between two descriptors of a track (a cutaway shorter
than `every` frames, framed like the main person) is not seen: `every` bounds the
length of a missed cutaway.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from data_pipeline.preprocess import faces

DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
THRESHOLD = 0.5  # descriptor distance above which two faces are different people (docstring)


def descriptor_path() -> str:
    """dlib's face recognition ResNet, beside the 68-point model in face_recognition_models."""
    path = os.path.join(os.path.dirname(faces.predictor_path()), DESCRIPTOR_MODEL)
    if not os.path.exists(path):
        raise faces.FaceError(f"dlib face recognition model missing: {path}")
    return path


@functools.lru_cache(maxsize=None)
def _encoder():
    import dlib

    return dlib.face_recognition_model_v1(descriptor_path())


def descriptor(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(128,) float32 dlib descriptor of the face with 68 landmarks `points` (x, y) in the
    pixels of the uint8 RGB image `rgb` (the face chip is aligned by the landmarks alone)."""
    import dlib

    pts = [dlib.point(int(round(float(x))), int(round(float(y)))) for x, y in points]
    lo, hi = np.min(points, 0), np.max(points, 0)
    rect = dlib.rectangle(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
    shape = dlib.full_object_detection(rect, pts)
    return np.asarray(_encoder().compute_face_descriptor(np.ascontiguousarray(rgb), shape), np.float32)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


class Describer:
    """Fills `tube.descriptors` ({keyframe: descriptor}) while keyframes stream by.

    Call `add` once per keyframe, in order, with every tracked face of the frame; `close`
    with the tubes that will get no more hits (tracker-closed, or all at the end)."""

    def __init__(self, every: int, threshold: float = THRESHOLD):
        self.every, self.threshold = every, threshold
        self.count = 0  # descriptors computed
        # Per open tube: its hits since its last descriptor, (k, rgb, points).
        self._held: Dict[int, Tuple[faces.Tube, List[tuple]]] = {}

    def add(self, k: int, rgb: np.ndarray, found: Sequence[Tuple[faces.Tube, np.ndarray]]) -> None:
        """`found`: (tube, 68 points in `rgb`'s pixels) of each face tracked at keyframe k."""
        for tube, points in found:
            _, held = self._held.setdefault(id(tube), (tube, []))
            held.append((k, rgb, points))
            last = max(tube.descriptors) if tube.descriptors else None
            if last is None or k - last >= self.every:
                self._describe_last(tube, held)

    def close(self, tubes: Sequence[faces.Tube]) -> None:
        for tube in tubes:
            entry = self._held.pop(id(tube), None)
            if entry is not None and entry[1]:
                self._describe_last(tube, entry[1])

    def _describe(self, tube: faces.Tube, k: int, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
        self.count += 1
        tube.descriptors[k] = descriptor(rgb, points)
        return tube.descriptors[k]

    def _describe_last(self, tube: faces.Tube, held: List[tuple]) -> None:
        """Describes the newest held hit; bisects the others when the person changed."""
        previous = tube.descriptors[max(tube.descriptors)] if tube.descriptors else None
        newest = self._describe(tube, *held[-1])
        if previous is not None and distance(newest, previous) > self.threshold:
            lo, hi = 0, len(held) - 1  # the first hit far from `previous` is in held[lo:hi + 1]
            while lo < hi:
                mid = (lo + hi) // 2
                if distance(self._describe(tube, *held[mid]), previous) > self.threshold:
                    hi = mid
                else:
                    lo = mid + 1
        held.clear()


def segments(described: Sequence[Tuple[int, np.ndarray]], threshold: float = THRESHOLD
             ) -> List[List[Tuple[int, np.ndarray]]]:
    """A track's (keyframe, descriptor) sequence, in keyframe order -> its runs of one
    person (the module docstring's rule); outliers are left out of every run."""
    if not described:
        return []
    runs = [[described[0]]]
    total = np.asarray(described[0][1], np.float64).copy()
    for i, (k, d) in enumerate(described[1:], 1):
        mean = total / len(runs[-1])
        if distance(d, mean) <= threshold:
            runs[-1].append((k, d))
            total += d
        elif i + 1 == len(described) or distance(described[i + 1][1], mean) > threshold:
            runs.append([(k, d)])
            total = np.asarray(d, np.float64).copy()
    return runs


def split(tube: faces.Tube, threshold: float = THRESHOLD) -> List[faces.Tube]:
    """One tube per person-run of `tube` (the tube itself when it has one run or no
    descriptor). A part holds the hits from its run's first described keyframe (the
    first part: the tube's start) to its run's last (the last part: the tube's end); the
    hits between two runs are dropped (nobody knows whose face they show)."""
    runs = segments(sorted(tube.descriptors.items()), threshold)
    if len(runs) <= 1:
        return [tube]
    parts = []
    for i, run in enumerate(runs):
        lo = run[0][0] if i else tube.start
        hi = run[-1][0] if i + 1 < len(runs) else tube.end
        hits = {k: b for k, b in tube.hits.items() if lo <= k <= hi}
        parts.append(faces.Tube(first_box=hits[lo], hits=hits, descriptors=dict(run)))
    return parts


def mean_descriptor(tube: faces.Tube) -> Optional[np.ndarray]:
    if not tube.descriptors:
        return None
    return np.mean(np.stack(list(tube.descriptors.values())), 0)


def people(tubes: Sequence[faces.Tube], threshold: float = THRESHOLD) -> List[int]:
    """Person index of each tube: tubes taken longest first join the person whose mean
    descriptor is nearest when within `threshold`, else start a new one; persons are then
    numbered by their frame count, most first (0: the video's main person). A tube
    without descriptor is a person of its own."""
    order = sorted(range(len(tubes)), key=lambda i: -tubes[i].num_frames)
    members: List[List[int]] = []
    sums: List[Optional[np.ndarray]] = []
    of = {}
    for i in order:
        d = mean_descriptor(tubes[i])
        near = [(distance(d, s / len(m)), p) for p, (m, s) in enumerate(zip(members, sums))
                if d is not None and s is not None]
        best = min(near, default=(np.inf, -1))
        if best[0] <= threshold:
            members[best[1]].append(i)
            sums[best[1]] = sums[best[1]] + d
        else:
            members.append([i])
            sums.append(None if d is None else np.asarray(d, np.float64))
        of[i] = best[1] if best[0] <= threshold else len(members) - 1
    frames = [sum(tubes[i].num_frames for i in m) for m in members]
    rank = {p: r for r, p in enumerate(sorted(range(len(members)), key=lambda p: (-frames[p], p)))}
    return [rank[of[i]] for i in range(len(tubes))]


def speaker_label(speaker: str, key: str, person: int) -> str:
    """The main person (0) keeps the item's speaker; person n >= 1 of video `key` is
    "<speaker>+<key>.<n + 1>": a label of its own (nobody knows who it is), whose part
    before "+" names the speaker it appeared with."""
    return speaker if person == 0 else f"{speaker}+{key}.{person + 1}"


def speaker_conflicts(statuses: Mapping[str, dict], threshold: float = THRESHOLD, limit: int = 100) -> dict:
    """Cross-video check of the people preprocessing found, from run_local's per-video
    statuses (report.json "items"; each video's stats["persons"]: speaker label and mean
    descriptor). Returns {"people": n, "apart": [...], "alike": [...]}, at most `limit`
    of each, the most telling first:
      apart: (speaker, key_a, key_b, distance) one label whose videos show people farther
             than `threshold` apart (an HDTF radio channel with two hosts, a misnamed
             file), farthest first;
      alike: (speaker_a, key_a, speaker_b, key_b, distance) two labels within `threshold`
             (one person under two names, or two look-alikes), nearest first.
    Labels are not changed: a wrong merge would pair one person with itself as "another
    speaker" in stage 2, so the findings are for a person to read."""
    rows = [(p["speaker"], key, p["descriptor"]) for key, st in sorted(statuses.items())
            for p in st.get("stats", {}).get("persons", []) if p.get("descriptor") is not None]
    if not rows:
        return {"people": 0, "apart": [], "alike": []}
    vectors = np.asarray([r[2] for r in rows], np.float64)
    labels = np.unique([r[0] for r in rows], return_inverse=True)[1]
    apart, alike = [], []
    for i in range(0, len(rows), 1024):  # a block of rows at a time: memory O(1024 n)
        rows_i = vectors[i:i + 1024]
        squared = (rows_i ** 2).sum(1)[:, None] + (vectors ** 2).sum(1)[None] - 2 * rows_i @ vectors.T
        dist = np.sqrt(np.maximum(squared, 0))
        same = labels[i:i + 1024, None] == labels[None]
        later = np.arange(len(rows))[None] > np.arange(i, i + len(dist))[:, None]
        for a, b in zip(*np.nonzero(later & same & (dist > threshold))):
            apart.append((rows[i + a][0], rows[i + a][1], rows[b][1], round(float(dist[a, b]), 4)))
        for a, b in zip(*np.nonzero(later & ~same & (dist <= threshold))):
            alike.append((rows[i + a][0], rows[i + a][1], rows[b][0], rows[b][1], round(float(dist[a, b]), 4)))
    return {"people": len(rows), "apart": sorted(apart, key=lambda r: -r[-1])[:limit],
            "alike": sorted(alike, key=lambda r: r[-1])[:limit]}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """python -m data_pipeline.preprocess.identity DIR/report.json: prints speaker_conflicts as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Cross-video speaker check of a launch.preprocess report")
    parser.add_argument("report", help="the report.json of launch.preprocess --output DIR")
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--limit", type=int, default=100, help="pairs listed of each kind")
    args = parser.parse_args(argv)
    with open(args.report) as f:
        items = json.load(f)["items"]
    print(json.dumps(speaker_conflicts(items, args.threshold, args.limit), indent=1))


if __name__ == "__main__":
    main()
