"""Label-mean baseline and the shuffled-label null."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stfusion import _constants as K
from stfusion.baselines.interpolation import ConstantBaseline, NearestNeighbourBaseline
from stfusion.baselines.labels import LabelMeanBaseline
from stfusion.baselines.null import ShuffledNull, null_distribution, permuted_copy
from stfusion.errors import StfusionError
from stfusion.models.base import target_expression
from tests.baselines.test_interpolation import holdout, make_section, mean_pearson, smooth_section


# --------------------------------------------------------------------------- label mean
def labelled_section(labels, counts, section_id="S1", key=K.REGION_LABEL):
    coords = np.column_stack([np.arange(len(labels)) * 10.0 + 10.0, np.full(len(labels), 10.0)])
    return make_section(coords, counts, section_id=section_id, obs=pd.DataFrame({key: labels}))


def test_label_mean_predicts_group_means_and_overall_mean_for_unknown(tmp_path):
    counts = np.array([[90, 10], [80, 20], [10, 90], [30, 70], [50, 50]])
    train = labelled_section(pd.Categorical(["tumour", "tumour", "normal", "normal", None]), counts)
    y = target_expression(train)
    model = LabelMeanBaseline().fit([train])
    test = labelled_section(["normal", "tumour", "stroma", None], np.ones((4, 2), dtype=int), section_id="T")
    pred = model.predict(test).X
    np.testing.assert_allclose(pred[0], y[2:4].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pred[1], y[0:2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pred[2], y.mean(axis=0), rtol=1e-6)  # unseen label
    np.testing.assert_allclose(pred[3], y.mean(axis=0), rtol=1e-6)  # missing label
    again = LabelMeanBaseline.load(model.save(tmp_path / "lm")).predict(test)
    np.testing.assert_array_equal(again.X, pred)


def test_label_mean_custom_key_and_clear_errors():
    counts = np.array([[9, 1], [1, 9], [5, 5]])
    train = labelled_section(["a", "b", "a"], counts, key="cluster")
    with pytest.raises(StfusionError, match="no obs column 'region_label'.*label_key="):
        LabelMeanBaseline().fit([train])
    model = LabelMeanBaseline(label_key="cluster").fit([train])
    assert list(model.labels_) == ["a", "b"]
    with pytest.raises(StfusionError, match="test section has no obs column 'cluster'"):
        model.predict(make_section(np.array([[10.0, 10.0]]), np.ones((1, 2), dtype=int)))


# --------------------------------------------------------------------------- shuffled null
def test_permuted_copy_moves_only_the_counts():
    sec = smooth_section(n_side=5)
    sec.layers["counts"] = sec.X.copy()
    before = sec.X.toarray()
    out = permuted_copy(sec, np.random.default_rng(0))
    assert (sec.X.toarray() == before).all()  # input untouched
    np.testing.assert_array_equal(out.obsm[K.SPATIAL], sec.obsm[K.SPATIAL])
    assert list(out.obs_names) == list(sec.obs_names)
    moved = out.X.toarray()
    assert not (moved == before).all()
    assert sorted(map(tuple, moved)) == sorted(map(tuple, before))  # same rows, new places
    np.testing.assert_array_equal(out.layers["counts"].toarray(), moved)


def test_constant_null_equals_the_unshuffled_prediction():
    train, test = holdout(smooth_section(n_side=10))
    reference = ConstantBaseline().fit([train]).predict(test).X
    preds = ShuffledNull(ConstantBaseline, n_permutations=3, seed=1).fit([train]).predict_all(test)
    assert len(preds) == 3
    for p in preds:
        np.testing.assert_allclose(p.X, reference, rtol=1e-6)


def test_nearest_neighbour_null_differs_and_is_much_worse_on_a_smooth_field():
    sec = smooth_section(n_side=14)
    before = sec.X.copy()
    train, test = holdout(sec)
    truth = target_expression(test)
    real = mean_pearson(NearestNeighbourBaseline().fit([train]).predict(test).X, truth)
    preds = ShuffledNull(NearestNeighbourBaseline, n_permutations=4, seed=0).fit([train]).predict_all(test)
    assert not np.allclose(preds[0].X, preds[1].X)

    def summary(pred, section):
        return mean_pearson(pred.X, target_expression(section, list(pred.var_names)))

    null = null_distribution(NearestNeighbourBaseline, [train], test, summary, n_permutations=4, seed=0)
    assert null.shape == (4,)
    np.testing.assert_allclose(null, [summary(p, test) for p in preds])  # same seed, same null
    assert real > 0.9 and np.all(np.abs(null) < 0.3) and real - null.max() > 0.6
    assert (sec.X != before).nnz == 0


def test_null_requires_fit_and_positive_permutations():
    from stfusion.models.base import NotFittedError

    with pytest.raises(ValueError):
        ShuffledNull(ConstantBaseline, n_permutations=0)
    with pytest.raises(NotFittedError):
        ShuffledNull(ConstantBaseline).predict_all(smooth_section(n_side=3))
