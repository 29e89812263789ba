"""Presets: the layers a run's configuration is resolved from.

All settings live in one file, ``diswm/configs/presets.yaml``: a ``defaults`` block nested by
component and named presets that are deep-merged over it in the order given, then dotted
``--set key=value`` overrides; the result is built and validated by `diswm.config.build_config`,
and checked against this machine (`diswm.machine.check_fits`: memory, CUDA), since a config
resolved here is one a run is about to start with::

    cfg = load_config(["debug"], ["train.steps=20000", "env.task=dmc:walker_walk"])

A preset can also be the path of a YAML file (a resolved ``config.yaml`` of an earlier run, or a
partial file in the same nested form).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from diswm.config import (
    SECRET_IN_CONFIG,
    Config,
    ConfigError,
    build_config,
    deep_merge,
    read_yaml,
    shorten,
    upgrade_saved,
)
from diswm.machine import check_fits

PRESETS_RESOURCE = "presets.yaml"


def read_presets() -> dict[str, dict]:
    """All named presets of `diswm/configs/presets.yaml`."""
    text = resources.files("diswm.configs").joinpath(PRESETS_RESOURCE).read_text()
    presets = yaml.safe_load(text)
    assert isinstance(presets, dict) and "defaults" in presets, "presets.yaml needs 'defaults'"
    return presets


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], parsed value). Values parse as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {shorten(text)} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must be section.key, e.g. train.steps=1000")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        raise ConfigError(f"override {key}: expected a scalar value, got {shorten(raw)}")
    return parts, ("" if value is None else value)


def resolve_layers(presets: Iterable[str] = (), overrides: Iterable[str] = ()) -> dict[str, Any]:
    """defaults <- each preset in order <- each override; returns the merged nested dict."""
    table = read_presets()
    data: dict[str, Any] = deep_merge({}, table["defaults"])
    for name in presets:
        if name in table:
            layer = table[name] or {}
        elif name.endswith((".yaml", ".yml")):
            layer = read_yaml(Path(name))
        else:
            valid = ", ".join(k for k in table if k != "defaults")
            raise ConfigError(f"unknown preset {name!r}; valid presets: {valid} "
                              "(or the path of a .yaml file)")
        data = deep_merge(data, upgrade_saved(layer))
    for text in overrides:
        (section, key), value = parse_override(text)
        if (section, key) == ("replay", "password"):
            raise ConfigError(SECRET_IN_CONFIG)
        if (section, key) == ("train", "amp"):
            raise ConfigError("train.amp was replaced by train.precision "
                              "(auto | fp32 | bf16 | fp16), e.g. --set train.precision=bf16")
        data = deep_merge(data, {section: {key: value}})
    return data


def load_config(presets: Iterable[str] = (), overrides: Iterable[str] = ()) -> Config:
    """The resolved, validated config for `--config PRESET...` and `--set key=value...`,
    checked against this machine."""
    return check_fits(build_config(resolve_layers(presets, overrides)))


def preset_names() -> list[str]:
    return [name for name in read_presets() if name != "defaults"]


__all__ = ["load_config", "parse_override", "preset_names", "read_presets",
           "resolve_layers"]
