"""TensorFlow-Datasets builders for MEAD, HDTF and a folder of videos (no TensorFlow needed).

Each builder reads a raw layout from the manual directory (data_pipeline.preprocess.datasets),
runs the same `preprocess.process(item, options)` as the local runner and writes the same
records (format version 2, data_pipeline.records.shards) in `array_record` files, one TFDS
example per record: the feature "record" holds the bytes, "clip" the clip key
("<dataset>/<clip_id>") and "t" the record's place in its clip (0 = header, 1 + frame).
Examples are not shuffled: they are ordered by key, `(sha1(clip key) << 24) | t`, so a
clip's records are consecutive and a sample reads only the frames it uses. The index
(per split: each clip's first example, meta and landmark validity) is stored in the
dataset's metadata ("index"), so metadata is served without reading any example. Read
with `records.tfds_source.open_tfds_clips(builder_dir, split)` (a `ClipSource`), `tfds.data_source`
or grain.

Generation: with a Beam runner in the DownloadConfig, `beam.Create(items) |
beam.FlatMap(_examples)` (Beam workers import this module: the package must be installed
there; a split whose videos all give no clip makes TFDS fail, "No examples were
yielded"). Otherwise (faster than Beam's DirectRunner on one machine) `run_local`'s
process pool of `workers` processes stages one shard per video under the download dir,
resumable and in bounded memory, and the plain generators copy those records; splits
left empty by skipped videos are left out, skips go to the metadata ("skipped"), and
the staging folder is removed once the build succeeds. Build from Python or with
`python -m launch.build_tfds` (the stock `tfds build` CLI imports TensorFlow).

Splits are by speaker, with the rules of `splits.write_splits`: MEAD test actors M003,
M030, W009, W015; HDTF and folder speakers held out by `splits.hash_held_out` (fractions
0.2 and 0.125) unless `test_speakers` is given. Empty splits are left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from typing import Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import preprocess
from data_pipeline.preprocess import PreprocessOptions, VideoItem, datasets
from data_pipeline.records import shards, splits

_POSITION_BITS = 24  # records per clip < 2**24 (a clip of 16M frames)


def _key(clip_key: str, t: int) -> int:
    """The example key of record t of a clip: the examples of a split are sorted by it."""
    return (int(hashlib.sha1(clip_key.encode()).hexdigest()[:16], 16) << _POSITION_BITS) | t


def _clip_examples(records: Sequence[bytes]) -> List[Tuple[int, dict]]:
    """(key, example) for each record of one clip (header first)."""
    clip = shards.clip_key(shards.read_meta(records[0]))
    return [(_key(clip, t), {"record": data, "clip": clip, "t": t}) for t, data in enumerate(records)]


def _examples(item: VideoItem, options: PreprocessOptions) -> List[Tuple[int, dict]]:
    """(key, example) for each record of each clip of one video (the Beam path); skips are
    logged and counted in Beam metrics."""
    from apache_beam.metrics import Metrics

    result = preprocess.process(item, options)
    for what, why in result.skipped:
        logging.warning("skipped %s: %s", what, why)
        Metrics.counter("edtalk_preprocess", "skipped_" + why.split(":")[0].replace(" ", "_")).inc()
    return [e for clip in result.clips for e in _clip_examples(shards.encode_clip(clip))]


def _index(entries: Sequence[dict]) -> List[dict]:
    """Clip entries ({"invalid_landmarks", **meta}) -> the split's index: the entries in
    example order, each with "record", the position of its header example."""
    index, position = [], 0
    for entry in sorted(entries, key=lambda e: _key(shards.clip_key(e), 0)):
        index.append({**{k: v for k, v in entry.items() if k not in ("record", "shard")},
                      "record": position})
        position += 1 + entry["num_frames"]
    return index


class _ClipsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: subclasses set LAYOUT and the split rule."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Clip records (data_pipeline.records.schema), format version 1.",
                     "2.0.0": "Frame-addressable records (format version 2), index in metadata."}
    LAYOUT = "folder"
    DATASET = "folder"
    TEST_FRACTION = 0.125

    def __init__(self, *, options: PreprocessOptions = PreprocessOptions(), workers: int = 1,
                 test_speakers: Optional[Collection[str]] = None, find: Optional[dict] = None, **kwargs):
        self._options = options.validate()
        self._workers = workers
        self._test_speakers = None if test_speakers is None else set(test_speakers)
        self._find = dict(find or {})
        self._use_beam = False
        self.report: Optional[dict] = None  # run_local's report (local path)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="EDTalk clip records: 25 fps square face crops (JPEG), mel windows, "
                        "68-point landmarks, 16 kHz int16 audio; see data_pipeline/records/schema.py "
                        "and data_pipeline/records/shards.py (format version 2).",
            features=tfds.features.FeaturesDict({
                "record": tfds.features.Scalar(dtype=np.object_, doc="one record (shards.py)"),
                "clip": tfds.features.Text(doc="clip key <dataset>/<clip_id>"),
                "t": tfds.features.Scalar(dtype=np.int32, doc="0: header; 1 + frame index"),
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(options=dataclasses.asdict(self._options)),
        )

    def _download_and_prepare(self, dl_manager, download_config):
        # A Beam runner or options in the DownloadConfig select the Beam path.
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        self._entries: Dict[str, List[dict]] = {}
        super()._download_and_prepare(dl_manager, download_config)
        index = {}
        for split in self.info.splits:
            entries = self._entries.get(split)
            if entries is None:  # Beam path: the clips are known only from the written split
                entries = _scan_entries(self.as_data_source(split=split))
            index[split] = _index(entries)
        self.info.metadata["index"] = index
        if self.report is not None:
            self.info.metadata["skipped"] = {
                key: st["skipped"] for key, st in self.report["items"].items() if st["skipped"]}
            shutil.rmtree(self._staging(dl_manager))  # built: the staged copy is not needed

    def _items(self, manual_dir) -> List[VideoItem]:
        kwargs = dict(self._find)
        if self.LAYOUT == "folder":
            kwargs.setdefault("dataset", self.DATASET)
        return datasets.discover(str(manual_dir), self.LAYOUT, **kwargs)

    def _held_out(self, speakers: Collection[str], dataset: str) -> set:
        if self._test_speakers is not None:
            return set(speakers) & self._test_speakers
        return splits.hash_held_out(speakers, self.TEST_FRACTION, dataset + "/")

    def _staging(self, dl_manager) -> str:
        return os.path.join(os.fspath(dl_manager.download_dir), f"{self.name}_{self.version}_staging")

    def _split_generators(self, dl_manager):
        items = self._items(dl_manager.manual_dir)
        if not items:
            raise FileNotFoundError(f"{dl_manager.manual_dir}: no {self.LAYOUT} videos found")
        test = self._held_out({it.speaker for it in items}, items[0].dataset)
        parts = {"train": [it for it in items if it.speaker not in test],
                 "test": [it for it in items if it.speaker in test]}
        if self._use_beam:
            return {name: self._generate_examples(part, name) for name, part in parts.items() if part}
        # Local path: the process pool of run_local stages one shard per video (resumable,
        # bounded memory); splits whose videos all gave no clip are left out (TFDS cannot
        # write an empty split).
        staging = self._staging(dl_manager)
        self.report = preprocess.run_local(items, staging, self._options, workers=self._workers)
        made = {key for key, st in self.report["items"].items() if st["clips"]}
        parts = {name: [it for it in part if it.key in made] for name, part in parts.items()}
        if not any(parts.values()):
            raise ValueError(f"{dl_manager.manual_dir}: no video gave a clip; see {staging}/report.json")
        staged = os.path.join(staging, "shards")
        self._entries = {name: [e for it in part for e in shards.shard_clips(_staged_path(staged, it))]
                         for name, part in parts.items() if part}
        return {name: self._generate_examples(part, name, staged)
                for name, part in parts.items() if part}

    def _generate_examples(self, items: Sequence[VideoItem], split: str, staged: Optional[str] = None):
        if staged is not None:
            return _read_staged(staged, items)
        import apache_beam as beam

        return (f"{split}_items" >> beam.Create(list(items))
                | f"{split}_process" >> beam.FlatMap(_examples, options=self._options))


def _staged_path(shards_dir: str, item: VideoItem) -> str:
    return os.path.join(shards_dir, item.key + shards.SHARD_SUFFIX)


def _read_staged(shards_dir: str, items: Sequence[VideoItem]) -> Iterator[Tuple[int, dict]]:
    """(key, example) for the records run_local wrote, bytes unchanged."""
    for item in items:
        path = _staged_path(shards_dir, item)
        reader = shards.open_reader(path)
        try:
            for entry in shards.shard_clips(path):
                first = entry["record"]
                records = shards.read_records(reader, path, range(first, first + 1 + entry["num_frames"]))
                yield from _clip_examples(records)
        finally:
            reader.close()


def _scan_entries(source) -> List[dict]:
    """The clip entries of a written split, from its header examples (reads every example:
    the Beam path only, where no process saw all the clips)."""
    entries = []
    for k in range(len(source)):
        example = source[k]
        if example["t"] == 0:
            meta, invalid = shards.read_header(example["record"], where=f"example {k}")
            entries.append({"invalid_landmarks": invalid, **meta})
    return entries


class MeadClips(_ClipsBuilder):
    """MEAD front videos (manual_dir: the MEAD root or MEAD_front/Original_video)."""

    LAYOUT = DATASET = "mead"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place MEAD (<actor>/video/front/... and <actor>/audio/...) in manual_dir."

    def _held_out(self, speakers, dataset):
        test = splits.MEAD_TEST_SPEAKERS if self._test_speakers is None else self._test_speakers
        return set(speakers) & set(test)


class HdtfClips(_ClipsBuilder):
    """HDTF raw videos (manual_dir: the folder of <video id>.mp4)."""

    LAYOUT = DATASET = "hdtf"
    TEST_FRACTION = 0.2
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the HDTF videos (<video id>.mp4) in manual_dir."


class FolderClips(_ClipsBuilder):
    """Any folder of talking-head videos, e.g. one person for fine-tuning."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the videos (any sub-folders) in manual_dir."


BUILDERS: Dict[str, type] = {"mead": MeadClips, "hdtf": HdtfClips, "folder": FolderClips}
