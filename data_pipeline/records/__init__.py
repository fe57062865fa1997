"""The record layer: what a clip is (schema), how clips are stored (shards: the
frame-addressable record format, ArrayRecord shard files, the manifest), how they are
read (source: ClipSource / ClipStore; tfds_source: TfdsClips), the splits (splits) and
the converter from the old format (upgrade). Importing this package loads nothing."""
