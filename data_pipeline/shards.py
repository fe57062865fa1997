"""`python -m data_pipeline.shards DIR [split flags]`: indexes a shard directory (its
manifest.json and splits/). The command line scripts use; the code is in
data_pipeline.records (shards: the format, splits: the rules and this command)."""

from data_pipeline.records.splits import main

if __name__ == "__main__":
    main()
