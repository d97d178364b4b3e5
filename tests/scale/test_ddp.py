"""Training on 2 CPU processes (DDP over gloo): same loss-curve shape and same saved model as 1 process.

Each DDP run happens in a fresh child process with ``OMP_NUM_THREADS=1`` and a time limit:
forking (``ddp_fork``) a process whose torch has already started its OpenMP thread pool can
deadlock the children, and Lightning's default ``"ddp"`` launcher re-runs the current command
per process, which must be ``stfusion fit`` rather than pytest. The loss-curve test forks from
such a child; the ST-Net test runs ``stfusion fit --devices 2 --strategy ddp`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from stfusion.train.distributed import make_strategy
from stfusion.train.loop import fit, seed_everything

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="ddp_fork needs fork (POSIX)")


def _mse(net, batch):
    return F.mse_loss(net(batch[0]), batch[1])


def _curve(devices: int, strategy: str):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 3, generator=g)
    x = torch.randn(400, 6, generator=g)
    y = x @ w + 0.1 * torch.randn(400, 3, generator=g)
    seed_everything(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    res = fit(net, _mse, TensorDataset(x[:300], y[:300]), TensorDataset(x[300:], y[300:]), epochs=8, lr=1e-2,
              batch_size=16, progress=False, devices=devices, strategy=strategy)  # fmt: skip
    return res, net


def test_ddp_strategy_uses_gloo_on_cpu():
    strategy = make_strategy("ddp_fork", "cpu")
    assert strategy.process_group_backend == "gloo" and strategy._start_method == "fork"
    assert make_strategy("auto") == "auto"


def _isolated(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _curves(out: str) -> None:
    """Child process: the loss curves of 1 and 2 (forked) processes, written to ``out``."""
    torch.set_num_threads(1)
    one, net1 = _curve(1, "auto")
    two, net2 = _curve(2, "ddp_fork")
    x = torch.randn(50, 6)
    Path(out).write_text(json.dumps({
        "one": [h["train_loss"] for h in one.history], "two": [h["train_loss"] for h in two.history],
        "best": [two.best_epoch, two.best_val_loss], "same_keys": list(net2.state_dict()) == list(net1.state_dict()),
        "trained": not torch.allclose(net2(x), nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))(x)),
    }))


def test_two_processes_give_the_same_curve_shape(tmp_path):
    out = tmp_path / "curves.json"
    _isolated([sys.executable, __file__, str(out)])
    res = json.loads(out.read_text())
    a, b = np.array(res["one"]), np.array(res["two"])
    assert len(a) == len(b) == 8
    assert a[-1] < 0.2 * a[0] and b[-1] < 0.2 * b[0]  # both learn
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert None not in res["best"]  # rank 0's results came back
    assert res["same_keys"] and res["trained"]


def test_stnet_trained_on_two_processes_saves_the_same_format(tmp_path):
    from stfusion.data.synthetic import make_synthetic_section
    from stfusion.io import write_h5ad
    from stfusion.models.api import load_model

    section = make_synthetic_section(tmp_path / "img", size_px=320, grid=(6, 6), seed=0)
    write_h5ad(section, tmp_path / "s.h5ad")
    cli = [str(Path(sys.executable).with_name("stfusion")), "--quiet", "fit", "stnet", str(tmp_path / "s.h5ad"), "--genes", "3",
           "--preset", "fast", "-p", "width=4", "-p", "out_px=16", "--epochs", "2", "-p", "batch_size=8", "--seed", "0"]
    _isolated([*cli, "--out", str(tmp_path / "single")])
    _isolated([*cli, "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path / "ddp")])
    single, double = tmp_path / "single", tmp_path / "ddp"
    assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in double.iterdir())
    s1 = torch.load(single / "weights.pt", weights_only=True)
    s2 = torch.load(double / "weights.pt", weights_only=True)
    assert s1.keys() == s2.keys() and all(s1[k].shape == s2[k].shape for k in s1)
    c1, c2 = (json.loads((d / "model.json").read_text()) for d in (single, double))
    assert c1.keys() == c2.keys() and c1["training"].keys() == c2["training"].keys()
    assert len(c2["training"]["history"]) == 2
    assert load_model(double).predict(section).shape == (section.n_obs, 3)


if __name__ == "__main__":
    _curves(sys.argv[1])
