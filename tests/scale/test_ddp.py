"""Training on 2 CPU processes (DDP over gloo): same loss-curve shape and same saved model as 1 process.

Under pytest the processes are forked (``strategy="ddp_fork"``): Lightning's default ``"ddp"``
launcher re-runs the current command per process, which would re-run pytest. ``stfusion fit
--strategy ddp`` (which it is made for) is exercised in benchmarks/scale/ddp_her2st.py.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from stfusion.train.loop import fit, make_strategy, seed_everything, trainer_settings

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


def test_two_processes_give_the_same_curve_shape():
    one, net1 = _curve(1, "auto")
    two, net2 = _curve(2, "ddp_fork")
    a, b = (np.array([h["train_loss"] for h in r.history]) for r in (one, two))
    assert len(a) == len(b) == 8
    assert a[-1] < 0.2 * a[0] and b[-1] < 0.2 * b[0]  # both learn
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert two.best_epoch is not None and two.best_val_loss is not None  # rank 0's results came back
    assert net2.state_dict().keys() == net1.state_dict().keys()
    x = torch.randn(50, 6)
    assert not torch.allclose(net2(x), nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))(x))


def test_stnet_trained_on_two_processes_saves_the_same_format(tmp_path):
    from stfusion.data.synthetic import make_synthetic_section
    from stfusion.models.api import load_model, save_model
    from stfusion.models.stnet import STNet

    section = make_synthetic_section(tmp_path / "img", size_px=320, grid=(6, 6), seed=0)
    genes = list(section.var_names[:3])
    params = {"preset": "fast", "width": 4, "out_px": 16, "epochs": 2, "batch_size": 8, "seed": 0}
    single = save_model(STNet(**params).fit([section], genes=genes), tmp_path / "single")
    with trainer_settings(devices=2, strategy="ddp_fork"):
        model = STNet(**params).fit([section], genes=genes)
    double = save_model(model, tmp_path / "ddp")
    assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in double.iterdir())
    s1 = torch.load(single / "weights.pt", weights_only=True)
    s2 = torch.load(double / "weights.pt", weights_only=True)
    assert s1.keys() == s2.keys() and all(s1[k].shape == s2[k].shape for k in s1)
    c1, c2 = (json.loads((d / "model.json").read_text()) for d in (single, double))
    assert c1.keys() == c2.keys() and c1["training"].keys() == c2["training"].keys()
    assert len(c2["training"]["history"]) == 2
    assert load_model(double).predict(section).shape == (section.n_obs, 3)
