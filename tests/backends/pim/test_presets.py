"""PIM presets: sourced figures hold together; preset files are checked."""

import pytest
from optkit.backends.pim.presets import PRESETS, load_preset_file, resolve_preset

from optkit.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent_and_sourced(name):
    preset = resolve_preset(name)
    assert preset.sources, f"{name} names no source"
    assert preset.capacity_bytes > 0 and preset.total_units >= 1
    if preset.peak_tflops:  # units x lanes x clock reproduce the published peak
        assert preset.unit_tflops * preset.units == pytest.approx(preset.peak_tflops, rel=0.25)
    assert preset.host_pj_per_bit > preset.read_pj_per_bit  # leaving the device costs more than reading


def test_hbm_pim_matches_its_datasheet():
    p = resolve_preset("hbm-pim")
    assert p.unit_tflops * p.units == pytest.approx(1.2, rel=0.05)  # 1.2 TFLOPS per cube
    assert p.units * p.unit_gbps == pytest.approx(4 * p.link_gbps, rel=0.01)  # 4x internal bandwidth


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="hbm-pim"):
        resolve_preset("hmb-pim")


def test_preset_file_starts_from_a_base(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "upmem"\nname = "upmem-half"\nunits = 1280\ncapacity_gib = 80\n')
    preset = load_preset_file(path)
    assert preset.units == 1280 and preset.numerics == "int8" and preset.name == "upmem-half"
    assert resolve_preset(str(path)).units == 1280


@pytest.mark.parametrize(
    "text, match",
    [
        ('base = "hbm-pim"\npeak_tflops = 9.0\n', "inconsistent"),
        ('base = "hbm-pim"\nunits = 0\n', "units must be > 0"),
        ('base = "hbm-pim"\nbanks = 4\n', "unknown key"),
        ('base = "hbm-pim"\nsupports = ["conv"]\n', "supports must list"),
        ('base = "upmem"\nunit_capacity_mib = 4096\n', "exceed capacity"),
        ('base = "hbm-pim"\nunits = "many"\n', "must be a number"),
        ("units = [", "not valid TOML"),
    ],
)
def test_bad_preset_files_are_refused(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_preset_file(path)
