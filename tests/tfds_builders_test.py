"""TFDS builders: local pool and Beam DirectRunner write the clips run_local writes."""

import json
import pickle

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_pipeline

from data_pipeline import loaders, preprocess
from data_pipeline.preprocess import PreprocessOptions, audio, datasets, tfds_builders, video_io
from data_pipeline.records import shards, tfds_source
from data_pipeline.records import source as records_source

OPTIONS = PreprocessOptions(size=64, clip_seconds=0.8, min_clip_seconds=0.4)


def _video(path, samples_dir, image, n=40, seed=0):
    face = cv2.cvtColor(cv2.imread(str(samples_dir / image)), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(seed)
    frames = np.stack([np.roll(face, int(rng.integers(-3, 4)), axis=1) for _ in range(n)])
    speech = audio.load_audio(samples_dir / "mouth_source.wav")[: n * 640]
    path.parent.mkdir(parents=True, exist_ok=True)
    video_io.write_video(path, frames, audio=speech)


def _by_id(source):
    return {source.meta(i)["clip_id"]: source.record(i) for i in range(len(source))}


def _assert_same(a, b):
    assert a.keys() == b.keys() and a
    for key in a:
        x, y = a[key], b[key]
        assert x["meta"] == y["meta"] and x["frames"] == y["frames"]
        for name in ("mel_windows", "landmarks", "landmark_valid", "audio", "factors"):
            np.testing.assert_array_equal(x[name], y[name])


def test_folder_builder_local_pool_matches_run_local(samples_dir, tmp_path):
    raw = tmp_path / "raw"
    _video(raw / "alice.mp4", samples_dir, "identity_source.jpg")
    _video(raw / "bob.mp4", samples_dir, "crop_identity_source.jpg", seed=1)
    _video(raw / "carol.mp4", samples_dir, "identity_source.jpg", seed=3)  # train has 2: the pool runs
    builder = tfds_builders.FolderClips(data_dir=str(tmp_path / "tfds"), options=OPTIONS, workers=2)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
    assert set(builder.info.splits) == {"train", "test"}  # one of three speakers held out by hash
    assert builder.info.metadata["options"]["size"] == 64

    report = preprocess.run_local(datasets.discover(str(raw)), tmp_path / "local", OPTIONS, progress=False)
    store = records_source.ClipStore(tmp_path / "local" / "shards")
    local = {store.meta(i)["clip_id"]: store.record(i) for i in range(len(store))}

    built = {}
    for split in ("train", "test"):
        source = tfds_source.open_tfds_clips(builder.data_dir, split)
        built.update(_by_id(source))
        # The same split rule as splits.write_splits (run_local).
        expected = json.loads((tmp_path / "local" / "shards" / "splits" / f"{split}.json").read_text())
        assert {f"folder/{k}" for k in _by_id(source)} == set(expected)
    assert len(built) == report["clips_written"]
    _assert_same(built, local)

    # One example per record, readable by tfds.data_source without the builder code: a
    # clip's header, then its frames, at the position the index names.
    raw_source = tfds.data_source("folder_clips", data_dir=str(tmp_path / "tfds"), split="train")
    source = pickle.loads(pickle.dumps(tfds_source.open_tfds_clips(builder.data_dir, "train")))
    entry = builder.info.metadata["index"]["train"][1]
    header = raw_source[entry["record"]]
    assert header["t"] == 0 and shards.read_meta(header["record"]) == source.meta(1)
    assert raw_source[entry["record"] + 3]["t"] == 3
    assert len(raw_source) == sum(1 + source.num_frames(i) for i in range(len(source)))
    # Metadata without reading; a frame read reads that frame's record only.
    assert source.indices_by("speaker") and source.bytes_read == 0
    part = source.read_frames(1, [2])
    assert source.bytes_read == len(raw_source[entry["record"] + 3]["record"])
    np.testing.assert_array_equal(part["landmarks"][0], source.clip(1)["landmarks"][2])
    clip = source.clip(0)
    assert clip["frames"].shape[1:] == (64, 64, 3) and clip["frames"].dtype == np.uint8
    groups = source.indices_by("speaker")
    assert sorted(i for ids in groups.values() for i in ids) == list(range(len(source)))
    assert all(source.meta(i)["speaker"] == spk for spk, ids in groups.items() for i in ids)
    with pytest.raises(KeyError, match="validation"):
        tfds_source.open_tfds_clips(builder.data_dir, "validation")
    # The package-level reader API opens TFDS-built directories too (train split).
    assert data_pipeline.num_clips(builder.data_dir) == len(source)
    np.testing.assert_array_equal(data_pipeline.read_clip(builder.data_dir, 0)["frames"], clip["frames"])
    # ... and so do the grain loaders.
    it = loaders.make_loader(loaders.LoaderConfig(shards_dir=builder.data_dir, stage=1, batch_size=2, image_size=64))
    batch = next(it)
    assert batch["source"].shape == (2, 64, 64, 3) and batch["source"].dtype == np.float32


def test_mead_builder_with_beam_splits_by_actor(samples_dir, tmp_path):
    raw = tmp_path / "MEAD"
    _video(raw / "M003" / "video" / "front" / "happy" / "level_1" / "001.mp4", samples_dir, "identity_source.jpg")
    _video(raw / "M005" / "video" / "front" / "sad" / "level_3" / "002.mp4", samples_dir,
           "crop_identity_source.jpg", seed=2)
    from apache_beam.options.pipeline_options import PipelineOptions

    builder = tfds_builders.MeadClips(data_dir=str(tmp_path / "tfds"), options=OPTIONS)
    config = tfds.download.DownloadConfig(
        manual_dir=str(raw), beam_runner="DirectRunner",
        beam_options=PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]))
    builder.download_and_prepare(download_config=config)
    test = _by_id(tfds_source.open_tfds_clips(builder.data_dir, "test"))
    train = _by_id(tfds_source.open_tfds_clips(builder.data_dir, "train"))
    assert {c["meta"]["speaker"] for c in test.values()} == {"M003"}  # official test actor
    assert {(c["meta"]["speaker"], c["meta"]["emotion"], c["meta"]["level"]) for c in train.values()} == {
        ("M005", "sad", 3)}
    # Beam wrote exactly what process() makes.
    items = datasets.discover(str(raw), "mead")
    direct = {c["meta"]["clip_id"]: c for it in items for c in preprocess.process(it, OPTIONS).clips}
    _assert_same({**test, **train}, direct)


def test_build_tfds_cli_leaves_out_a_split_emptied_by_skips(samples_dir, tmp_path, capsys):
    from launch import build_tfds

    _video(tmp_path / "raw" / "solo.mp4", samples_dir, "identity_source.jpg", n=30)
    noise = np.random.default_rng(0).integers(0, 256, (25, 96, 96, 3), dtype=np.uint8)
    video_io.write_video(tmp_path / "raw" / "zz.mp4", noise, audio=np.zeros(16000, np.float32))
    rc = build_tfds.main(["--dataset", "folder", "--manual-dir", str(tmp_path / "raw"), "--data-dir",
                          str(tmp_path / "tfds"), "--size", "64", "--clip-seconds", "0.8",
                          "--test-speakers", "zz", "--max-failure-rate", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "{'train': 1}" in out and "'no face': 1" in out
    builder_dir = tmp_path / "tfds" / "folder_clips" / "2.0.0"
    source = tfds_source.open_tfds_clips(builder_dir, "train")
    assert len(source) == 1 and source.meta(0)["clip_id"] == "solo#1" and source.meta(0)["size"] == 64
    metadata = json.loads((builder_dir / "metadata.json").read_text())
    assert metadata["skipped"]["zz"][0][1].startswith("no face")
    assert not list((tmp_path / "tfds" / "downloads").glob("*staging*"))  # removed once built
    assert build_tfds.main(["--manual-dir", "x", "--data-dir", "y", "--clip-seconds", "-1"]) == 2
