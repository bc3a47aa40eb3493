"""The one metric vocabulary (async_grpo.metric_names) and its documentation table."""

import os

from async_grpo import metric_names as mn
from tests.helpers import repo_root


def test_docs_table_is_the_vocabulary():
    text = open(os.path.join(repo_root(), "docs", "metrics.md"), encoding="utf-8").read()
    assert mn.markdown_table() in text, "docs/metrics.md: regenerate the table from " \
        "async_grpo.metric_names.markdown_table()"


def test_legacy_and_file_keys_map_to_one_name():
    assert mn.canonical("drift_cycle") == mn.DRIFT_CYCLE == "drift/within_cycle"
    assert mn.canonical("cos_grad") == mn.COS_GRADS
    assert mn.canonical("drift__within_cycle") == mn.DRIFT_CYCLE
    assert mn.canonical(mn.file_key(mn.CLIP_FRAC)) == mn.CLIP_FRAC
    assert mn.canonical("reward") == "reward"
    # No legacy name is also a current name, and every target is documented.
    assert not set(mn.LEGACY) & set(mn.TABLE)
    assert set(mn.LEGACY.values()) <= set(mn.TABLE)
