"""Shard format: records, JPEG, atomic writer, manifest, splits, ClipStore under grain."""

import json
import os
import pickle
import subprocess
import sys

import grain
import msgpack
import numpy as np
import pytest
from absl import flags
from array_record.python.array_record_module import ArrayRecordWriter

import data_pipeline
from data_pipeline.records import schema, shards, source, splits


def make_clip(dataset="synthetic", speaker="S000", clip_id="c0", emotion="neutral", level=1,
              t=3, size=32, num_factors=2, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for i in range(t):  # smooth images: JPEG error stays small
        img = np.stack([xx * 4 + i * 10, yy * 4, (xx + yy) * 2 + 40], -1) % 256
        frames.append(shards.encode_jpeg(img.astype(np.uint8)))
    return {
        "frames": frames,
        "mel_windows": rng.standard_normal((t, 80, 16)).astype(np.float32),
        "landmarks": (rng.random((t, 68, 2)) * size).astype(np.float32),
        "landmark_valid": rng.random(t) > 0.3,
        "audio": rng.integers(-32768, 32767, t * 640).astype(np.int16),
        "factors": rng.standard_normal((t, num_factors)).astype(np.float32),
        "meta": schema.make_meta(dataset=dataset, speaker=speaker, clip_id=clip_id,
                                 emotion=emotion, level=level, fps=25, source=f"test:{seed}",
                                 num_frames=t, size=size,
                                 factor_names=",".join(f"f{k}" for k in range(num_factors))),
    }


def write_shard(path, clips):
    with shards.ShardWriter(path) as w:
        for c in clips:
            w.write(c)
    return w.count


def test_jpeg_round_trip():
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: a BGR/RGB swap would show up as blue
    rgb[10:30, 10:30] = (20, 160, 60)
    out = shards.decode_jpeg(shards.encode_jpeg(rgb, quality=95))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 4  # hard edges + 4:2:0 chroma
    assert np.abs(out[15:25, 15:25].astype(int) - (20, 160, 60)).max() <= 6
    assert np.abs(out[:5, 35:].astype(int) - (200, 0, 0)).max() <= 6
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        shards.decode_jpeg(b"\xff\xd8garbage")


def test_record_round_trip():
    clip = make_clip(t=4, num_factors=3)
    data = shards.encode_clip(clip)
    assert len(data) == 5  # the header, then one record per frame
    rec = shards.decode_clip(data, decode_frames=False)
    assert rec["frames"] == clip["frames"] and rec["meta"] == clip["meta"]
    for name in ("mel_windows", "landmarks", "landmark_valid", "audio", "factors"):
        assert rec[name].dtype == clip[name].dtype and rec[name].shape == clip[name].shape
        np.testing.assert_array_equal(rec[name], clip[name])
    full = shards.decode_clip(data)
    assert full["frames"].shape == (4, 32, 32, 3) and full["frames"].dtype == np.uint8
    expected = shards.decode_jpegs(clip["frames"])
    np.testing.assert_array_equal(full["frames"], expected)
    meta, invalid = shards.read_header(data[0])
    assert meta == clip["meta"] and invalid == np.flatnonzero(~clip["landmark_valid"]).tolist()
    assert shards.decode_clip(shards.encode_clip(make_clip(num_factors=0)))["factors"].shape == (3, 0)
    # Any subset of frames decodes alone, in the order asked.
    part = shards.decode_frame_records([data[3], data[1]], clip["meta"], [2, 0])
    np.testing.assert_array_equal(part["frames"], expected[[2, 0]])
    np.testing.assert_array_equal(part["audio"], clip["audio"].reshape(4, 640)[[2, 0]])
    np.testing.assert_array_equal(part["landmark_valid"], clip["landmark_valid"][[2, 0]])


def test_encode_validates():
    clip = make_clip()
    clip["landmarks"] = clip["landmarks"].astype(np.float64)
    with pytest.raises(schema.ClipError, match="landmarks"):
        shards.encode_clip(clip)


def test_decode_rejects_bad_records():
    data = shards.encode_clip(make_clip())
    meta = make_clip()["meta"]
    with pytest.raises(shards.ShardError, match=r"x\.array_record\[3\]: corrupt record"):
        shards.decode_frame_records([data[1][: len(data[1]) // 2]], meta, [0], where=["x.array_record[3]"])
    frame = msgpack.unpackb(data[2])
    with pytest.raises(shards.ShardError, match="holds frame 1 .* expects frame 0"):
        shards.decode_frame_records([data[2]], meta, [0])  # the index and the shard disagree
    with pytest.raises(shards.ShardError, match="version 99"):
        shards.decode_frame_records([msgpack.packb({**frame, "version": 99})], meta, [1])
    with pytest.raises(shards.ShardError, match="landmarks has 100 bytes"):
        shards.decode_frame_records([msgpack.packb({**frame, "landmarks": b"x" * 100})], meta, [1])
    with pytest.raises(shards.ShardError, match="not a frame record"):
        shards.decode_frame_records([data[0]], meta, [0])
    with pytest.raises(shards.ShardError, match="not a clip header"):
        shards.read_header(data[1])
    with pytest.raises(shards.ShardError, match="2 frame records for num_frames=3"):
        shards.decode_clip(data[:3])
    old = msgpack.packb({"version": 1, "meta": meta, "arrays": {}, "frames": []})
    with pytest.raises(shards.ShardError, match="version-1 record.*launch.upgrade_shards"):
        shards.read_header(old)


def test_writer_is_atomic(tmp_path):
    path = str(tmp_path / "a" / "s.array_record")
    with pytest.raises(RuntimeError, match="boom"):
        with shards.ShardWriter(path) as w:
            w.write(make_clip())
            raise RuntimeError("boom")
    assert os.listdir(tmp_path / "a") == []
    assert write_shard(path, [make_clip(clip_id="a"), make_clip(clip_id="b")]) == 2
    assert sorted(os.listdir(tmp_path / "a")) == ["s.array_record", "s.array_record.meta.json"]


@pytest.fixture()
def shard_dir(tmp_path):
    """Two datasets in three shards, in nested folders."""
    mead = [make_clip("mead", spk, f"{spk}#{emo}#level_{lvl}#001", emo, lvl, seed=k)
            for k, (spk, emo, lvl) in enumerate([("M003", "neutral", 1), ("M005", "happy", 2),
                                                  ("M005", "sad", 3), ("W015", "angry", 1)])]
    synth = [make_clip("synthetic", f"S{s:03d}", f"S{s:03d}#{c}", "neutral", 1, t=2, seed=10 + s)
             for s in range(8) for c in range(2)]
    write_shard(tmp_path / "mead" / "b.array_record", mead[2:])
    write_shard(tmp_path / "mead" / "a.array_record", mead[:2])
    write_shard(tmp_path / "synthetic.array_record", synth)
    return tmp_path, mead, synth


def test_manifest(shard_dir):
    root, mead, synth = shard_dir
    os.remove(root / "mead" / "b.array_record.meta.json")  # these two force reading the records
    (root / "mead" / "a.array_record.meta.json").write_text("{not json")
    m = shards.write_manifest(root)
    assert json.loads((root / "manifest.json").read_text()) == m
    assert [s["path"] for s in m["shards"]] == ["mead/a.array_record", "mead/b.array_record",
                                               "synthetic.array_record"]
    # T + 1 records per clip: 3-frame MEAD clips, 2-frame synthetic ones.
    assert [s["num_records"] for s in m["shards"]] == [8, 8, 48] and m["num_clips"] == 20
    expected = [c["meta"] for c in mead + synth]
    assert [{k: c[k] for k in schema.META_FIELDS} for c in m["clips"]] == expected
    assert (m["clips"][3]["shard"], m["clips"][3]["record"]) == (1, 4)
    assert [c["invalid_landmarks"] for c in m["clips"]] == [
        np.flatnonzero(~c["landmark_valid"]).tolist() for c in mead + synth]


def test_manifest_rejects_duplicates_and_missing(tmp_path):
    with pytest.raises(shards.ShardError, match="no \\*.array_record"):
        shards.write_manifest(tmp_path)
    write_shard(tmp_path / "a.array_record", [make_clip(clip_id="x")])
    write_shard(tmp_path / "b.array_record", [make_clip(clip_id="x")])
    with pytest.raises(shards.ShardError, match="synthetic/x"):
        shards.write_manifest(tmp_path)


def test_splits(shard_dir):
    root, _, synth = shard_dir
    shards.write_manifest(root)
    made = splits.write_splits(root)
    assert json.loads((root / "splits" / "test.json").read_text()) == made["test"]
    test = set(made["test"])
    assert test.isdisjoint(made["train"]) and len(test) + len(made["train"]) == 20
    assert {"mead/M003#neutral#level_1#001", "mead/W015#angry#level_1#001"} <= test
    assert not any(k.startswith("mead/M005") for k in test)
    held = {k.split("/")[1].split("#")[0] for k in test if k.startswith("synthetic/")}
    assert held == splits.hash_held_out({f"S{s:03d}" for s in range(8)}, 0.125, "synthetic/")
    assert len(held) == 1  # a speaker is never split across train and test
    assert splits.write_splits(root, other="train")["test"] == [
        "mead/M003#neutral#level_1#001", "mead/W015#angry#level_1#001"]
    only = splits.write_splits(root, mead_test_speakers=(), other="test")["test"]
    assert len(only) == 16 and all(k.startswith("synthetic/") for k in only)


def test_hash_held_out_is_stable():
    speakers = [f"v{i}" for i in range(50)]
    held = splits.hash_held_out(speakers, 0.2)
    assert len(held) == 10 and held == splits.hash_held_out(reversed(speakers), 0.2)
    assert len(splits.hash_held_out(["a", "b"], 0.01)) == 1
    assert len(splits.hash_held_out(["a", "b"], 0.99)) == 1
    assert splits.hash_held_out(["a"], 0.5) == set()


def test_clip_store(shard_dir):
    root, mead, synth = shard_dir
    with pytest.raises(FileNotFoundError, match="python -m data_pipeline.shards"):
        source.ClipStore(root)
    splits.main([str(root)])
    store = source.ClipStore(root)
    assert len(store) == 20 == data_pipeline.num_clips(root)
    rec = store.record(5)
    assert rec["frames"] == synth[1]["frames"] and store.meta(5) == synth[1]["meta"]
    np.testing.assert_array_equal(rec["mel_windows"], synth[1]["mel_windows"])
    full = data_pipeline.read_clip(root, 2)
    assert full["frames"].shape == (3, 32, 32, 3) and full["meta"] == mead[2]["meta"]
    np.testing.assert_array_equal(full["landmarks"], mead[2]["landmarks"])
    by_speaker = store.indices_by("speaker")
    assert by_speaker["M005"] == [1, 2] and len(by_speaker) == 11
    test = source.ClipStore(root, split="test")
    keys = json.loads((root / "splits" / "test.json").read_text())
    assert [shards.clip_key(test.meta(i)) for i in range(len(test))] == keys
    assert shards.clip_key(test.record(0)["meta"]) == keys[0]
    clone = pickle.loads(pickle.dumps(store))  # readers are reopened lazily
    assert clone.record(7)["meta"] == store.meta(7)
    np.testing.assert_array_equal(store.landmark_valid(2), mead[2]["landmark_valid"])
    # Reading two frames reads two frame records, nothing else.
    store.bytes_read = 0
    part = store.read_frames(2, [2, 0])
    np.testing.assert_array_equal(part["landmarks"], mead[2]["landmarks"][[2, 0]])
    records = shards.encode_clip(mead[2])
    assert store.bytes_read == len(records[3]) + len(records[1])
    with pytest.raises(IndexError, match="frames \\[3\\] of clip 2 with 3 frames"):
        store.read_frames(2, [3])


def _speaker(record):
    return record["meta"]["speaker"]


class _SpeakerAndPid(grain.transforms.Map):
    def map(self, record):
        return _speaker(record), os.getpid()


@pytest.mark.parametrize("workers", [0, 2])
def test_clip_store_in_grain(shard_dir, workers):
    root, mead, synth = shard_dir
    splits.main([str(root)])
    flags.FLAGS.mark_as_parsed()
    store = source.ClipStore(root)
    ds = grain.MapDataset.source(store).map(_speaker)
    assert list(ds) == [c["meta"]["speaker"] for c in mead + synth]
    loader = grain.DataLoader(
        data_source=store, operations=[_SpeakerAndPid()],
        sampler=grain.samplers.IndexSampler(len(store), num_epochs=1, shuffle=False, seed=0),
        worker_count=workers)
    speakers, pids = zip(*loader)
    assert list(speakers) == [c["meta"]["speaker"] for c in mead + synth]
    assert (os.getpid() in pids) == (workers == 0)  # workers > 0: records read in workers


def test_corrupt_and_truncated_shards(shard_dir):
    root, _, _ = shard_dir
    splits.main([str(root)])
    path = root / "synthetic.array_record"
    data = bytearray(path.read_bytes())
    store = source.ClipStore(root)
    path.write_bytes(data[: len(data) - 100])  # truncated: the footer is gone
    with pytest.raises(shards.ShardError, match=r"synthetic\.array_record: not a complete"):
        store.record(4)
    with pytest.raises(shards.ShardError, match=r"synthetic\.array_record: not a complete"):
        shards.write_manifest(root)
    # Damage the payload of the first frame record (record 1, after clip 4's header): the
    # chunk hash catches it.
    start = data.find(b"jpeg")
    data[start: start + 4] = b"XXXX"
    path.write_bytes(data)
    with pytest.raises(shards.ShardError, match=r"synthetic\.array_record\[1, 2\]: cannot read"):
        source.ClipStore(root).record(4)
    os.remove(path)
    with pytest.raises(shards.ShardError, match="shard file not found"):
        source.ClipStore(root).record(4)


def test_bad_record_names_file_and_index(tmp_path):
    bad = shards.encode_clip(make_clip(clip_id="bad"))
    frame = msgpack.unpackb(bad[2])
    frame["jpeg"] = b"\xff\xd8 not really a jpeg"
    bad[2] = msgpack.packb(frame)
    writer = ArrayRecordWriter(str(tmp_path / "x.array_record"), shards.WRITER_OPTIONS)
    for data in shards.encode_clip(make_clip(clip_id="good")) + bad:
        writer.write(data)
    writer.close()
    shards.write_manifest(tmp_path)  # no sidecar: the clips are read from the header records
    store = source.ClipStore(tmp_path)
    assert store.record(1)["meta"]["clip_id"] == "bad"  # frames stay undecoded
    store.read_frames(1, [0, 2])  # the other frames of the clip are fine
    with pytest.raises(shards.ShardError, match=r"x\.array_record\[6\]: not a decodable"):
        store.clip(1)
    writer = ArrayRecordWriter(str(tmp_path / "y.array_record"), shards.WRITER_OPTIONS)
    writer.write(b"\x93 not msgpack at all")
    writer.close()
    with pytest.raises(shards.ShardError, match=r"y\.array_record\[0\]: corrupt record"):
        shards.write_manifest(tmp_path)
    with pytest.raises(shards.ShardError, match=r"z\.array_record\[0\]: corrupt record"):
        with shards.ShardWriter(tmp_path / "z.array_record") as w:
            w.write_encoded([b"\x93 not msgpack at all"])
    assert not os.path.exists(tmp_path / "z.array_record.tmp")
    with pytest.raises(shards.ShardError, match=r"z\.array_record\[2\]: holds frame 0"):
        with shards.ShardWriter(tmp_path / "z.array_record") as w:
            w.write_encoded(bad[:2] + bad[1:3])  # a frame twice: refused before writing
    # A shard whose last clip lost frame records: refused when indexed without its sidecar.
    writer = ArrayRecordWriter(str(tmp_path / "y.array_record"), shards.WRITER_OPTIONS)
    for data in shards.encode_clip(make_clip(clip_id="short"))[:-1]:
        writer.write(data)
    writer.close()
    with pytest.raises(shards.ShardError, match=r"y\.array_record: the last clip claims 1 more"):
        shards.write_manifest(tmp_path)


def test_version_1_directory_names_the_converter(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "edtalk-clip-shards", "version": 1, "num_clips": 0, "shards": [], "clips": []}))
    with pytest.raises(shards.ShardError, match="version-1 shard directory.*"
                       "python -m launch.upgrade_shards .* --out NEW_DIR"):
        source.ClipStore(tmp_path)


def test_package_import_is_light():
    code = ("import sys, data_pipeline, data_pipeline.preprocess.audio; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('array_record', 'grain')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_second_person_follows_the_main_speaker_into_its_split(tmp_path):
    clips = [make_clip("hdtf", spk, f"{spk}#{k}", "", 0, seed=k)
             for k, spk in enumerate(["WDA_A", "WDA_A+v1.2", "WDA_B", "WDA_B+v2.2", "WDA_C"])]
    write_shard(tmp_path / "h.array_record", clips)
    shards.write_manifest(tmp_path)
    made = splits.write_splits(tmp_path, hdtf_test=["WDA_B"])
    assert made["test"] == ["hdtf/WDA_B#2", "hdtf/WDA_B+v2.2#3"]
    for fraction in (0.3, 0.6):  # the hash rule draws persons, never half of one
        test = set(splits.write_splits(tmp_path, hdtf_test_fraction=fraction)["test"])
        side = {}
        for c in clips:
            group = c["meta"]["speaker"].split("+")[0]
            side.setdefault(group, set()).add(shards.clip_key(c["meta"]) in test)
        assert all(len(v) == 1 for v in side.values()) and test


def test_a_manifest_that_disagrees_with_its_shard_is_an_error(shard_dir):
    root, mead, _ = shard_dir
    shards.write_manifest(root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["clips"][1]["record"] += 1  # one record off
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(shards.ShardError, match=r"a\.array_record\[6\]: holds frame 1 of "
                       r"'mead/M005#happy#level_2#001' where the index expects frame 0 of "
                       r"'mead/M005#happy#level_2#001'; the manifest disagrees"):
        source.ClipStore(root).read_frames(1, [0])
    manifest["clips"][1]["record"] = 0  # another clip of the same length: same positions
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(shards.ShardError, match=r"a\.array_record\[3\]: holds frame 2 of "
                       r"'mead/M003#neutral#level_1#001' where the index expects frame 2 of "
                       r"'mead/M005#happy#level_2#001'"):
        source.ClipStore(root).read_frames(1, [2])
