"""The base config of the GRPO experiments: `async_grpo.config.RunConfig`'s defaults.

Each task file (addition.py, …) starts from `get_base_config()` and overrides what it needs. The
defaults themselves, with a one-line help each, live only in async_grpo/config.py
(`python -m experiments.train --print_config` lists them).
"""

from async_grpo import config as config_lib


def get_base_config():
    """`RunConfig`'s defaults as an `ml_collections.ConfigDict`."""
    return config_lib.default_config_dict()
