"""Clustering core: descriptors, Gaussian affinity (sigma rule), spectral clustering."""

import numpy as np
import pytest

from acl_dist.cluster import (cluster_descriptors, gaussian_affinity, pairwise_distances,
                              pool_features, video_descriptor)
from acl_dist.evaluate import clustering_scores


def test_pooling_and_descriptor():
    x = np.array([[1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(pool_features(x), [2.0, 2.0])
    np.testing.assert_allclose(pool_features(x, np.array([0.0, 2.0])), [3.0, 4.0])
    d = video_descriptor({"rgb": x, "flow": np.array([[0.0, 2.0], [0.0, 2.0]])},
                         {"rgb": np.array([0.0, 1.0]), "flow": None})
    # rgb pooled by its own attention -> (3, 4) / 5; flow uniform -> (0, 2) / 2
    np.testing.assert_allclose(d, [0.6, 0.8, 0.0, 1.0])
    with pytest.raises(ValueError):
        pool_features(x, np.ones(3))


def test_gaussian_affinity_sigma_is_mean_distance_including_diagonal():
    f = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    # pairs j <= k: (0,0)=0 (1,1)=0 (2,2)=0 (0,1)=5 (1,2)=5 (0,2)=10 -> mean 20/6
    w, sigma = gaussian_affinity(f)
    assert sigma == pytest.approx(20 / 6)
    assert w[0, 1] == pytest.approx(np.exp(-25 / (2 * sigma ** 2)))
    assert w[0, 2] == pytest.approx(np.exp(-100 / (2 * sigma ** 2)))
    np.testing.assert_allclose(np.diag(w), 1.0)
    np.testing.assert_allclose(pairwise_distances(f), pairwise_distances(f).T)


def test_spectral_recovers_planted_clusters():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16)) * 3
    truth = np.repeat(np.arange(5), 30)
    x = centres[truth] + rng.standard_normal((150, 16))
    labels = cluster_descriptors(x, 5, seed=0)
    assert clustering_scores(labels, [str(t) for t in truth])["nmi"] > 0.95
    assert set(labels.tolist()) == set(range(5))
    with pytest.raises(ValueError):
        cluster_descriptors(x[:3], 5)
