"""Config loading: YAML + dotted overrides, typed conversion, clear errors for bad keys."""

import dataclasses
from typing import Literal, Optional

import pytest

from toolrl_jax.config_io import config_to_dict, load_config, save_config
from toolrl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optim:
    lr: float = 1e-6
    grad_clip: Optional[float] = 1.0
    schedule: Literal["constant", "cosine"] = "constant"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Root:
    name: str = "x"
    steps: int = 10
    use_kl: bool = False
    stops: tuple[str, ...] = ("</tool_call>",)
    optim: Optim = dataclasses.field(default_factory=Optim)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: demo\noptim:\n  lr: 3.0e-5\n  schedule: cosine\n")
    cfg = load_config(Root, p, ["steps=7", "optim.grad_clip=null", "use_kl=true", "stops=a,b"])
    assert cfg == Root(name="demo", steps=7, use_kl=True, stops=("a", "b"),
                       optim=Optim(lr=3e-5, grad_clip=None, schedule="cosine"))
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert load_config(Root, out) == cfg
    assert config_to_dict(cfg)["optim"]["lr"] == 3e-5


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'lr'"):
        load_config(Root, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz'.*'steps'"):
        load_config(Root, None, ["stepz=3"])


def test_bad_values():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Root, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="optim.schedule"):
        load_config(Root, None, ["optim.schedule=linear"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(Root, None, ["steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, "/nonexistent.yaml")
