"""Flags shared by the GRPO binaries: the config file, --workdir, --print_config, and the one
parse of the config into a typed `RunConfig` (user errors end the program with the message,
no traceback)."""

from absl import app, flags
from ml_collections import config_flags

from async_grpo import config as config_lib
from async_grpo import workdir as workdir_lib

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
PRINT_CONFIG = flags.DEFINE_bool("print_config", False,
                                 "Print every config key with its value and help, then exit.")
ALLOW_CHANGED = flags.DEFINE_list(
    "allow_changed", [], "Config keys that may differ from the run recorded in --workdir when "
    "resuming it (e.g. rl.steps to extend a run); any other difference is refused.")


def parse(argv, kind: str) -> config_lib.RunConfig:
    """The typed config of this `kind` of run ("sft" or "grpo"), or a clean exit:
    --print_config prints it; a bad value, or a workdir that holds another run (or cannot be
    written), exits with a message naming the key or the path, before anything heavy starts."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if CONFIG.value is None:
        raise app.UsageError("--config is required (e.g. --config=experiments/configs/addition.py).")
    try:
        config = config_lib.RunConfig.from_config(CONFIG.value)
    except ValueError as e:
        raise app.UsageError(f"bad config: {e}") from None
    if PRINT_CONFIG.value:
        print(config_lib.describe(config))
        raise SystemExit(0)
    if not WORKDIR.value:
        raise app.UsageError("--workdir is required.")
    try:
        workdir_lib.claim(WORKDIR.value, kind, config.record(kind), ALLOW_CHANGED.value,
                          defaults=config_lib.RunConfig().record(kind))
    except workdir_lib.WorkdirError as e:
        raise app.UsageError(str(e)) from None
    workdir_lib.quiet_orbax()
    return config
