"""launch.upgrade_shards: version-1 shard directories and TFDS builds become version 2."""

import hashlib
import json

import msgpack
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

import data_pipeline
from data_pipeline import loaders, synthetic
from data_pipeline.loaders import targets
from data_pipeline.records import shards, source, upgrade
from launch import upgrade_shards

_ARRAYS = ("mel_windows", "landmarks", "landmark_valid", "audio", "factors")


def _v1_record(clip) -> bytes:
    """The version-1 encoding (one msgpack map per clip), as the old writer made it."""
    arrays = {n: [clip[n].dtype.str, list(clip[n].shape), clip[n].tobytes()] for n in _ARRAYS}
    return msgpack.packb({"version": 1, "meta": clip["meta"], "arrays": arrays,
                          "frames": list(clip["frames"])}, use_bin_type=True)


def _clips(n=6):
    cfg = synthetic.SyntheticConfig(num_speakers=3, clips_per_speaker=2, frames_per_clip=6, size=32)
    return [synthetic.render_clip(cfg, s, c) for s in range(3) for c in range(2)][:n]


def _same(a, b):
    assert a["meta"] == b["meta"] and list(a["frames"]) == list(b["frames"])
    for name in _ARRAYS:
        np.testing.assert_array_equal(a[name], b[name])


def test_version_1_shard_directory(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    clips = _clips()
    for s in range(3):
        path = old / "synthetic" / f"S{s:03d}.array_record"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = ArrayRecordWriter(str(path), "group_size:1,uncompressed")
        for clip in clips[2 * s: 2 * s + 2]:
            writer.write(_v1_record(clip))
        writer.close()
    manifest = {"format": "edtalk-clip-shards", "version": 1, "num_clips": 6, "shards": [],
                "clips": []}
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "splits").mkdir()
    keys = [shards.clip_key(c["meta"]) for c in clips]
    (old / "splits" / "train.json").write_text(json.dumps(keys[:4]))
    (old / "splits" / "test.json").write_text(json.dumps(keys[4:]))
    # Stage-4 targets of the old directory: rows follow the clips, which keep their order.
    tdir = old / "targets" / "t"
    tdir.mkdir(parents=True)
    rows = {s: np.random.default_rng(s).standard_normal((12, 26)).astype(np.float32) for s in range(3)}
    for s, r in rows.items():
        (tdir / "synthetic").mkdir(exist_ok=True)
        np.save(tdir / "synthetic" / f"S{s:03d}.npy", r)
    info = {"format": targets.FORMAT, "version": targets.VERSION, "name": "t", "checkpoint": None,
            "checkpoint_sha256": None, "manifest_sha256": hashlib.sha256(
                (old / "manifest.json").read_bytes()).hexdigest(), "lip_dim": 20, "pose_dim": 6,
            "complete": True, "bad_clips": {},
            "shards": {f"synthetic/S{s:03d}.array_record": {"file": f"synthetic/S{s:03d}.npy", "rows": 12}
                       for s in range(3)}}
    (tdir / "targets.json").write_text(json.dumps(info))

    with pytest.raises(shards.ShardError, match=f"convert it with `python -m launch.upgrade_shards {old}"):
        data_pipeline.num_clips(old)
    assert upgrade_shards.main([str(old), "--out", str(new), "--no-progress"]) == 0
    assert data_pipeline.num_clips(new) == 6
    for g, clip in enumerate(clips):
        _same(source.ClipStore(new).record(g), clip)
    assert [shards.clip_key(source.ClipStore(new, "test").meta(i)) for i in range(2)] == keys[4:]
    stored = targets.load_targets(new, "t")
    np.testing.assert_array_equal(np.concatenate(stored.get(5), 1), rows[2][6:])
    it = loaders.make_loader(loaders.LoaderConfig(str(new), stage=4, batch_size=2, image_size=32,
                                                  targets="t", seed=0))
    assert next(it)["lip_targets"].shape == (2, 5, 20)
    # Already converted: a clear error, not a second copy.
    assert upgrade_shards.main([str(new), "--out", str(tmp_path / "again")]) == 2


class _V1Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS build of the version-1 layout (builder 1.0.0): one example per clip."""

    VERSION = tfds.core.Version("1.0.0")
    name = "folder_clips"

    def _info(self):
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "clip": tfds.features.Scalar(dtype=np.object_), "clip_id": text, "dataset": text,
            "speaker": text, "emotion": text, "level": tfds.features.Scalar(dtype=np.int32),
            "num_frames": tfds.features.Scalar(dtype=np.int32)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(_clips()[:4]), "test": self._generate_examples(_clips()[4:])}

    def _generate_examples(self, clips):
        for clip in clips:
            m = clip["meta"]
            yield m["clip_id"], {"clip": _v1_record(clip), **{k: m[k] for k in (
                "clip_id", "dataset", "speaker", "emotion", "level", "num_frames")}}


def test_version_1_tfds_build(tmp_path):
    builder = _V1Builder(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    with pytest.raises(shards.ShardError, match="format version 1.*launch.upgrade_shards"):
        data_pipeline.num_clips(builder.data_dir)
    new = tmp_path / "new"
    assert upgrade_shards.main([builder.data_dir, "--out", str(new), "--no-progress"]) == 0
    clips = {shards.clip_key(c["meta"]): c for c in _clips()}
    for split, n in (("train", 4), ("test", 2)):
        store = source.ClipStore(new, split)
        assert len(store) == n
        for i in range(n):
            _same(store.record(i), clips[shards.clip_key(store.meta(i))])


def test_hdtf_video_ids_become_persons_and_splits_hold_persons_out(tmp_path):
    """Format-1 HDTF data named speakers by video id; the conversion names the person and
    writes the splits again, so no person is on both sides."""
    old, new = tmp_path / "old", tmp_path / "new"
    ids = ["WDA_BarackObama_000", "WDA_BarackObama_001", "WRA_KristiNoem0_000",
           "WRA_KristiNoem2_001", "RD_Radio34_003", "WDA_JoeNeguse_000", "WDA_JoeNeguse_001"]
    base = _clips(1)[0]
    path = old / "hdtf.array_record"
    path.parent.mkdir(parents=True)
    writer = ArrayRecordWriter(str(path), "group_size:1,uncompressed")
    for vid in ids:
        meta = dict(base["meta"], dataset="hdtf", speaker=vid, clip_id=f"{vid}#000", emotion="", level=0)
        writer.write(_v1_record(dict(base, meta=meta)))
    writer.close()
    (old / "splits").mkdir()  # the old rule: video ids hashed, one person on both sides
    (old / "splits" / "train.json").write_text(json.dumps([f"hdtf/{v}#000" for v in ids[::2]]))
    (old / "splits" / "test.json").write_text(json.dumps([f"hdtf/{v}#000" for v in ids[1::2]]))
    result = upgrade.upgrade(old, new, progress=False)
    assert result["hdtf_speakers_relabelled"] == 7
    store = source.ClipStore(new)
    assert sorted({store.meta(i)["speaker"] for i in range(len(store))}) == [
        "RD_Radio34", "WDA_BarackObama", "WDA_JoeNeguse", "WRA_KristiNoem"]
    side = {}
    for split in ("train", "test"):
        test_store = source.ClipStore(new, split)
        for i in range(len(test_store)):
            side.setdefault(test_store.meta(i)["speaker"], set()).add(split)
    assert len(side) == 4 and all(len(v) == 1 for v in side.values())
