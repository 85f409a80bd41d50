import pytest
import torch

from optkit.errors import ConfigError
from optkit.zoo import digits_metrics
from optkit.zoo.data import digits, moving_digits


def test_inputs_are_validated():
    with pytest.raises(ConfigError, match="count"):
        digits_metrics.class_accuracy(torch.zeros(3, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ConfigError, match="at least 2"):
        digits_metrics.fd_digits(torch.zeros(1, 1, 16, 16), torch.zeros(4, 1, 16, 16))


def test_shipped_classifier_accuracy_on_the_test_split():
    images, labels = digits("test", resolution=16)
    assert digits_metrics.class_accuracy(images, labels) >= 0.95
    images28, labels28 = digits("test", resolution=28)
    assert digits_metrics.class_accuracy(images28, labels28) >= 0.95  # one classifier, any resolution
    assert digits_metrics.class_accuracy(images, (labels + 1) % 10) < 0.1


def test_classifier_features_shape():
    model = digits_metrics.load_digits_classifier()
    images, _ = digits("test", resolution=16)
    assert model.features(images[:5]).shape == (5, digits_metrics.FEATURE_DIM)
    assert model(images[:5]).shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) < 250_000
    assert digits_metrics.CLASSIFIER_PATH.stat().st_size < 1_000_000


def test_fd_digits_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    test, _ = digits("test", resolution=16)
    train, _ = digits("train", resolution=16)
    assert digits_metrics.fd_digits(test, test) == pytest.approx(0.0, abs=1e-6)
    real = digits_metrics.fd_digits(test, train[:1000])
    small = digits_metrics.fd_digits((test + 0.2).clamp(-1, 1), test)
    large = digits_metrics.fd_digits((test + 0.6).clamp(-1, 1), test)
    assert real < small < large
    noisy = (test + 0.5 * torch.randn(test.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert digits_metrics.fd_digits(noisy, test) > 10 * real


def test_video_quality_prefers_real_coherent_videos():
    videos, _ = moving_digits(128, seed=1)
    reference, _ = moving_digits(128, seed=2, split="test")
    real = digits_metrics.video_quality(videos, reference)
    assert set(real) == {
        "fd_frame_mean",
        "fd_frame_max",
        "class_consistency",
        "frame_delta",
        "reference_frame_delta",
    }
    assert real["class_consistency"] > 0.85
    assert real["frame_delta"] == pytest.approx(real["reference_frame_delta"], rel=0.3)
    noisy = (videos + 0.5 * torch.randn(videos.shape, generator=torch.Generator().manual_seed(0))).clamp(
        -1, 1
    )
    bad = digits_metrics.video_quality(noisy, reference)
    assert bad["fd_frame_mean"] > 3 * real["fd_frame_mean"]
    assert bad["class_consistency"] < real["class_consistency"]
    with pytest.raises(ConfigError, match="T >= 2"):
        digits_metrics.video_quality(videos[:, :, :1], reference)


def test_training_a_classifier_for_one_epoch_learns():
    model, accuracy = digits_metrics.train_digits_classifier(seed=0, epochs=1)
    assert isinstance(model, digits_metrics.DigitsClassifier)
    assert accuracy > 0.7
