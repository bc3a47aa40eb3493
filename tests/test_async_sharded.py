"""The engine's sharded learner on 8 simulated CPU devices equals the 1-device run."""

import pytest

from tests._subprocess import run_with_devices


@pytest.mark.multidevice
def test_engine_on_8_devices_and_generator_submesh(tmp_path):
    out = run_with_devices(f"""
        import pathlib
        import numpy as np
        from jax.sharding import PartitionSpec as P
        from tests.test_async_engine import config, make_init, run_engine
        tmp = pathlib.Path({str(tmp_path)!r})
        make_init(str(tmp / "init"))
        common = {{"rl.steps": 3, "staleness.policy": "fixed", "staleness.max_lag": 1,
                  "diagnostics.bias_every": 2}}
        runs = {{
            "one": {{"mesh.num_devices": 1, "mesh.axes": "data=1"}},
            "eight": {{"mesh.axes": "data=2,fsdp=2,tensor=2"}},
            "split": {{"mesh.num_devices": 4, "mesh.generator_devices": 2,
                      "mesh.axes": "data=-1,fsdp=1,tensor=1"}},
        }}
        res = {{}}
        for name, kw in runs.items():
            eng, out, recs = run_engine(config(tmp, **common, **kw), tmp / name)
            res[name] = (eng, recs)
        eng8 = res["eight"][0]
        assert eng8.mesh.devices.size == 8 and dict(eng8.mesh.shape) == {{
            "data": 2, "fsdp": 2, "tensor": 2}}
        specs = {{str(s.spec) for s in __import__("jax").tree.leaves(eng8.learner.param_shardings)}}
        assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs), specs
        split = res["split"][0]
        assert len(split.learner.gen_mesh.devices.flat) == 2
        gen_devs = set(split.learner.gen_mesh.devices.flat)
        snap = split.store.get(split.store.latest)
        assert all(set(x.devices()) == gen_devs for x in __import__("jax").tree.leaves(snap))
        import jax
        ref = jax.device_get(res["one"][0].params)
        for name in ("eight", "split"):
            got = jax.device_get(res[name][0].params)
            err = max(float(np.max(np.abs(a - b))) for a, b in
                      zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
            assert err < 1e-5, (name, err)
            for r1, r2 in zip(res[name][1], res["one"][1]):
                assert abs(r1["loss"] - r2["loss"]) < 1e-5 and r1["lag"] == r2["lag"]
        print("OK", specs)
        """, num_devices=8, timeout=600)
    assert "OK" in out
