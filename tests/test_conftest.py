"""The suite's own setup (tests/conftest.py): -O0 codegen for the default selection only, and the
production flags for the tests that compare two programs bit for bit."""

import os

from tests import conftest
from tests._subprocess import run_at_production_codegen


def test_the_default_selection_compiles_at_O0_and_the_bit_for_bit_helper_does_not(request):
    default = (request.config.getoption("markexpr") or "").strip() == "not slow"
    flags = os.environ.get("XLA_FLAGS", "").split()
    if default and os.environ.get("ASYNC_GRPO_TEST_O0", "1") != "0":
        assert conftest.O0_FLAG in flags
    else:
        assert conftest.O0_FLAG not in flags
    out = run_at_production_codegen("import os; print(repr(os.environ.get('XLA_FLAGS')))")
    assert "optimization_level" not in out
    assert all(f in out for f in flags if f != conftest.O0_FLAG)      # the user's own flags kept
