"""TensorFlow-Datasets builders for MEAD, HDTF and a folder of videos (no TensorFlow needed).

Each builder reads a raw layout from the manual directory (data_pipeline.datasets),
runs the same `preprocess.process(item, options)` as the local runner and writes the same
clip records in `array_record` files: the feature "clip" holds `shards.encode_clip(clip)`
bytes, beside a few scalar meta features for inspection. Read them with
`open_tfds_clips(builder_dir, split)`, `tfds.data_source` or grain.

Generation: with a Beam runner in the DownloadConfig, `beam.Create(items) |
beam.FlatMap(_examples)` (Beam workers import this module: the package must be installed
there; a split whose videos all give no clip makes TFDS fail, "No examples were
yielded"). Otherwise (faster than Beam's DirectRunner on one machine) `run_local`'s
process pool of `workers` processes stages one shard per video under the download dir,
resumable and in bounded memory, and the plain generators copy those records; splits
left empty by skipped videos are left out, skips go to the metadata ("skipped"), and
the staging folder is removed once the build succeeds. Build from Python or with
`python -m launch.build_tfds` (the stock `tfds build` CLI imports TensorFlow).

Splits are by speaker, with the rules of `shards.write_splits`: MEAD test actors M003,
M030, W009, W015; HDTF and folder speakers held out by `shards.hash_held_out` (fractions
0.2 and 0.125) unless `test_speakers` is given. Empty splits are left out.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import datasets, preprocess, shards
from data_pipeline.preprocess import PreprocessOptions, VideoItem

_META_FEATURES = ("clip_id", "dataset", "speaker", "emotion", "level", "num_frames")


def _examples(item: VideoItem, options: PreprocessOptions) -> List[Tuple[str, dict]]:
    """(key, example) for each clip of one video (the Beam path); skips are logged and
    counted in Beam metrics."""
    from apache_beam.metrics import Metrics

    result = preprocess.process(item, options)
    for what, why in result.skipped:
        logging.warning("skipped %s: %s", what, why)
        Metrics.counter("edtalk_preprocess", "skipped_" + why.split(":")[0].replace(" ", "_")).inc()
    return [(clip["meta"]["clip_id"], _example(shards.encode_clip(clip))) for clip in result.clips]


def _example(record: bytes) -> dict:
    meta = shards.read_meta(record)
    return {**{name: meta[name] for name in _META_FEATURES}, "clip": record}


class _ClipsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: subclasses set LAYOUT and the split rule."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Clip records (data_pipeline.schema), format version 1."}
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
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="EDTalk clip records: 25 fps square face crops (JPEG), mel windows, "
                        "68-point landmarks, 16 kHz int16 audio; see data_pipeline/schema.py.",
            features=tfds.features.FeaturesDict({
                "clip": tfds.features.Scalar(dtype=np.object_, doc="shards.encode_clip bytes"),
                "clip_id": text, "dataset": text, "speaker": text, "emotion": text,
                "level": tfds.features.Scalar(dtype=np.int32),
                "num_frames": tfds.features.Scalar(dtype=np.int32),
            }),
            metadata=tfds.core.MetadataDict(options=dataclasses.asdict(self._options)),
        )

    def _download_and_prepare(self, dl_manager, download_config):
        # A Beam runner or options in the DownloadConfig select the Beam path.
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        super()._download_and_prepare(dl_manager, download_config)
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
        return shards.hash_held_out(speakers, self.TEST_FRACTION, dataset + "/")

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
        return {name: self._generate_examples(part, name, os.path.join(staging, "shards"))
                for name, part in parts.items() if part}

    def _generate_examples(self, items: Sequence[VideoItem], split: str, staged: Optional[str] = None):
        if staged is not None:
            return _read_staged(staged, items)
        import apache_beam as beam

        return (f"{split}_items" >> beam.Create(list(items))
                | f"{split}_process" >> beam.FlatMap(_examples, options=self._options))


def _read_staged(shards_dir: str, items: Sequence[VideoItem]) -> Iterator[Tuple[str, dict]]:
    """(key, example) for the clips run_local wrote, record bytes unchanged."""
    for item in items:
        path = os.path.join(shards_dir, item.key + shards.SHARD_SUFFIX)
        reader = shards.open_reader(path)
        try:
            for i in range(reader.num_records()):
                example = _example(shards.read_record(reader, path, i))
                yield example["clip_id"], example
        finally:
            reader.close()


class MeadClips(_ClipsBuilder):
    """MEAD front videos (manual_dir: the MEAD root or MEAD_front/Original_video)."""

    LAYOUT = DATASET = "mead"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place MEAD (<actor>/video/front/... and <actor>/audio/...) in manual_dir."

    def _held_out(self, speakers, dataset):
        test = shards.MEAD_TEST_SPEAKERS if self._test_speakers is None else self._test_speakers
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


class TfdsClips:
    """Random access to the clips of one split of a TFDS-built dataset, with ClipStore's
    reading interface: `record(i)` (frames as JPEG bytes, also `[i]`), `clip(i)` (frames
    decoded), `meta(i)`, `indices_by(key)`, `global_index(i)`, `len()`; the grain loaders
    of stages 1-3 read it like a shard directory. Pickles cheaply (reopened lazily in
    each process). TFDS keeps no separate meta index: the first `indices_by` reads every
    record once."""

    def __init__(self, builder_dir: str, split: str = "train"):
        self.builder_dir, self.split = str(builder_dir), split
        self._source = None
        self._metas: Optional[List[dict]] = None
        if split not in self._open().info.splits:
            raise KeyError(f"{builder_dir}: no split {split!r} (has {sorted(self._open().info.splits)})")

    def _open(self):
        return tfds.builder_from_directory(self.builder_dir)

    @property
    def source(self):
        if self._source is None:
            self._source = self._open().as_data_source(split=self.split)
        return self._source

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    @property
    def shards_dir(self) -> str:  # the loaders name their data by this
        return self.builder_dir

    def global_index(self, i: int) -> int:
        """Index within the split: TFDS splits are separate sources (no global manifest)."""
        return i

    def __len__(self) -> int:
        return len(self.source)

    def _bytes(self, i: int) -> Tuple[bytes, str]:
        return self.source[i]["clip"], f"{self.builder_dir}[{self.split}][{i}]"

    def record(self, i: int) -> dict:
        data, where = self._bytes(i)
        return shards.decode_clip(data, decode_frames=False, where=where)

    def clip(self, i: int) -> dict:
        data, where = self._bytes(i)
        return shards.decode_clip(data, decode_frames=True, where=where)

    def meta(self, i: int) -> dict:
        data, where = self._bytes(i)
        return shards.read_meta(data, where=where)

    def indices_by(self, key: str) -> Dict[object, List[int]]:
        """Meta value of `key` (e.g. "speaker") -> indices of its clips."""
        if self._metas is None:
            self._metas = [self.meta(i) for i in range(len(self))]
        groups: Dict[object, List[int]] = {}
        for i, meta in enumerate(self._metas):
            groups.setdefault(meta[key], []).append(i)
        return groups

    def __getitem__(self, i: int) -> dict:
        return self.record(i)


def open_tfds_clips(builder_dir: str, split: str = "train") -> TfdsClips:
    """The clips of `split` in a TFDS dataset directory (e.g. DATA_DIR/folder_clips/1.0.0)."""
    return TfdsClips(builder_dir, split)
