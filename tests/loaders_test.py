"""Stage loaders: layouts, sampling rules, determinism, workers, sharding, resume, skips."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import grain
import jax
import msgpack
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

import data_pipeline
from data_pipeline import loaders, synthetic
from data_pipeline.loaders import mouth_swap, stages, targets
from data_pipeline.records import directory, schema, shards, splits

SIZE = 64


def _coeffs(frames):
    grid = frames[:, ::8, ::8, 1].reshape(len(frames), -1)
    feats = np.concatenate([frames.mean((1, 2)), grid], 1)
    return {"lip": feats[:, :20], "pose": feats[:, 20:26]}


def _rewrite(src: str, dst: str, edit) -> None:
    """Copies shard `src` to `dst`, passing every clip dict (frames as JPEG bytes) through
    edit(clip, k) -> clip, or -> a list of records for deliberately broken clips (then
    the shard is written without the checks of ShardWriter, and without a sidecar)."""
    reader = shards.open_reader(src)
    out = []
    for k, entry in enumerate(shards.shard_clips(src)):
        first = entry["record"]
        records = shards.read_records(reader, src, range(first, first + 1 + entry["num_frames"]))
        clip = edit(shards.decode_clip(records, decode_frames=False), k)
        out.append(clip if isinstance(clip, list) else shards.encode_clip(clip))
    reader.close()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    writer = ArrayRecordWriter(dst, shards.WRITER_OPTIONS)
    for records in out:
        for data in records:
            writer.write(data)
    writer.close()


def _as_hdtf(clip, k):
    """An HDTF-like clip (no emotion) of speaker H000, mirrored so its frames are new."""
    frames = [shards.encode_jpeg(shards.decode_jpeg(f)[:, ::-1].copy()) for f in clip["frames"]]
    lmk = clip["landmarks"].copy()
    lmk[..., 0] = SIZE - 1 - lmk[..., 0]
    meta = dict(clip["meta"], dataset="hdtf", speaker="H000", clip_id=f"H000#{k}", emotion="",
                level=0)
    return dict(clip, frames=frames, landmarks=lmk, meta=meta)


def _broken(clip, k):
    """Clip 0: truncated landmarks (unreadable records); 1: frames that are not JPEGs
    (corrupt frames); 2: a one-frame clip (too short for every stage)."""
    meta = dict(clip["meta"], speaker="BAD", clip_id=f"BAD#{k}")
    if k == 0:
        records = shards.encode_clip(dict(clip, meta=meta))
        for t in range(1, len(records)):
            frame = msgpack.unpackb(records[t])
            records[t] = msgpack.packb(dict(frame, landmarks=frame["landmarks"][:100]))
        return records
    if k == 1:
        return dict(clip, meta=meta, frames=[b"\xff\xd8 not a jpeg"] * len(clip["frames"]))
    one = {n: clip[n][:1] for n in ("mel_windows", "landmarks", "landmark_valid", "factors")}
    return dict(clip, **one, frames=clip["frames"][:1],
                audio=clip["audio"][:schema.SAMPLES_PER_FRAME], meta=dict(meta, num_frames=1))


def _index(path):
    shards.write_manifest(path)
    splits.write_splits(path, other="train")  # everything in train, an empty test split


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    main, bad, hdtf = str(root / "main"), str(root / "bad"), str(root / "hdtf")
    cfg = synthetic.SyntheticConfig(num_speakers=3, clips_per_speaker=3, frames_per_clip=8,
                                    size=SIZE)
    synthetic.write_dataset(cfg, main, workers=1, progress=False)
    s000 = os.path.join(main, "synthetic", "S000" + shards.SHARD_SUFFIX)
    _rewrite(s000, os.path.join(main, "hdtf", "H000" + shards.SHARD_SUFFIX), _as_hdtf)
    _index(main)
    targets.compute_targets(main, "t", _coeffs, progress=False, model="test:_coeffs")
    _rewrite(s000, os.path.join(hdtf, "hdtf", "H000" + shards.SHARD_SUFFIX), _as_hdtf)
    _index(hdtf)
    _rewrite(s000, os.path.join(bad, "synthetic", "S000" + shards.SHARD_SUFFIX), lambda c, k: c)
    _rewrite(s000, os.path.join(bad, "synthetic", "S001" + shards.SHARD_SUFFIX),
             lambda c, k: dict(c, meta=dict(c["meta"], speaker="S001", clip_id=f"S001#{k}")))
    _rewrite(s000, os.path.join(bad, "synthetic", "ZBAD" + shards.SHARD_SUFFIX), _broken)
    _index(bad)
    targets.compute_targets(bad, "t", _coeffs, progress=False, model="test:_coeffs")
    n = data_pipeline.num_clips(main)
    clips = [data_pipeline.read_clip(main, g) for g in range(n)]
    return {"main": main, "bad": bad, "hdtf": hdtf, "clips": clips}


def _cfg(path, stage, **kw):
    kw = {"split": None, "batch_size": 4, "image_size": SIZE, "targets": "t", **kw}
    return loaders.LoaderConfig(path, stage=stage, **kw)


def _take(cfg, n):
    it = loaders.make_loader(cfg)
    # Copies: batches from workers live in shared memory that the iterator owns.
    out = [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]
    it.close()
    return out


def _where(frames, img):
    """Indices of the frames equal to img."""
    return np.flatnonzero((frames == img).all((1, 2, 3)))


BATCH_SHAPES = {
    1: {"source": (SIZE, SIZE, 3), "target": (SIZE, SIZE, 3)},
    2: {**{k: (SIZE, SIZE, 3) for k in stages.IMAGE_KEYS[2]}, "a_mouth_box": (4,), "b_mouth_box": (4,)},
    3: {"identity": (SIZE, SIZE, 3), "target": (SIZE, SIZE, 3), "emotion": (), "level": ()},
    4: {"frames": (5, SIZE, SIZE, 3), "mel": (5, 80, 16), "identity": (SIZE, SIZE, 3),
        "mouth_boxes": (5, 4), "lip_targets": (5, 20), "pose_targets": (5, 6),
        "identity_lip": (20,)},
}


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_batch_layout(data, stage):
    f32 = _take(_cfg(data["main"], stage), 2)
    u8 = _take(_cfg(data["main"], stage, dtype="uint8"), 2)
    for batch, raw in zip(f32, u8):
        assert set(batch) == set(BATCH_SHAPES[stage]) | {"index"}
        assert batch["index"].shape == (4,) and batch["index"].dtype == np.int32
        for key, shape in BATCH_SHAPES[stage].items():
            assert batch[key].shape == (4, *shape), key
            if key in stages.IMAGE_KEYS[stage]:
                assert batch[key].dtype == np.float32 and raw[key].dtype == np.uint8
                assert -1 <= batch[key].min() < batch[key].max() <= 1
                np.testing.assert_array_equal(batch[key], raw[key].astype(np.float32) / 127.5 - 1)
            else:
                assert batch[key].dtype == (np.int32 if key in ("emotion", "level") else np.float32)
                np.testing.assert_array_equal(batch[key], raw[key])


def test_resize_to_image_size(data):
    batch = _take(_cfg(data["main"], 4, image_size=32), 1)[0]
    assert batch["frames"].shape == (4, 5, 32, 32, 3) and batch["identity"].shape == (4, 32, 32, 3)
    assert batch["mouth_boxes"].min() >= 0 and batch["mouth_boxes"].max() <= 32


def test_same_seed_same_batches_other_seed_other_batches(data):
    a, b = _take(_cfg(data["main"], 2, seed=3), 3), _take(_cfg(data["main"], 2, seed=3), 3)
    c = _take(_cfg(data["main"], 2, seed=4), 3)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["a"], z["a"]) for x, z in zip(a, c))


@pytest.mark.parametrize("stage", [2, 4])
def test_two_workers_give_the_same_batches(data, stage):
    ref = _take(_cfg(data["main"], stage, seed=5), 4)
    got = _take(_cfg(data["main"], stage, seed=5, worker_count=2), 4)
    for x, y in zip(ref, got):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _speaker(data, g):
    return data["clips"][g]["meta"]["speaker"]


def test_stage1_sampling_rules(data):
    clips = data["clips"]
    batches = _take(_cfg(data["main"], 1, dtype="uint8", batch_size=3), 8)
    seen = set()
    for batch in batches:
        for j, g in enumerate(batch["index"]):
            spk = _speaker(data, g)
            same = [h for h in range(len(clips)) if _speaker(data, h) == spk]
            if clips[g]["meta"]["emotion"]:
                neutral = [h for h in same if clips[h]["meta"]["emotion"] == "neutral"]
                assert any(len(_where(clips[h]["frames"], batch["source"][j])) for h in neutral)
                assert any(len(_where(clips[h]["frames"], batch["target"][j])) for h in same)
                seen.add("mead")
            else:  # HDTF rule: two different frames of one clip of the speaker
                both = [h for h in same if len(_where(clips[h]["frames"], batch["source"][j]))
                        and len(_where(clips[h]["frames"], batch["target"][j]))]
                assert both and not np.array_equal(batch["source"][j], batch["target"][j])
                seen.add("hdtf")
    assert seen == {"mead", "hdtf"}


def test_stage2_partner_and_swaps(data):
    clips = data["clips"]
    for batch in _take(_cfg(data["main"], 2, dtype="uint8"), 3):
        for j, g in enumerate(batch["index"]):
            fa = [_where(clips[g]["frames"], batch[k][j]) for k in ("a_identity", "a")]
            assert all(len(f) for f in fa) and fa[0][0] != fa[1][0]
            hb = [h for h in range(len(clips)) if len(_where(clips[h]["frames"], batch["b"][j]))]
            assert len(hb) == 1 and _speaker(data, hb[0]) != _speaker(data, g)
            assert len(_where(clips[hb[0]]["frames"], batch["b_identity"][j]))
            la = clips[g]["landmarks"][fa[1][0]]
            lb = clips[hb[0]]["landmarks"][_where(clips[hb[0]]["frames"], batch["b"][j])[0]]
            a, b = batch["a"][j], batch["b"][j]
            np.testing.assert_array_equal(batch["mouth_a_on_b"][j],
                                          mouth_swap.swap_mouth(a, la, b, lb))
            np.testing.assert_array_equal(batch["mouth_b_on_a"][j],
                                          mouth_swap.swap_mouth(b, lb, a, la))
            margin = loaders.LoaderConfig.mouth_margin
            np.testing.assert_allclose(batch["a_mouth_box"][j], stages.square_mouth_box(la, margin, SIZE))
            np.testing.assert_allclose(batch["b_mouth_box"][j], stages.square_mouth_box(lb, margin, SIZE))


def test_stage2_needs_two_speakers(data):
    with pytest.raises(loaders.LoaderError, match="two speakers"):
        loaders.make_loader(_cfg(data["main"], 2, datasets=("hdtf",)))


def test_stage3_labels_and_frames(data):
    clips = data["clips"]
    for batch in _take(_cfg(data["main"], 3, dtype="uint8", exclude_neutral=True), 3):
        for j, g in enumerate(batch["index"]):
            meta = clips[g]["meta"]
            assert meta["emotion"] not in ("", "neutral")
            assert batch["emotion"][j] == schema.emotion_label(meta["emotion"])
            assert batch["level"][j] == meta["level"]
            assert len(_where(clips[g]["frames"], batch["identity"][j]))
            assert len(_where(clips[g]["frames"], batch["target"][j]))
    it = loaders.make_loader(_cfg(data["main"], 3, exclude_neutral=True))
    assert it.excluded == {"no_emotion": 3, "neutral": 3}


def test_stage3_without_emotions_is_a_clear_error(data):
    with pytest.raises(loaders.LoaderError, match=f"{data['hdtf']}.*no clip is usable for stage 3"):
        loaders.make_loader(_cfg(data["hdtf"], 3))


def test_stage4_consecutive_frames_and_aligned_targets(data):
    clips, store = data["clips"], targets.load_targets(data["main"], "t")
    for batch in _take(_cfg(data["main"], 4, dtype="uint8"), 3):
        for j, g in enumerate(batch["index"]):
            frames = clips[g]["frames"]
            r = _where(frames, batch["frames"][j, 0])[0]
            np.testing.assert_array_equal(batch["frames"][j], frames[r:r + 5])
            ident = _where(frames, batch["identity"][j])
            np.testing.assert_array_equal(batch["mel"][j], clips[g]["mel_windows"][r:r + 5])
            lip, pose = store.get(int(g))
            assert any(np.array_equal(batch["identity_lip"][j], lip[k]) for k in ident)
            np.testing.assert_array_equal(batch["lip_targets"][j], lip[r:r + 5])
            np.testing.assert_array_equal(batch["pose_targets"][j], pose[r:r + 5])
            box, mouth = batch["mouth_boxes"][j], clips[g]["landmarks"][r:r + 5, 48:68]
            np.testing.assert_allclose(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1], rtol=1e-5)
            assert (box[:, None, :2] <= mouth).all() and (mouth <= box[:, None, 2:]).all()
            assert box.min() >= 0 and box.max() <= SIZE


def test_stage4_missing_targets_name_the_command(data):
    with pytest.raises(targets.TargetsError, match="launch.compute_targets"):
        loaders.make_loader(_cfg(data["main"], 4, targets="nope"))


def test_two_shards_are_disjoint_and_cover(data):
    epochs = {}
    for index in (0, 1):
        cfg = _cfg(data["main"], 1, batch_size=1, num_epochs=1, shard_index=index, shard_count=2)
        it = loaders.make_loader(cfg)
        epochs[index] = [int(b["index"][0]) for b in it]
        assert len(epochs[index]) == it.num_clips == it.batches_per_epoch == 6
    assert not set(epochs[0]) & set(epochs[1])
    assert sorted(epochs[0] + epochs[1]) == list(range(12))


def test_each_epoch_deals_a_fresh_order_to_the_hosts():
    """The epoch is folded into the seed (not added), hosts get other clips every epoch,
    the clips left over differ from epoch to epoch, and every epoch is one process's
    share of one permutation."""
    usable = np.arange(100, 111)  # 11 clips over 3 hosts: 3 each, 2 left over per epoch
    order = lambda seed, epoch, host, shuffle=True: loaders.EpochOrder(usable, seed, shuffle, host, 3).clips(epoch)
    for seed, epoch in ((3, 0), (3, 1), (0, 5)):
        dealt = [order(seed, epoch, h) for h in range(3)]
        assert all(len(d) == 3 for d in dealt)
        flat = np.concatenate(dealt)
        assert len(set(flat)) == 9 and set(flat) <= set(usable)
    assert not np.array_equal(order(3, 1, 0), order(4, 0, 0))  # seed + 1 at epoch - 1: another order
    assert not np.array_equal(order(3, 0, 0), order(3, 1, 0))  # and every epoch another share
    seen = set()
    for epoch in range(8):  # nothing is left out for good
        seen |= {int(c) for h in range(3) for c in order(3, epoch, h)}
    assert seen == set(range(100, 111))
    unshuffled = [order(0, e, 0, shuffle=False) for e in range(2)]
    np.testing.assert_array_equal(unshuffled[0], [100, 103, 106])
    np.testing.assert_array_equal(unshuffled[1], [109, 101, 104])  # rotated by one epoch (9 clips)
    fn = loaders.EpochOrder(usable, 3, True, 1, 3)  # the pipeline's view: position -> (epoch, clip)
    assert [fn(k, None) for k in (0, 2, 3, 5)] == [(0, int(order(3, 0, 1)[0])), (0, int(order(3, 0, 1)[2])),
                                                   (1, int(order(3, 1, 1)[0])), (1, int(order(3, 1, 1)[2]))]


def test_epochs_change_the_batches(data):
    """Two epochs of one loader: the second visits the clips in another order."""
    it = loaders.make_loader(_cfg(data["main"], 1, batch_size=1, num_epochs=2, seed=1))
    indices = [int(b["index"][0]) for b in it]
    first, second = indices[:12], indices[12:]
    assert sorted(first) == sorted(second) == list(range(12)) and first != second


@pytest.mark.parametrize("workers", [0, 2])
def test_orbax_resume_gives_the_uninterrupted_batches(data, tmp_path, workers):
    cfg = _cfg(data["main"], 2, worker_count=workers, seed=7)
    reference = _take(cfg, 5)
    it = loaders.make_loader(cfg)
    for _ in range(3):
        next(it)
    manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    it.close()
    resumed = loaders.make_loader(cfg)
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    for want in reference[3:]:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert resumed.stats["batches"] == 5
    resumed.close()


def _saved_state(cfg):
    """The iterator state after one batch, as orbax writes and reads it (JSON)."""
    it = loaders.make_loader(cfg)
    next(it)
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    return state


def test_state_of_another_data_configuration_is_refused(data):
    cfg = _cfg(data["main"], 2, seed=7)
    state = _saved_state(cfg)
    assert state["fingerprint"]["data"].startswith("manifest:")
    changes = [({"seed": 8}, ["seed"]), ({"batch_size": 2}, ["batch_size"]),
               ({"dtype": "uint8"}, ["dtype"]),
               ({"shard_index": 1, "shard_count": 2}, ["shard_index", "shard_count"]),
               ({"datasets": ("synthetic",)}, ["datasets", "clips"]),
               ({"stage": 1}, ["stage"])]
    for change, fields in changes:
        other = loaders.make_loader(dataclasses.replace(cfg, **change))
        with pytest.raises(loaders.LoaderError, match="belongs to another data configuration") as e:
            other.set_state(state)
        other.close()
        for field in fields:
            assert f"{field}: " in str(e.value) and "(checkpoint) vs" in str(e.value), (field, e)
    other = loaders.make_loader(_cfg(data["bad"], 2, seed=7))  # another dataset
    with pytest.raises(loaders.LoaderError, match="data: 'manifest:"):
        other.set_state(state)
    other.close()
    del state["fingerprint"]  # a state saved before fingerprints
    with pytest.raises(loaders.LoaderError, match="carries no fingerprint"):
        loaders.make_loader(cfg).set_state(state)


def test_speed_settings_and_other_stages_fields_keep_the_position(data):
    """worker_count, prefetch, read_threads and tune_malloc do not change batches; T
    matters only in stage 4, exclude_neutral only in stage 3; mouth_margin changes the
    mouth boxes, not which frames come at a position."""
    cfg = _cfg(data["main"], 2, seed=7)
    state = _saved_state(cfg)
    want = _take(cfg, 2)[1]
    same = dataclasses.replace(cfg, prefetch=4, read_threads=2, tune_malloc=False, T=3,
                               mouth_margin=0.5, exclude_neutral=True)
    it = loaders.make_loader(same)
    it.set_state(state)
    got = next(it)
    for k in want:
        if k.endswith("mouth_box"):
            assert not np.array_equal(got[k], want[k]), k  # wider boxes, same frames
        else:
            np.testing.assert_array_equal(got[k], want[k])
    it.close()
    workers, plain = (loaders.make_loader(dataclasses.replace(cfg, worker_count=w)) for w in (2, 0))
    assert workers.fingerprint == plain.fingerprint
    workers.close(), plain.close()


def test_fingerprint_names_the_data(data, tmp_path):
    own = np.arange(3)
    split = loaders.fingerprint(_cfg(data["main"], 1, split="train"), own, 0, 1)
    assert split["data"].startswith("manifest:") and " split:" in split["data"]
    (tmp_path / "dataset_info.json").write_text("{}")  # a TFDS dataset directory
    tfds = loaders.fingerprint(_cfg(str(tmp_path), 1), own, 0, 1)
    assert tfds["data"].startswith("dataset_info:")
    assert set(tfds) == set(split) and "worker_count" not in tfds and "T" not in tfds
    assert {"T", "targets", "mouth_margin"} <= set(loaders.fingerprint(_cfg(str(tmp_path), 4),
                                                                       own, 0, 1))


def test_bad_records_are_counted_skips(data):
    it = loaders.make_loader(_cfg(data["bad"], 3, batch_size=2, num_epochs=3))
    assert it.excluded == {"too_short(<2)": 1}
    bad = {6, 7}  # ZBAD records 0 (unreadable) and 1 (frames that are not JPEGs)
    samples = [g for batch in it for g in batch["index"]]
    assert len(samples) == 3 * it.batches_per_epoch * 2 and not set(samples) & bad
    assert it.stats["skipped"]["unreadable"] >= 3 and it.stats["skipped"]["corrupt_frame"] >= 3
    assert any("ZBAD" in m for m in it.stats["recent_skips"])


@pytest.mark.parametrize("stage,records", [(1, 2), (2, 4), (3, 2), (4, 6)])
def test_a_sample_reads_only_its_frame_records(data, stage, records):
    """Bytes read per sample: the frame records the sample uses (stage 2: 4 frames of two
    clips, stage 4: T + 1), not whole clips; the clips here have 8 frames."""
    cfg = _cfg(data["main"], stage)
    store = directory.open_clips(data["main"])
    usable, _ = stages.usable_clips(store, cfg, targets.load_targets(data["main"], "t"))
    sampler = stages.Sampler(store, cfg, usable, targets.load_targets(data["main"], "t"))
    frame_bytes = max(len(r) for g in range(len(store))
                      for r in shards.encode_clip(store.record(g))[1:])
    clip_bytes = min(sum(map(len, shards.encode_clip(store.record(g)))) for g in range(len(store)))
    store.bytes_read = 0
    for k in range(20):
        sampler((0, int(usable[k % len(usable)])))
    per_sample = store.bytes_read / 20
    assert per_sample <= records * frame_bytes
    assert per_sample >= records * frame_bytes * 0.8  # the frames are read: nothing is cached
    if stage == 2:
        assert per_sample < 2 * clip_bytes / 3  # two whole 8-frame clips: 16 frame records


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_the_epoch_changes_each_sample(data, stage):
    """The per-sample generator is seeded with the epoch: one clip, two epochs, two samples."""
    cfg = _cfg(data["main"], stage)
    store = directory.open_clips(data["main"])
    usable, _ = stages.usable_clips(store, cfg, targets.load_targets(data["main"], "t"))
    sampler = stages.Sampler(store, cfg, usable, targets.load_targets(data["main"], "t"))
    key = stages.IMAGE_KEYS[stage][0]
    for i in usable[:3]:
        a, b, again = sampler((0, int(i))), sampler((1, int(i))), sampler((0, int(i)))
        np.testing.assert_array_equal(a[key], again[key])
        assert not all(np.array_equal(a[k], b[k]) for k in stages.IMAGE_KEYS[stage])


def test_a_bug_inside_sampling_fails_loudly(data, monkeypatch):
    def broken(*args):
        raise IndexError("a shape bug")

    monkeypatch.setattr(mouth_swap, "swap_mouth", broken)
    it = loaders.make_loader(_cfg(data["main"], 2, batch_size=2))
    with pytest.raises(IndexError, match="a shape bug"):
        next(it)


def test_skips_past_the_rate_limit_stop_the_run(data, monkeypatch):
    monkeypatch.setattr(loaders.pipeline, "SKIP_ALLOWANCE", 2)
    it = loaders.make_loader(_cfg(data["bad"], 3, batch_size=2, max_skip_fraction=0.05))
    with pytest.raises(loaders.LoaderError, match=r"(?s)bad.*of \d+ clips drawn were skipped.*"
                       r"max_skip_fraction.*the first reasons: .*BAD|ZBAD"):
        for _ in range(20):
            next(it)


def _undetected(clip, k):
    """Landmarks NaN (so any use of them is a skip) and landmark_valid False on every
    other frame of clip 0 and every frame but 0..4 of clip 1; clip 2 has none detected."""
    valid = np.ones(len(clip["frames"]), bool)
    valid[{0: slice(1, None, 2), 1: slice(5, None), 2: slice(None)}[k]] = False
    landmarks = clip["landmarks"].copy()
    landmarks[~valid] = np.nan
    return dict(clip, landmarks=landmarks, landmark_valid=valid)


def test_mouths_are_placed_only_by_detected_landmarks(data, tmp_path):
    root = str(tmp_path / "undetected")
    s000 = os.path.join(data["main"], "synthetic", "S000" + shards.SHARD_SUFFIX)
    _rewrite(s000, os.path.join(root, "synthetic", "S000" + shards.SHARD_SUFFIX), _undetected)
    _rewrite(s000, os.path.join(root, "synthetic", "S001" + shards.SHARD_SUFFIX),
             lambda c, k: dict(c, meta=dict(c["meta"], speaker="S001", clip_id=f"S001#{k}")))
    _index(root)
    targets.compute_targets(root, "t", _coeffs, progress=False, model="test:_coeffs")
    it = loaders.make_loader(_cfg(root, 2, batch_size=2, num_epochs=4))
    assert it.excluded == {"no_detected_landmarks": 1}
    assert sum(len(b["index"]) for b in it) == 4 * 5 and it.stats["skipped"] == {}
    it = loaders.make_loader(_cfg(root, 4, batch_size=1, num_epochs=8, dtype="uint8"))
    assert it.excluded == {"no_5_frames_with_detected_landmarks": 2}
    batches = list(it)
    assert len(batches) == 8 * 4 and it.stats["skipped"] == {}
    clip1 = data_pipeline.read_clip(root, 1)
    for b in batches:  # clip 1's only window is its frames 0..4
        if b["index"][0] == 1:
            np.testing.assert_array_equal(b["frames"][0], clip1["frames"][:5])


def test_loading_leaves_process_settings_alone(data):
    import cv2

    cv2.setNumThreads(3)
    it = loaders.make_loader(_cfg(data["main"], 2, batch_size=2))
    next(it)
    assert cv2.getNumThreads() == 3


def test_stage4_leaves_out_clips_without_targets(data):
    info = targets.load_targets(data["bad"], "t").info
    assert sorted(info["bad_clips"]) == ["6", "7"]
    it = loaders.make_loader(_cfg(data["bad"], 4, batch_size=2, num_epochs=1))
    assert it.excluded == {"too_short(<5)": 1, "no_targets": 2}
    assert {int(g) for b in it for g in b["index"]} <= set(range(6))


def test_empty_split_is_a_clear_error(data):
    with pytest.raises(loaders.LoaderError, match=f"{data['main']}.*no clips"):
        loaders.make_loader(_cfg(data["main"], 1, split="test"))


def test_to_global_arrays(data):
    batch = _take(_cfg(data["main"], 3), 1)[0]
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    arrays = loaders.to_global_arrays(batch, sharding)
    for k, v in batch.items():
        assert isinstance(arrays[k], jax.Array) and arrays[k].sharding == sharding
        np.testing.assert_array_equal(np.asarray(arrays[k]), v)


def test_benchmark_writes_the_loader_table(data, tmp_path):
    from launch import benchmark_loaders

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Data loaders\n\nNotes kept.\n\n## Other\n\nkept too\n")
    argv = ["--shards", data["main"], "--targets", "t", "--size", str(SIZE), "--stages", "3",
            "--workers", "0", "--warmup", "1", "--windows", "1", "--window_batches", "1",
            "--rounds", "1", "--doc", str(doc)]
    for _ in range(2):  # the second run replaces the first table
        benchmark_loaders.main(argv)
    text = doc.read_text()
    assert text.count(benchmark_loaders.BEGIN) == 1 and "Notes kept." in text
    row = text.index("| 3 | float32 | 0 |")
    assert text.index("## Data loaders") < row < text.index("## Other")


_PROCESS = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, numpy as np
from jax.experimental import multihost_utils
from data_pipeline import loaders
port, pid, shards_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
cfg = loaders.LoaderConfig(shards_dir, stage=3, split=None, batch_size=2, image_size=64)
batch = next(loaders.make_loader(cfg))  # shard index/count from jax
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
arrays = loaders.to_global_arrays(batch, sharding)
index = multihost_utils.process_allgather(arrays["index"], tiled=True)
print(json.dumps({"local": batch["index"].tolist(), "global": np.asarray(index).tolist(),
                  "shape": list(arrays["identity"].shape)}))
"""


def test_two_processes_build_one_global_batch(data):
    """Two jax processes: each loads its own clips; the global batch concatenates them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS, port, str(i), data["main"]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert not set(outs[0]["local"]) & set(outs[1]["local"])
    for out in outs:
        assert out["global"] == outs[0]["local"] + outs[1]["local"]
        assert out["shape"] == [4, SIZE, SIZE, 3]
