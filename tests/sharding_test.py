"""Mesh, placement and data-parallel equivalence on 8 fake CPU devices.

The device count is fixed when jax is imported, so the checks run once in a child
process (this file run as a script with XLA_FLAGS set) that prints one JSON report;
the tests assert on its parts.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import fake_devices_env

REPO = pathlib.Path(__file__).resolve().parents[1]


def _error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ValueError as e:
        return str(e)
    return None


def _child() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from edtalk_jax import sharding

    report = {"devices": jax.device_count()}

    # Mesh validation.
    mk = sharding.make_mesh
    report["errors"] = {
        "unknown": _error(mk, {"data": 8, "fsdp": 1, "model": 2}),
        "both_free": _error(mk, {"data": -1, "fsdp": -1}),
        "too_large": _error(mk, {"data": 16, "fsdp": 1}),
        "bad_product": _error(mk, {"data": 2, "fsdp": 2}),
        "not_divisible": _error(mk, {"data": 3, "fsdp": -1}),
        "zero": _error(mk, {"data": 0, "fsdp": 8}),
        "batch": _error(sharding.check_batch, 12, mk({"data": 8, "fsdp": 1}), field="train.batch_size"),
    }
    from ml_collections import config_dict

    m = mk(config_dict.ConfigDict({"data": 2, "fsdp": -1, "fsdp_min_size": 4}))
    report["resolved"] = [m.shape["data"], m.shape["fsdp"]]
    report["axis_types"] = [str(t) for t in m.axis_types]
    report["per_device_batch"] = sharding.check_batch(16, m)

    # FSDP rule on one fsdp=8 mesh.
    m8 = mk({"data": 1, "fsdp": -1})
    tree = {"big": jax.ShapeDtypeStruct((512, 512), jnp.float32), "vec": jax.ShapeDtypeStruct((3,), jnp.float32),
            "odd": jax.ShapeDtypeStruct((7, 9), jnp.float32), "tall": jax.ShapeDtypeStruct((4096, 3), jnp.float32),
            "wide": jax.ShapeDtypeStruct((8, 4096), jnp.float32), "step": 0}
    specs = lambda sh: {k: [a if a is None else str(a) for a in s.spec] for k, s in sh.items()}
    report["fsdp_specs"] = specs(sharding.param_sharding(m8, tree, fsdp=True, min_size=1))
    report["default_specs"] = specs(sharding.param_sharding(m8, tree, fsdp=True))
    report["replicated_specs"] = specs(sharding.param_sharding(m8, tree, fsdp=False, min_size=1))

    # shard_init: leaves land where the shardings say; bytes per device shrink ~8x.
    def init():
        k = jax.random.key(0)
        return {"w": jax.random.normal(k, (1024, 512)), "b": jnp.zeros((512,)), "step": jnp.int32(0)}

    state, shs = sharding.shard_init(init, m8, fsdp=True, min_size=2 ** 16)
    report["init_placed"] = all(x.sharding.is_equivalent_to(s, x.ndim) for x, s in
                                zip(jax.tree.leaves(state), jax.tree.leaves(shs)))
    report["init_w_shard"] = list(state["w"].addressable_shards[0].data.shape)
    rstate, _ = sharding.shard_init(init, m8, fsdp=False)
    report["bytes"] = [sharding.bytes_per_device(state), sharding.bytes_per_device(rstate)]
    abstract = sharding.abstract_with_sharding(jax.eval_shape(init), shs)
    report["bytes_abstract"] = sharding.bytes_per_device(abstract)
    report["abstract_sharded"] = abstract["w"].sharding == shs["w"]

    # global_batch: numeric entries become global arrays over all 8 devices; names dropped.
    gb = sharding.global_batch({"x": np.arange(32, dtype=np.float32).reshape(16, 2), "name": ["a"] * 16,
                                "ids": np.array(["a"] * 16)}, m)
    report["global_batch"] = {"keys": sorted(gb), "shard": list(gb["x"].addressable_shards[0].data.shape),
                              "equal": bool(np.array_equal(np.asarray(gb["x"]), np.arange(32).reshape(16, 2)))}
    report["global_batch_error"] = _error(sharding.global_batch, {"x": np.zeros((12, 2))}, m)

    # A data-parallel SGD step equals the single-device one.
    r = np.random.RandomState(0)
    params = {"w1": r.randn(16, 64).astype(np.float32) * 0.3, "b1": np.zeros(64, np.float32),
              "w2": r.randn(64, 8).astype(np.float32) * 0.3, "b2": np.zeros(8, np.float32)}
    batch = {"x": r.randn(32, 16).astype(np.float32), "y": r.randn(32, 8).astype(np.float32)}

    def step(p, b):
        def loss_fn(p):
            h = jnp.tanh(b["x"] @ p["w1"] + p["b1"])
            return jnp.mean((h @ p["w2"] + p["b2"] - b["y"]) ** 2)

        loss, g = jax.value_and_grad(loss_fn)(p)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), loss

    ref_p, ref_loss = jax.jit(step)(params, batch)
    report["sgd"] = {}
    for name, cfg, fsdp in (("data8", {"data": 8, "fsdp": 1}, False), ("data2_fsdp4", {"data": 2, "fsdp": 4}, True)):
        mesh = mk(cfg)
        psh = sharding.param_sharding(mesh, params, fsdp=fsdp, min_size=64)
        p = jax.device_put(params, psh)
        b = sharding.global_batch(batch, mesh)
        f = jax.jit(step, in_shardings=(psh, sharding.batch_sharding(mesh)),
                    out_shardings=(psh, sharding.replicated(mesh)), donate_argnums=0)
        new_p, loss = f(p, b)
        report["sgd"][name] = {
            "max_diff": max(float(np.abs(np.asarray(new_p[k]) - np.asarray(ref_p[k])).max()) for k in params),
            "loss_diff": abs(float(loss) - float(ref_loss)),
            "w1_spec": [a if a is None else str(a) for a in new_p["w1"].sharding.spec],
        }
    return report


@pytest.fixture(scope="module")
def report():
    env = fake_devices_env(
        8, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_child_sees_eight_devices(report):
    assert report["devices"] == 8


def test_mesh_validation_names_the_field(report):
    e = report["errors"]
    assert "mesh.model" in e["unknown"]
    assert "mesh.data" in e["both_free"] and "mesh.fsdp" in e["both_free"]
    assert "mesh.data=16" in e["too_large"] and "8" in e["too_large"]
    assert "mesh.data=2" in e["bad_product"] and "8 are present" in e["bad_product"]
    assert "mesh.fsdp=-1" in e["not_divisible"] and "8 devices" in e["not_divisible"]
    assert "mesh.data=0" in e["zero"]
    assert report["resolved"] == [2, 4]
    assert all("Auto" in t for t in report["axis_types"])


def test_batch_divisibility(report):
    assert "train.batch_size=12" in report["errors"]["batch"] and "8 devices" in report["errors"]["batch"]
    assert report["per_device_batch"] == 2


def test_fsdp_rule(report):
    s = report["fsdp_specs"]
    assert s["big"] == [None, "fsdp"]  # a tie: the last dimension
    assert s["vec"] == [] and s["odd"] == [] and s["step"] == []
    assert s["tall"] == ["fsdp", None] and s["wide"] == [None, "fsdp"]
    d = report["default_specs"]  # min_size 2**18: only the 512x512 leaf qualifies
    assert d["big"] == [None, "fsdp"] and d["tall"] == [] and d["wide"] == []
    assert all(v == [] for v in report["replicated_specs"].values())


def test_shard_init_and_bytes(report):
    assert report["init_placed"]
    assert report["init_w_shard"] == [128, 512]  # the largest dim, 1024, is split
    sharded, replicated = report["bytes"]
    big = 1024 * 512 * 4
    assert replicated == big + 512 * 4 + 4
    assert sharded == big // 8 + 512 * 4 + 4
    assert report["bytes_abstract"] == sharded and report["abstract_sharded"]


def test_global_batch(report):
    g = report["global_batch"]
    assert g["keys"] == ["x"] and g["shard"] == [2, 2] and g["equal"]
    assert "batch['x']" in report["global_batch_error"]


def test_data_parallel_step_matches_single_device(report):
    for name, r in report["sgd"].items():
        assert r["max_diff"] < 1e-5 and r["loss_diff"] < 1e-5, (name, r)
    assert report["sgd"]["data8"]["w1_spec"] == []
    assert report["sgd"]["data2_fsdp4"]["w1_spec"] == [None, "fsdp"]


if __name__ == "__main__":
    print(json.dumps(_child()))
