"""The event-camera simulator: level crossings of a DVS pixel, the saccade path, and
recordings of MNIST digits that look like the real N-MNIST ones."""
import numpy as np
import pytest

from plstm_np import event_camera as ec
from plstm_np import mnist, nmnist


def _pixel(log_intensity):
    """Frames (F, 1, 1) of one pixel, one frame per ms."""
    values = np.asarray(log_intensity, dtype=np.float64)
    return values[:, None, None], np.arange(len(values), dtype=np.float64)


def test_a_constant_scene_gives_no_events():
    frames = np.full((20, 5, 4), np.log(0.6))
    assert len(ec.simulate_events(frames, np.arange(20.0), rng=0)) == 0
    assert len(ec.simulate_saccades(np.zeros((28, 28), np.uint8), rng=0)) == 0


def test_a_ramp_crosses_its_levels_at_the_right_times():
    """log I rises by 1 over 10 ms (0.1 per ms), then falls by 0.5: with C = 0.25 exactly,
    ON events at 2.5, 5, 7.5, 10 ms; OFF at the levels 0.75 and 0.5, i.e. 12.5 and 15 ms."""
    frames, times = _pixel(list(np.linspace(0.0, 1.0, 11)) + [0.9, 0.8, 0.7, 0.6, 0.5])
    events = ec.simulate_events(frames, times, threshold=0.25, threshold_std=0.0, rng=0)
    np.testing.assert_array_equal(events["t"], [2500, 5000, 7500, 10000, 12500, 15000])
    np.testing.assert_array_equal(events["p"], [1, 1, 1, 1, 0, 0])
    assert (events["x"] == 0).all() and (events["y"] == 0).all()


def test_a_jump_gives_one_event_per_level_at_the_frame():
    frames, times = _pixel([0.0, 0.0, 1.1, 1.1])  # + 1.1 at once: 4 levels of 0.25
    events = ec.simulate_events(frames, times, threshold=0.25, threshold_std=0.0)
    assert len(events) == 4 and (events["p"] == 1).all()
    assert (events["t"] > 1000).all() and (events["t"] <= 2000).all()
    assert np.all(np.diff(events["t"]) > 0)  # interpolated within the frame interval


def test_the_thresholds_vary_per_pixel_and_the_rng_fixes_them():
    frames = np.linspace(0.0, 3.0, 31)[:, None, None] * np.ones((1, 6, 6))
    a = ec.simulate_events(frames, np.arange(31.0), threshold_std=0.05, rng=1)
    b = ec.simulate_events(frames, np.arange(31.0), threshold_std=0.05, rng=1)
    c = ec.simulate_events(frames, np.arange(31.0), threshold_std=0.05, rng=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    per_pixel = np.bincount(a["y"].astype(int) * 6 + a["x"], minlength=36)
    assert per_pixel.min() < per_pixel.max()  # same scene, different thresholds


def test_the_saccades_trace_the_triangle_and_return():
    t = np.array([0.0, 100.0, 200.0, 300.0])
    np.testing.assert_allclose(ec.saccade_path(t), ec.SACCADE_VERTICES, atol=1e-12)
    x = ec.saccade_path(np.linspace(0.0, 100.0, 101))[:, 0]
    assert np.all(np.diff(x) >= 0)  # the first move is monotone
    speed = np.linalg.norm(np.diff(ec.saccade_path(np.arange(0.0, 300.5, 0.5)), axis=0),
                           axis=1)
    assert speed[[0, 199, 399, -1]].max() < 1e-12  # at rest between the saccades
    assert speed[100] > 0 and speed[300] > 0 and speed[500] > 0  # moving at 50, 150, 250 ms


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist.load_mnist()
    return images[100:130], labels[100:130]  # test images from 100 on, never 0-99


def test_simulated_digits_look_like_the_real_recordings(digits):
    images, _ = digits
    sims = [ec.simulate_saccades(img, rng=i) for i, img in enumerate(images)]
    real, _ = nmnist.load_nmnist(limit=30)
    n_sim, n_real = np.mean([len(s) for s in sims]), np.mean([len(r) for r in real])
    assert 0.7 < n_sim / n_real < 1.4
    for s in sims:
        assert np.all(np.diff(s["t"]) >= 0)
        assert s["t"].min() >= 0 and s["t"].max() <= ec.DURATION_MS * 1000
        assert s["x"].max() < nmnist.SENSOR_SIZE and s["y"].max() < nmnist.SENSOR_SIZE
        assert 0.4 < s["p"].mean() < 0.6  # an edge brightens as often as it darkens
    # the events are where the digit's edges are: the event-count image correlates with the
    # digit placed near the path's mean displacement (x ~ 2, y ~ 1 + 2) better than with
    # another digit
    def counts(ev):
        return np.bincount(ev["y"].astype(int) * 34 + ev["x"], minlength=34 * 34)

    def placed(img):
        canvas = np.zeros((34, 34))
        canvas[3:31, 2:30] = img
        return canvas.ravel()

    own = [np.corrcoef(counts(s), placed(img))[0, 1] for s, img in zip(sims, images)]
    other = [np.corrcoef(counts(s), placed(img))[0, 1]
             for s, img in zip(sims, np.roll(images, 1, axis=0))]
    assert np.mean(own) > 0.55 and np.mean(own) > np.mean(other) + 0.15


def test_simulated_recordings_encode_like_real_ones(digits):
    images, labels = digits
    sims = [ec.simulate_saccades(img, rng=i) for i, img in enumerate(images[:4])]
    data = nmnist.to_dataset(sims, labels[:4], rho=0.75, rng=0)
    assert len(data) == 4 and data.tokens.max() < nmnist.NUM_ADDRESSES
    assert data.t.max() <= ec.DURATION_MS


def test_simulate_mnist_uses_only_images_100_to_9999(digits):
    images, labels = mnist.load_mnist()
    recs, ys = ec.simulate_mnist([100, 9999, 250], rng=5, images=images, labels=labels)
    np.testing.assert_array_equal(ys, labels[[100, 9999, 250]])
    again = ec.simulate_saccades(images[100], rng=np.random.default_rng(5))
    np.testing.assert_array_equal(recs[0], again)  # the first draw of the same generator
    for bad in ([99], [0, 100], [10_000]):
        with pytest.raises(ValueError, match=r"indices must lie in 100..9999"):
            ec.simulate_mnist(bad, images=images, labels=labels)
    with pytest.raises(ValueError, match="indices must be a 1-D array of ints"):
        ec.simulate_mnist([150.0], images=images, labels=labels)


@pytest.mark.parametrize("call, match", [
    (lambda: ec.simulate_events(np.zeros((3, 2)), np.arange(3.0)), "frames must have shape"),
    (lambda: ec.simulate_events(np.zeros((3, 2, 2)), np.arange(2.0)), "times_ms must have"),
    (lambda: ec.simulate_events(np.zeros((3, 2, 2)), np.array([0.0, 1.0, 1.0])),
     "strictly increasing"),
    (lambda: ec.simulate_events(np.full((2, 1, 1), np.nan), np.arange(2.0)), "finite"),
    (lambda: ec.simulate_events(np.zeros((2, 1, 1)), np.arange(2.0), threshold=0.0),
     "threshold must be a finite number > 0"),
    (lambda: ec.simulate_events(np.zeros((2, 1, 1)), np.arange(2.0), threshold_std=-1.0),
     "threshold_std must be a finite number >= 0"),
    (lambda: ec.simulate_saccades(np.zeros((29, 28))), "at most 28 x 28"),
    (lambda: ec.simulate_saccades(np.full((4, 4), 2.0)), "intensities in"),
    (lambda: ec.simulate_saccades(np.zeros((4, 4)), dt=0.0), "dt must be"),
    (lambda: ec.simulate_saccades(np.zeros((4, 4)), baseline=0.0), "baseline must be"),
])
def test_bad_arguments_are_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()
