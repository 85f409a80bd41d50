"""Host-model calibration: the fits recover known coefficients; the cache is keyed and checked.
(What the fitted model predicts on this machine is a benchmark figure, not a test.)"""

import json

import pytest
from optkit.backends.pim import calibrate as cal
from optkit.backends.pim.cost import SCALED, HostModel

from optkit.errors import ConfigError


def test_kernel_fit_recovers_a_known_line():
    l2 = 2 << 20
    truth = (1.5, 8.0, 4.0, 30.0)
    rows = []
    for mflop, mb in [(0.01, 0.01), (0.5, 0.2), (4.0, 1.0), (1.0, 6.0), (20.0, 3.0), (0.1, 12.0)]:
        x = cal.features(mflop, mb, l2)
        rows.append((mflop, mb, sum(c * v for c, v in zip(truth, x, strict=True))))
    fitted = cal._fit(rows, l2)
    assert fitted == pytest.approx(truth, rel=1e-6)
    assert cal._loo_mape(rows, l2) == pytest.approx(0.0, abs=1e-6)


def test_whole_model_scale_recovers_a_known_factor():
    rows = [(sums, 0.6 * sum(sums)) for sums in ([10.0, 1.0, 5.0], [50.0, 3.0, 20.0], [5.0, 10.0, 2.0])]
    rows.append(([100.0, 1.0, 40.0], 5.0 * 141.0))  # one noisy timing does not move the median
    assert cal._fit_scales(rows) == pytest.approx(dict.fromkeys(SCALED, 0.6), rel=1e-6)


def test_cache_is_per_machine_and_malformed_models_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTKIT_CACHE_DIR", str(tmp_path))
    path = cal.cache_path(True)
    assert path.is_relative_to(tmp_path) and path != cal.cache_path(False)
    model = HostModel({"gemm": (1.0, 2.0, 3.0, 4.0)}, 5.0, 1 << 20, scale={"gemm": 0.5})
    model.save(path)
    assert cal.host_model(True).scale == {"gemm": 0.5}  # read back, not recalibrated
    with pytest.raises(ConfigError, match="malformed"):
        HostModel.from_dict({**json.loads(path.read_text()), "coef": {"gemm": [1.0]}})


def test_cache_sizes_are_read():
    assert cal.cache_bytes(2) > 0 and cal.llc_bytes() >= cal.cache_bytes(2)
    assert cal.cpu_key()
