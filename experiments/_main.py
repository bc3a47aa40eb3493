"""The one absl main of the experiment binaries.

    if __name__ == "__main__":
        _main.run(lambda c, workdir, flags: my_binary.run(c, workdir), default_config=...)

`run` defines the flags only when the module is the binary (so its functions can be imported by
others and by tests: absl refuses a flag defined twice): `--config` (an ml_collections config
file, with its `:arg`, e.g. `experiments/configs/sweep_lm.py:tiny`), `--workdir`, and any `extra`
flags. Library functions raise ValueError (a `workdir.WorkdirError` is one); here, at the top
only, it becomes `app.UsageError` (the message, no traceback).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from absl import app, flags
from ml_collections import config_flags

from async_grpo import workdir as workdir_lib

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def run(body: Callable, *, default_config: Optional[str] = None, config_help: str = "",
        extra: Optional[Callable[[], dict]] = None, workdir_required: bool = True,
        config: bool = True, workdir_help: str = "Output directory.") -> None:
    """Defines the flags, then runs `body(config, workdir, extra_flags)` under `app.run` (config
    None for a binary without `--config`); its return value, if a string, is printed."""
    cfg = config_flags.DEFINE_config_file(
        "config", None if default_config is None else os.path.join(CONFIGS, default_config),
        config_help or "Config file (experiments/configs/...; `path:arg` passes an argument).",
        lock_config=True) if config else None
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    more = extra() if extra is not None else {}

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if cfg is not None and cfg.value is None:
            raise app.UsageError("--config is required.")
        if workdir_required and not workdir.value:
            raise app.UsageError("--workdir is required.")
        workdir_lib.quiet_orbax()
        try:
            out = body(None if cfg is None else cfg.value, workdir.value,
                       {k: v.value for k, v in more.items()})
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        if isinstance(out, str):
            print(out)

    app.run(main)
