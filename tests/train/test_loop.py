"""The shared training loop: learning, determinism, early stopping, resume, quiet console."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from stfusion.train import EpochShuffleSampler, FitResult, fit, make_loader, predict_batches, seed_everything

N_IN, N_OUT = 6, 3


def _data(n: int = 240, seed: int = 1, val_scale: float = 1.0):
    """Linear-plus-noise regression; validation targets are scaled by ``val_scale``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N_IN, N_OUT, generator=g)
    x = torch.randn(n, N_IN, generator=g)
    y = x @ w + 0.5 + 0.1 * torch.randn(n, N_OUT, generator=g)
    cut = n * 3 // 4
    y_val = val_scale * (y[cut:] - 0.5) + 0.5
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y_val)


def _mlp(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(nn.Linear(N_IN, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, N_OUT))


def _mse(net: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(net(x), y)


def _eval_mse(net: nn.Module, ds: TensorDataset) -> float:
    x, y = ds.tensors
    return float(F.mse_loss(predict_batches(net, ds, batch_size=7), y))


def _flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().cpu().ravel() for p in net.state_dict().values()])


def test_fit_learns_and_beats_the_mean():
    train, val = _data()
    net = _mlp()
    res = fit(net, _mse, train, val, epochs=25, lr=1e-2, batch_size=16, progress=False)
    assert isinstance(res, FitResult)
    assert [h["epoch"] for h in res.history] == list(range(25))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.3 * losses[0]
    mean_pred_mse = float(((val.tensors[1] - train.tensors[1].mean(0)) ** 2).mean())
    fitted_mse = _eval_mse(net, val)
    assert fitted_mse < 0.2 * mean_pred_mse
    assert res.best_epoch is not None and res.best_val_loss == pytest.approx(fitted_mse, rel=1e-5)
    assert not res.stopped_early and not res.timed_out and res.seconds > 0


def test_same_seed_same_run_different_seed_different_run():
    train, val = _data()
    runs = []
    for fit_seed in (3, 3, 4):
        net = _mlp(seed=0)  # identical initial weights; the fit seed drives shuffling + dropout
        res = fit(net, _mse, train, val, epochs=3, batch_size=16, seed=fit_seed, progress=False)
        runs.append((res.history, _flat(net)))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]
    assert not torch.allclose(runs[0][1], runs[2][1])


def test_early_stopping_restores_best_weights():
    # validation targets are half the training signal: val loss falls, then rises as the fit
    # passes them, so early stopping must trigger and roll back to the best epoch
    train, val = _data(val_scale=0.5)
    net = nn.Linear(N_IN, N_OUT)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)
    patience, max_epochs = 3, 60
    res = fit(net, _mse, train, val, epochs=max_epochs, lr=0.002, batch_size=30,
              optimizer="sgd", early_stopping_patience=patience, progress=False)
    assert res.stopped_early
    assert len(res.history) < max_epochs
    assert len(res.history) == res.best_epoch + patience + 1
    assert res.best_epoch >= 3  # improved for a while, then got worse
    vals = [h["val_loss"] for h in res.history]
    assert res.best_val_loss == min(vals) and vals.index(min(vals)) == res.best_epoch
    assert vals[-1] > res.best_val_loss
    assert _eval_mse(net, val) == pytest.approx(res.best_val_loss, rel=1e-5)


def test_resume_equals_straight_run(tmp_path):
    train, val = _data()
    kw = dict(epochs=4, batch_size=16, seed=5, lr=1e-2, restore_best=False, progress=False)
    straight = _mlp(seed=0)
    res_a = fit(straight, _mse, train, val, checkpoint_dir=tmp_path / "a", **kw)

    first = _mlp(seed=0)
    fit(first, _mse, train, val, checkpoint_dir=tmp_path / "b", **{**kw, "epochs": 2})
    assert (tmp_path / "b" / "last.ckpt").is_file() and (tmp_path / "b" / "best.ckpt").is_file()
    resumed = _mlp(seed=9)  # different init: weights must come from last.ckpt
    res_b = fit(resumed, _mse, train, val, checkpoint_dir=tmp_path / "b", resume=True, **kw)

    assert torch.allclose(_flat(straight), _flat(resumed), atol=1e-6, rtol=0)
    assert len(res_b.history) == 4
    for ha, hb in zip(res_a.history, res_b.history, strict=True):
        assert ha["epoch"] == hb["epoch"]
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=1e-6)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], abs=1e-6)
    assert res_a.best_epoch == res_b.best_epoch
    assert res_b.best_checkpoint is not None and res_b.best_checkpoint.endswith("best.ckpt")


def test_resume_without_checkpoint_dir_is_an_error():
    train, _ = _data(n=40)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(_mlp(), _mse, train, epochs=1, resume=True, progress=False)


def test_quiet_when_progress_false_and_nothing_written(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    levels = {n: logging.getLogger(n).level for n in ("lightning.pytorch", "lightning.fabric")}
    train, val = _data(n=80)
    fit(_mlp(), _mse, train, val, epochs=2, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert list(tmp_path.iterdir()) == []  # no lightning_logs/ or checkpoints/
    assert {n: logging.getLogger(n).level for n in levels} == levels

    fit(_mlp(), _mse, train, val, epochs=1, progress=True)
    out, err = capfd.readouterr()
    assert "Epoch 0" in out + err


def test_max_time_budget_stops_training_with_a_dataloader_given():
    train, _ = _data(n=400)
    loader = DataLoader(train, batch_size=4, shuffle=True)
    res = fit(_mlp(), _mse, loader, epochs=10_000, max_time_s=0.5, progress=False)
    assert res.timed_out and not res.stopped_early
    assert res.epochs_run < 10_000
    assert res.seconds < 30


def test_sgd_scheduler_and_loss_terms_in_history():
    train, val = _data(n=80)

    def loss_with_terms(net, batch):
        x, y = batch
        mse = F.mse_loss(net(x), y)
        return {"loss": mse, "mse": mse.detach(), "l1": F.l1_loss(net(x), y).detach()}

    seen = {}

    def scheduler(opt):
        seen["opt"] = opt
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    res = fit(_mlp(), loss_with_terms, train, val, optimizer="sgd", lr=0.1, scheduler=scheduler,
              epochs=3, progress=False)
    opt = seen["opt"]
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    row = res.history[-1]
    assert row["train_mse"] == pytest.approx(row["train_loss"], rel=1e-6)
    assert row["val_mse"] == pytest.approx(row["val_loss"], rel=1e-6)
    assert row["val_l1"] > 0
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit(_mlp(), _mse, train, optimizer="lbfgs-ish", epochs=1, progress=False)


def test_predict_batches_matches_direct_forward_and_keeps_mode():
    train, _ = _data(n=50)
    net = _mlp(dropout=0.5)
    net.train()
    pred = predict_batches(net, train, batch_size=8)
    assert net.training
    x = train.tensors[0]
    net.eval()
    with torch.no_grad():
        direct = net(x)
    assert pred.shape == (len(train), N_OUT)
    assert torch.allclose(pred, direct, atol=1e-6)
    parts = predict_batches(net, train, batch_size=8, forward=lambda m, b: {"mean": m(b[0])})
    assert isinstance(parts, list) and len(parts) == 5
    assert torch.allclose(torch.cat([p["mean"] for p in parts]), direct, atol=1e-6)


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    first, second = list(a), list(a)  # without set_epoch each pass is the next epoch
    assert sorted(first) == list(range(50)) and first != second
    b.set_epoch(1)
    assert list(b) == second
    b.set_epoch(0)
    assert list(b) == first
    assert list(EpochShuffleSampler(50, seed=4)) != first


class _NumpyNoise(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(np.random.rand())


def test_workers_get_distinct_reproducible_numpy_seeds():
    def draw() -> list[float]:
        loader = make_loader(_NumpyNoise(), batch_size=2, shuffle=False, seed=11, num_workers=2)
        return torch.cat(list(loader)).tolist()

    one, two = draw(), draw()
    assert one == two
    assert len(set(np.round(one, 12))) == len(one)  # workers do not repeat each other's numbers


def test_without_a_bar_progress_goes_to_the_log_at_every_tenth(caplog):
    train, val = _data(n=40)
    with caplog.at_level(logging.INFO, logger="stfusion"):
        fit(_mlp(), _mse, train, val, epochs=20, batch_size=16, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "stfusion"]
    assert len(lines) == 10 and lines[0].startswith("training epoch 2/20 (10%), train_loss ")
    assert "val_loss" in lines[-1] and "epoch 20/20 (100%)" in lines[-1] and "s left" in lines[-1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stfusion"):
        fit(_mlp(), _mse, train, epochs=2, batch_size=16, progress=True)
    assert not [r for r in caplog.records if r.name == "stfusion"]  # the bar shows it instead
