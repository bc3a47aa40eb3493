"""The pipeline's sharded learner on 8 simulated CPU devices equals the 1-device run."""

import pytest

from tests._subprocess import run_with_devices


@pytest.mark.slow  # ~70 s; the sharded learner alone: tests/test_sharding.py, test_learner_scale.py
@pytest.mark.multidevice
def test_pipeline_on_8_devices_and_generator_submesh(tmp_path):
    out = run_with_devices(f"""
        import pathlib
        import numpy as np
        from jax.sharding import PartitionSpec as P
        from async_grpo.rl import components, pipeline
        from tests import helpers
        tmp = pathlib.Path({str(tmp_path)!r})
        helpers.random_init(tmp / "init")
        common = {{"rl.steps": 3, "staleness.policy": "fixed", "staleness.max_lag": 1,
                  "diagnostics.bias_every": 2}}
        runs = {{
            "one": {{"mesh.num_devices": 1, "mesh.axes": "data=1"}},
            "eight": {{"mesh.axes": "data=2,fsdp=2,tensor=2"}},
            "split": {{"mesh.num_devices": 4, "mesh.generator_devices": 2,
                      "mesh.axes": "data=-1,fsdp=1,tensor=1"}},
        }}
        res, learners = {{}}, {{}}
        for name, kw in runs.items():
            cfg = helpers.pipeline_config(tmp, **common, **kw)
            comps = helpers.dense_rewards(components.build_grpo(cfg))
            learners[name] = pipeline.make_learner(cfg, comps)
            out, _, recs = helpers.run(cfg, tmp / name, learner=learners[name])
            res[name] = (out, recs)
        l8 = learners["eight"]
        assert l8.mesh.devices.size == 8 and dict(l8.mesh.shape) == {{
            "data": 2, "fsdp": 2, "tensor": 2}}
        specs = {{str(s.spec) for s in __import__("jax").tree.leaves(l8.param_shardings)}}
        assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs), specs
        split = learners["split"]
        assert len(split.gen_mesh.devices.flat) == 2
        gen_devs = set(split.gen_mesh.devices.flat)
        store = res["split"][0].store
        snap = store.get(store.latest)
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
