"""Configs: the shipped recipes, YAML and overrides, and errors that name the key at fault."""

from __future__ import annotations

import math

import pytest

from geomim.training.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    shipped_configs,
)
from geomim.training.startup import check_startup
from geomim.training.teacher_factory import HistogramTeacherSpec


def test_every_shipped_config_parses_and_passes_the_startup_checks_on_8_ranks(tmp_path):
    names = [p.stem for p in shipped_configs()]
    assert names == ["cva_vit_base", "swin_base", "swin_large", "tiny_synthetic"]
    for name in names:
        version = load_config(name).data.version
        (tmp_path / version).mkdir(exist_ok=True)
        config = load_config(name, [f"data.root={tmp_path}", f"run_dir={tmp_path / name}"])
        world = 8 if config.train.batch_size == 16 else 1
        check_startup(config, world_size=world)


@pytest.mark.parametrize("name", ["swin_base", "swin_large", "cva_vit_base"])
def test_shipped_recipes_are_the_official_optimisation(name):
    config = load_config(name)
    assert config.optim.lr == 2e-4 and config.optim.weight_decay == 0.01
    assert config.optim.final_lr_factor == 1e-3 and config.optim.grad_clip == 35.0
    assert config.optim.warmup_steps == 500
    assert math.isclose(config.optim.warmup_start_factor, 1 / 3)
    assert (config.train.epochs, config.train.seed) == (50, 0)
    assert config.train.accumulation(world_size=8) == 1  # 2 per GPU on 8 GPUs
    assert config.train.accumulation(world_size=2) == 4
    assert config.model.view_transform.image_size == (256, 704)
    expected = {"swin_base": "geomim_base", "swin_large": "geomim_large"}
    assert config.model.encoder == expected.get(name, "geomim_vit_base")


def test_recipe_config_equals_the_dataclass_defaults():
    assert load_config("swin_base", ["run_dir=runs/geomim"]) == TrainConfig()


def test_dumped_config_reads_back_equal(tmp_path):
    config = load_config("tiny_synthetic", ["optim.betas=[0.8, 0.9]", "data.split=null"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_overrides_take_yaml_values_and_scientific_notation_is_a_float():
    config = load_config(
        "tiny_synthetic",
        ["optim.lr=3e-4", "train.max_steps=null", "model.view_transform.image_size=[128, 352]"],
    )
    assert config.optim.lr == 3e-4
    assert config.train.max_steps is None
    assert config.model.view_transform.image_size == (128, 352)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optim": {"weight_decy": 0}}, r"unknown key 'optim.weight_decy'.*'weight_decay'\?"),
        ({"model": {"decoder": {"widht": 8}}}, r"unknown key 'model.decoder.widht'"),
        ({"trian": {}}, r"unknown key 'trian'.*did you mean 'train'"),
        ({"teacher": {"kind": "histogram", "cels": 4}}, r"unknown key 'teacher.cels'"),
    ],
)
def test_unknown_keys_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"batch_size": "16"}}, r"train.batch_size: expected int, got str '16'"),
        ({"train": {"batch_size": 16.0}}, r"train.batch_size: expected int, got float"),
        ({"train": {"fsdp": "yes"}}, r"train.fsdp: expected bool, got str 'yes'"),
        ({"optim": {"lr": True}}, r"optim.lr: expected float, got bool"),
        ({"optim": {"betas": [0.9]}}, r"optim.betas: expected a list of 2"),
        ({"train": {"precision": "fp8"}}, r"train.precision: expected one of"),
        ({"model": {"view_transform": {"xbound": [0, "a", 1]}}}, r"xbound\[1\]: expected float"),
        ({"data": "nuscenes"}, r"data: expected a mapping, got str"),
        (
            {"teacher": {"kind": "lidar2"}},
            r"teacher.kind: expected one of \['histogram', 'lidar'\]",
        ),
        ({"teacher": {"channels": 4}}, r"teacher: expected a mapping with a 'kind'"),
    ],
)
def test_wrong_types_are_named_with_the_expected_and_the_actual(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_values_out_of_range_and_mismatched_sections_are_errors():
    with pytest.raises(ConfigError, match=r"train: micro_batch must be >= 1, got 0"):
        config_from_dict({"train": {"micro_batch": 0}})
    with pytest.raises(ConfigError, match=r"model: mask_ratio must lie in \(0, 1\)"):
        config_from_dict({"model": {"mask_ratio": 1.5}})
    with pytest.raises(ConfigError, match=r"teacher \(histogram\) maps are \(C, X, Y\) = "):
        config_from_dict({"teacher": {"kind": "histogram", "cells": 90}})
    with pytest.raises(ConfigError, match=r"data.cameras lists 2 cameras, expected"):
        config_from_dict({"data": {"cameras": ["CAM_FRONT", "CAM_BACK"]}})


def test_batch_must_split_over_ranks_and_micro_batches():
    loop = config_from_dict({"train": {"batch_size": 12, "micro_batch": 2}}).train
    assert loop.accumulation(world_size=3) == 2
    with pytest.raises(ConfigError, match=r"batch_size 12 does not split over 4 rank\(s\) x"):
        loop.accumulation(world_size=4)


def test_teacher_spec_round_trips_with_its_kind():
    config = config_from_dict({"teacher": {"kind": "histogram", "channels": 256, "bound": 50}})
    assert config.teacher == HistogramTeacherSpec(channels=256, bound=50.0)
    assert config_to_dict(config)["teacher"] == {
        "kind": "histogram",
        "cache": "",
        "channels": 256,
        "cells": 180,
        "bound": 50.0,
    }


def test_invalid_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"no config file 'swin_tiny': expected a YAML file"):
        load_config("swin_tiny")
