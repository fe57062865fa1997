"""identity: face descriptors on real faces; cut location, outliers, splitting, persons."""

import json

import cv2
import numpy as np
import pytest

from data_pipeline.preprocess import faces, identity, video_io


def _box(x=100, y=50, side=100):
    return np.float32([x, y, x + side, y + side])


def _people(monkeypatch, calls):
    """descriptor(rgb, points) -> the vector rgb stands for (tests pass vectors as frames)."""
    def fake(rgb, points):
        calls.append(int(points))
        return np.asarray(rgb, np.float32)
    monkeypatch.setattr(identity, "descriptor", fake)


A, B, X = np.zeros(4, np.float32), np.float32([1, 0, 0, 0]), np.float32([0, 0, 1, 0])  # X: an outlier


def _describe(who, every=25, stride=5, end=200):
    """A one-face tube with hits every `stride` frames, described by a Describer; who(k)
    is the descriptor at keyframe k. The points argument carries k (see _people)."""
    tube = faces.Tube(first_box=_box(), hits={})
    describer = identity.Describer(every, threshold=0.5)
    for k in range(0, end, stride):
        tube.hits[k] = _box()
        describer.add(k, who(k), [(tube, k)])
    describer.close([tube])
    return tube, describer


def test_a_cut_is_located_to_the_keyframe_by_bisection(monkeypatch):
    calls = []
    _people(monkeypatch, calls)
    tube, describer = _describe(lambda k: A if k <= 100 else B)
    # Every 25 frames, bisection between the near 100 and the far 125, the last hit at close.
    assert calls == [0, 25, 50, 75, 100, 125, 115, 110, 105, 150, 175, 195]
    assert describer.count == len(calls) and describer._held == {}
    parts = identity.split(tube, 0.5)
    assert [(p.start, p.end) for p in parts] == [(0, 100), (105, 195)]
    assert sorted(parts[1].hits) == list(range(105, 200, 5)) and np.array_equal(parts[1].first_box, _box())
    assert [list(p.descriptors) for p in parts] == [[0, 25, 50, 75, 100], [105, 110, 115, 125, 150, 175, 195]]


def test_a_lone_odd_face_is_an_outlier_not_a_cut(monkeypatch):
    _people(monkeypatch, [])
    tube, _ = _describe(lambda k: X if k == 50 else A)
    assert 50 in tube.descriptors
    (part,) = identity.split(tube, 0.5)
    assert part is tube
    runs = identity.segments(sorted(tube.descriptors.items()), 0.5)
    assert len(runs) == 1 and 50 not in dict(runs[0])


def test_a_new_face_at_the_end_of_a_track_is_cut_off(monkeypatch):
    _people(monkeypatch, [])
    tube, _ = _describe(lambda k: B if k >= 185 else A)  # after the last 1 s descriptor (175)
    assert [(p.start, p.end) for p in identity.split(tube, 0.5)] == [(0, 180), (185, 195)]


def test_segments_drop_the_undescribed_hits_between_two_people():
    tube = faces.Tube(first_box=_box(), hits={k: _box() for k in range(0, 100, 5)})
    tube.descriptors = {0: A, 25: A, 75: B, 95: B}  # who is at 30..70 is unknown
    parts = identity.split(tube, 0.5)
    assert [sorted(p.hits) for p in parts] == [[0, 5, 10, 15, 20, 25], [75, 80, 85, 90, 95]]
    assert identity.split(faces.Tube(first_box=_box(), hits={0: _box()}), 0.5)[0].descriptors == {}


def test_people_group_tracks_and_number_them_by_frames():
    def tube(start, n, d):
        return faces.Tube(first_box=_box(), hits={start: _box(), start + n - 1: _box()},
                          descriptors={start: d})
    tubes = [tube(0, 40, A), tube(40, 30, B), tube(70, 40, A + 0.1), tube(110, 5, X),
             faces.Tube(first_box=_box(), hits={200: _box()})]
    assert identity.people(tubes, 0.5) == [0, 1, 0, 2, 3]  # A: 80 frames, B 30, X 5, unknown 1
    labels = [identity.speaker_label("alice", "take1", p) for p in (0, 1, 2)]
    assert labels == ["alice", "alice+take1.2", "alice+take1.3"]
    # B alone for longer than A: B is the main person.
    assert identity.people([tube(0, 10, A), tube(10, 50, B)], 0.5) == [1, 0]


def test_tracker_reports_each_box_tube_and_closed_tubes():
    tracker = faces.Tracker(iou_threshold=0.25, max_gap=4)
    found, closed = tracker.update(0, np.stack([_box(0), _box(300)]))
    assert len(found) == 2 and found[0] is not found[1] and closed == []
    again, closed = tracker.update(5, np.stack([_box(302)]))
    assert again == [found[1]] and closed == []
    _, closed = tracker.update(10, np.zeros((0, 4), np.float32))
    assert closed == [found[0]]  # missed at 5 and 10: gap 9 > 4
    assert tracker.tubes() == found and found[1].before(5).hits.keys() == {0}
    assert found[1].before(0) is None


@pytest.fixture(scope="module")
def sample_descriptors(samples_dir):
    """Descriptors of the sample media's faces: two crops of one photo, a portrait, and
    frames of the two closest different people (mouth_source at 0, 1, 2 s;
    expression_source at 10 and 11 s, its frames nearest to the other)."""
    def still(name):
        rgb = cv2.cvtColor(cv2.imread(str(samples_dir / name)), cv2.COLOR_BGR2RGB)
        return [rgb]

    def video(name, seconds):
        stream = video_io.FrameStream(samples_dir / name, stride=25, max_seconds=max(seconds) + 1)
        return [rgb for k, rgb in stream if k // 25 in seconds]

    out = {}
    for name, frames in [("identity", still("identity_source.jpg")), ("crop", still("crop_identity_source.jpg")),
                         ("portrait", still("uncrop_face.jpg")), ("mouth", video("mouth_source.mp4", (0, 1, 2))),
                         ("expression", video("expression_source.mp4", (10, 11)))]:
        grays = [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) for rgb in frames]
        out[name] = np.stack([identity.descriptor(rgb, faces.landmarks(gray, faces.detect(gray)[0]))
                              for rgb, gray in zip(frames, grays)])
    return out


def test_descriptors_tell_people_apart_on_the_sample_faces(sample_descriptors):
    d = sample_descriptors
    assert d["identity"].shape == (1, 128) and d["identity"].dtype == np.float32
    assert identity.distance(d["identity"][0], d["crop"][0]) < 0.1  # one photo, two crops
    assert identity.distance(d["identity"][0], d["portrait"][0]) > 0.7
    mouth, expression = d["mouth"], d["expression"]
    assert len(mouth) == 3 and len(expression) == 2
    within = [identity.distance(m, np.delete(mouth, i, 0).mean(0)) for i, m in enumerate(mouth)]
    assert max(within) < identity.THRESHOLD - 0.1  # measured 0.15-0.30
    # Another person's frame to this person's mean: measured 0.592, one person at dlib's 0.6.
    assert identity.THRESHOLD < identity.distance(expression[0], mouth.mean(0)) < 0.6
    assert np.linalg.norm(mouth[:, None] - expression[None], axis=-1).min() > identity.THRESHOLD


def test_speaker_conflicts_across_videos(tmp_path, capsys):
    def status(*persons):
        return {"stats": {"persons": [{"speaker": s, "descriptor": list(map(float, d))} for s, d in persons]}}

    statuses = {
        "RD_Radio34_000": status(("RD_Radio34", A)), "RD_Radio34_001": status(("RD_Radio34", B)),  # two hosts
        "WDA_X_000": status(("WDA_X", X), ("WDA_X+WDA_X_000.2", A + 0.1)),  # A again, as a guest
        "WDA_Y_000": status(("WDA_Y", X + 0.2)),  # X under another name
        "bad": {"stats": {}}, "silent": status(("s", A))}
    statuses["silent"]["stats"]["persons"][0]["descriptor"] = None
    found = identity.speaker_conflicts(statuses, threshold=0.5)
    assert found["people"] == 5
    assert found["apart"] == [("RD_Radio34", "RD_Radio34_000", "RD_Radio34_001", 1.0)]
    assert found["alike"] == [("RD_Radio34", "RD_Radio34_000", "WDA_X+WDA_X_000.2", "WDA_X_000", 0.2),
                              ("WDA_X", "WDA_X_000", "WDA_Y", "WDA_Y_000", 0.4)]
    assert identity.speaker_conflicts({}) == {"people": 0, "apart": [], "alike": []}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"items": statuses}))
    identity.main([str(report), "--threshold", "0.3"])
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["alike"]) == 1 and printed["alike"][0][-1] == 0.2
