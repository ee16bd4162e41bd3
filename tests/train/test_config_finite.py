"""Non-finite numbers in configs are refused with the key named (issue 10, item 6)."""

import dataclasses
from typing import Any, Optional

import pytest

from toolrl_jax.config_io import config_from_dict, load_config
from toolrl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optim:
    learning_rate: float = 1e-6
    grad_clip_norm: Optional[float] = 1.0
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Root:
    optim: Optim = dataclasses.field(default_factory=Optim)
    components: dict = dataclasses.field(default_factory=dict)
    extra: Any = None


@pytest.mark.parametrize("override, key", [
    ("optim.learning_rate=.nan", "optim.learning_rate"),
    ("optim.learning_rate=nan", "optim.learning_rate"),
    ("optim.learning_rate=-.inf", "optim.learning_rate"),
    ("optim.grad_clip_norm=inf", "optim.grad_clip_norm"),
    ("optim.betas=[0.9, .nan]", "optim.betas[1]"),
    ("components={toolrl: 1.0, otc: .inf}", "components.otc"),
    ("extra=[{a: .nan}]", "extra[0].a"),
])
def test_non_finite_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(Root, None, [override])
    message = str(info.value)
    assert message.startswith(f"{key}: ") and "not a finite number" in message
    assert "\n" not in message


def test_non_finite_values_in_yaml_and_finite_ones_pass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: .NaN\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(Root, path)
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        config_from_dict(Root, {"optim": {"learning_rate": float("nan")}})
    cfg = load_config(Root, None, ["optim.learning_rate=3e-6", "components={toolrl: 1.0}",
                                   "optim.grad_clip_norm=null", "extra=[1.0e+300]"])
    assert cfg.optim.learning_rate == 3e-6 and cfg.components == {"toolrl": 1.0}
    assert cfg.optim.grad_clip_norm is None and cfg.extra == [1e300]
