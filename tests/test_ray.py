"""The Ray executor on a local Ray instance: same records as the local executor; failures recorded."""
import pytest

from benchmark.config import build_config
from benchmark.runner import execute
from tests.layouts import make_mvtec_ad_tree
from tests.test_runner import TINY

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    import torch

    ray.init(num_cpus=max(2, torch.get_num_threads()), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_matches_local_and_records_failures(tmp_path, local_ray):
    root = make_mvtec_ad_tree(tmp_path / "d", categories=("bottle", "carpet"), n_train=6, n_good=3,
                              defects={"broken": 4}, size=32)
    (root / "carpet" / "test" / "good" / "000.png").write_bytes(b"broken file")  # carpet fails
    out = {}
    import torch

    for ex in ("local", "ray"):
        # same torch thread count in both, so the float reductions (and records) are identical
        cfg = build_config("quick", None, {"datasets": "mvtec_ad", "data_root": str(root), "run": ex,
                                           "results_dir": str(tmp_path / "runs"), "executor": ex,
                                           "generators": "cutpaste", "seeds": "0"},
                           TINY + [f"ray.num_cpus={torch.get_num_threads()}"])
        cfg.cache_dir = str(tmp_path / f"cache-{ex}")
        _, recs = execute(cfg)
        out[ex] = {r["config"]["category"]: r for r in recs}
    assert out["ray"]["bottle"]["status"] == "ok"
    assert out["ray"]["bottle"]["metrics"] == out["local"]["bottle"]["metrics"]
    assert out["ray"]["bottle"]["eval"]["score"] == out["local"]["bottle"]["eval"]["score"]
    assert out["ray"]["carpet"]["status"] == "failed" and "000.png" in out["ray"]["carpet"]["error"]
    assert "Traceback" in out["ray"]["carpet"]["traceback"]
