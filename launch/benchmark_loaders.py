"""Throughput of the stage loaders: samples/s against worker count, median of timed
windows after a warm-up, and CPU use (this process + its workers, via psutil).

  python -m launch.benchmark_loaders --stages 1,2,3,4 --workers 0,1,2 \
      --dtypes float32,uint8 --doc docs/benchmarks.md

Without --shards it renders (or reuses) a synthetic 256-px dataset in --out. Stage 4
needs targets: unless --targets names existing ones, they are computed as
"bench_random_lip_pose" by a randomly initialised lip-pose generator (widths / 16) through
the real targets path (values untrained; loader speed does not depend on them). With --doc, the generated table in the "## Data loaders" section of
that file is replaced (text around it is kept).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from absl import flags

SECTION = "## Data loaders"
BEGIN, END = "<!-- benchmark_loaders table -->", "<!-- end benchmark_loaders table -->"


def _random_generator_coeffs(size: int):
    """Stage-4 targets for timing: the real targets path (data_pipeline.loaders.targets through a
    lip-pose generator) with a randomly initialised generator at widths / 16. The loader's
    speed does not depend on the coefficient values."""
    import jax

    from edtalk_jax import inference
    from edtalk_jax.models import build_model, example_inputs

    cfg = dict(size=size, width_div=16, exp_dim=0)
    model = build_model("lip_pose", cfg)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), *example_inputs("lip_pose", cfg))
    return inference.coefficient_fn(model, variables, ("lip", "pose"), batch_size=64)


def _dataset(args) -> tuple[str, str]:
    from data_pipeline import synthetic
    from data_pipeline.loaders import targets

    shards_dir = args.shards
    if shards_dir is None:
        shards_dir = args.out
        cfg = synthetic.SyntheticConfig(num_speakers=args.speakers, clips_per_speaker=args.clips,
                                        frames_per_clip=125, size=args.size)
        synthetic.write_dataset(cfg, shards_dir, workers=2, progress=False)
    name = args.targets or "bench_random_lip_pose"
    if args.targets is None:
        try:
            targets.load_targets(shards_dir, name)
        except targets.TargetsError:
            targets.compute_targets(shards_dir, name, _random_generator_coeffs(args.size), progress=False,
                                    model=f"random lip_pose, widths / 16, seed 0, {args.size}px")
    return shards_dir, name


def _cpu_seconds(proc) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # a worker that just exited
            pass
    return total


def measure(cfg, warmup: int, windows: int, window_batches: int) -> dict:
    """samples/s of each of `windows` windows of `window_batches` batches (after `warmup`
    batches), and the CPU cores the loader used meanwhile (process + workers)."""
    import psutil

    from data_pipeline import loaders

    proc = psutil.Process()
    it = loaders.make_loader(cfg)
    try:
        for _ in range(warmup):
            next(it)
        rates, cpu0, wall0 = [], _cpu_seconds(proc), time.perf_counter()
        for _ in range(windows):
            start, n = time.perf_counter(), 0
            for _ in range(window_batches):
                n += len(next(it)["index"])
            rates.append(n / (time.perf_counter() - start))
        cores = (_cpu_seconds(proc) - cpu0) / (time.perf_counter() - wall0)
    finally:
        it.close()
    return {"rates": rates, "cores": cores, "skipped": sum(it.stats["skipped"].values())}


def bytes_per_sample(cfg, samples: int = 64) -> dict:
    """Record bytes one sample reads (frame records, format 2), against the bytes of the
    whole clips it touches (what a format-1 loader read: every clip record it used), over
    `samples` samples drawn in this process."""
    from data_pipeline.loaders import stages, targets
    from data_pipeline.records import directory, shards

    store = directory.open_clips(cfg.shards_dir, cfg.split)
    target_store = targets.load_targets(cfg.shards_dir, cfg.targets) if cfg.stage == 4 else None
    usable, _ = stages.usable_clips(store, cfg, target_store)
    sampler = stages.Sampler(store, cfg, usable, target_store)
    sizes: dict[int, int] = {}
    touched: set[int] = set()
    read = store.read_frames

    def counting(i, frames, **kw):
        touched.add(i)
        return read(i, frames, **kw)

    store.read_frames = counting
    frames_read, whole = 0, 0
    for k in range(samples):
        touched.clear()
        before = store.bytes_read
        sampler((0, int(usable[k % len(usable)])))
        frames_read += store.bytes_read - before
        for i in touched:
            if i not in sizes:
                sizes[i] = sum(map(len, shards.encode_clip(store.record(i))))
            whole += sizes[i]
    store.bytes_read = 0
    return {"frames": frames_read / samples, "whole_clips": whole / samples}


def _bytes_table(stats: dict) -> str:
    lines = ["Bytes read per sample (64 samples per stage, in-process): the frame records a "
             "sample reads (format 2) against the whole clip records of the clips it touches "
             "(what format 1 read).", "",
             "| stage | bytes/sample (frame records) | bytes/sample (whole clips, format 1) | fewer |",
             "| --- | --- | --- | --- |"]
    for stage, b in stats.items():
        lines.append(f"| {stage} | {b['frames'] / 1e3:.1f} kB | {b['whole_clips'] / 1e6:.2f} MB "
                     f"| {b['whole_clips'] / b['frames']:.0f}x |")
    return "\n".join(lines) + "\n"


def _table(results: dict, args, command: str, load: tuple[float, float]) -> str:
    lines = [
        f"`{command}`", "",
        f"{args.size}² frames, batch {args.batch}. Per configuration "
        f"and round: {args.warmup} warm-up batches, then {args.windows} timed windows of "
        f"{args.window_batches} batches; configurations interleaved over {args.rounds} rounds. "
        "samples/s = median over all windows; cores = CPU seconds of the process and its "
        "workers / wall seconds (psutil), mean over rounds. Load average (1 min) "
        f"{load[0]:.2f} before, {load[1]:.2f} after, {os.cpu_count()} cores shared.", "",
        "| stage | images | workers | samples/s (median) | windows min-max | cores used "
        "| samples/s per core |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
    for (stage, dtype, workers), runs in results.items():
        rates = [r for run in runs for r in run["rates"]]
        median, cores = statistics.median(rates), statistics.mean(run["cores"] for run in runs)
        lines.append(f"| {stage} | {dtype} | {workers} | {median:.1f} "
                     f"| {min(rates):.0f}-{max(rates):.0f} "
                     f"| {cores:.2f} | {median / max(cores, 1e-9):.1f} |")
    return "\n".join(lines) + "\n"


def _update_doc(path: str, table: str) -> None:
    """Replaces the marked table in the loader section (creating what is missing)."""
    block = f"{BEGIN}\n{table}{END}\n"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END) + 1:]
    elif SECTION + "\n" in old:
        at = old.index(SECTION + "\n") + len(SECTION) + 1
        new = old[:at] + "\n" + block + old[at:]
    else:
        new = old.rstrip("\n") + f"\n\n{SECTION}\n\n{block}"
    with open(path, "w") as f:
        f.write(new)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", default=None, help="existing shard dir (default: synthetic)")
    parser.add_argument("--out", default="/tmp/edtalk_bench_256", help="synthetic dataset dir")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--targets", default=None, help="stage-4 targets name (existing)")
    parser.add_argument("--stages", default="1,2,3,4")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtypes", default="float32", help="image dtypes: float32,uint8")
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window_batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--doc", default=None, help="markdown file whose loader table to replace")
    parser.add_argument("--caller_malloc", action="store_true",
                        help="call loaders.tune_malloc() in this process (make_loader never does)")
    args = parser.parse_args(argv)
    flags.FLAGS.mark_as_parsed()

    from data_pipeline import loaders

    shards_dir, name = _dataset(args)
    if args.caller_malloc:
        loaders.tune_malloc()
    load0 = os.getloadavg()[0]
    configs = [(int(s), d, int(w)) for s in args.stages.split(",")
               for d in args.dtypes.split(",") for w in args.workers.split(",")]
    results = {c: [] for c in configs}
    for _ in range(args.rounds):
        for stage, dtype, workers in configs:
            cfg = loaders.LoaderConfig(shards_dir, stage=stage, split=None, batch_size=args.batch,
                                       image_size=args.size, worker_count=workers,
                                       dtype=dtype, targets=name, seed=1)
            run = measure(cfg, args.warmup, args.windows, args.window_batches)
            results[(stage, dtype, workers)].append(run)
            print(f"stage {stage} {dtype} workers {workers}: "
                  f"{statistics.median(run['rates']):.1f} samples/s, {run['cores']:.2f} cores",
                  flush=True)
    command = " ".join(["python -m launch.benchmark_loaders", *(argv if argv is not None
                                                                 else sys.argv[1:])])
    table = _table(results, args, command, (load0, os.getloadavg()[0]))
    read = {s: bytes_per_sample(loaders.LoaderConfig(shards_dir, stage=s, split=None, batch_size=args.batch,
                                                     image_size=args.size, targets=name, seed=1))
            for s in sorted({c[0] for c in configs})}
    table += "\n" + _bytes_table(read)
    print(table)
    if args.doc:
        _update_doc(args.doc, table)


if __name__ == "__main__":
    main()
