"""Config loading: presets, YAML, CLI overrides, --set; errors name the field."""
import pytest

from benchmark.config import CONFIG_DIR, CellConfig, ConfigError, build_config, load_yaml


def test_quick_preset_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("generators: [cutpaste, draem]\ndetector_cfg: {unet: {steps: 7}}\n")
    cfg = build_config("quick", y, {"seeds": "0,1", "categories": "a,b"}, ["detector_cfg.unet.lr=0.5"])
    assert cfg.generators == ["cutpaste", "draem"]
    assert cfg.seeds == [0, 1] and cfg.categories == ["a", "b"]
    assert cfg.detector_cfg["unet"]["steps"] == 7 and cfg.detector_cfg["unet"]["lr"] == 0.5
    preset = load_yaml(CONFIG_DIR / "quick.yaml")["detector_cfg"]["unet"]
    assert cfg.detector_cfg["unet"]["base_width"] == preset["base_width"]  # preset value kept under the merge


@pytest.mark.parametrize("text,field", [("colour: red\n", "colour"), ("seeds: [a]\n", "seeds"),
                                        ("split: {fraction: 1.5}\n", "split.fraction"),
                                        ("image_size: big\n", "image_size")])
def test_bad_fields_are_named(tmp_path, text, field):
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError, match=field.split(".")[0]):
        build_config("quick", y)


def test_missing_config_file_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        build_config(None, tmp_path / "nope.yaml")


def test_cell_hash_ignores_device_but_not_seed():
    a = CellConfig("d", "c", "g", "u", seed=0)
    assert a.hash() == CellConfig("d", "c", "g", "u", seed=0, device="cuda").hash()
    assert a.hash() != CellConfig("d", "c", "g", "u", seed=1).hash()
    assert CellConfig.from_dict(a.to_dict()) == a


def test_ablation_variants_inherit_the_parent_settings_and_refuse_mixed_scales():
    from benchmark.runner import resolve_components

    cfg = build_config("quick", None, {"generators": "dhdiff,dhdiff_dda", "categories": "wood"},
                       ["generator_cfg.dhdiff.steps=7", "generator_cfg.dhdiff_dda.lr=0.01"])
    comp = resolve_components(cfg)
    assert comp[("generator", "dhdiff")]["steps"] == 7 and comp[("generator", "dhdiff_dda")]["steps"] == 7
    assert comp[("generator", "dhdiff_dda")]["lr"] == 0.01 and comp[("generator", "dhdiff")]["lr"] != 0.01
    mixed = build_config("quick", None, {"generators": "dhdiff,dhdiff_ssm", "categories": "wood"},
                         ["generator_cfg.dhdiff.scale=sd", "generator_cfg.dhdiff_ssm.scale=tiny"])
    with pytest.raises(ConfigError, match="scale"):
        resolve_components(mixed)
