"""Command-line helpers shared by the launch scripts."""

import importlib.util
import sys

from absl import flags


def _missing(config, path: str):
    """The first component of dotted `path` that `config` lacks, or None."""
    node = config
    for part in path.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError, IndexError):
            return part
    return None


def _load_config(argv):
    """The config `--config=FILE[:ARG]` names (as ml_collections reads it), or None."""
    spec = next((a[len("--config="):] for a in argv if a.startswith("--config=")), None)
    if not spec:
        return None
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("cli_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:
        return None


def config_flags_parser(prog: str):
    """An absl `flags_parser` for app.run that turns ml_collections' error for an unknown
    `--config.a.b=v` field (a KeyError/AttributeError traceback) into one line naming it."""
    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:
            overrides = [a for a in argv[1:] if a.startswith("--config.")]
            config = _load_config(argv)
            bad = [a for a in overrides
                   if config is not None and _missing(config, a[len("--config."):].split("=", 1)[0])]
            shown = ", ".join(bad or overrides)
            sys.exit(f"{prog}: {shown}: unknown config field ({str(e).strip(chr(34))}); "
                     "the config file defines no such field")
    return parse
