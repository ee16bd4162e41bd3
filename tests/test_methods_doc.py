"""docs/methods.md: every config key it names exists in the config tree, every file it names
exists, and every reference to it in the repository resolves."""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import re
import typing


REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "methods.md"
SECTIONS = ("model", "mesh", "data", "env", "rollout", "reward", "algo", "optim", "sft",
            "metrics", "train", "tree", "fission")
# `section.key.sub` or `section.key.sub: value` inside backticks
KEY_RE = re.compile(r"`((?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:: ([^`]+))?`" % "|".join(SECTIONS))
# keys whose values are names in a registry / table: (module, attribute)
NAMED_VALUES = {
    "algo.advantage.estimator": ("toolrl_jax.rl.advantages", "ESTIMATORS"),
    "reward.toolrl.variant": ("toolrl_jax.rewards.config", "VARIANTS"),
    "env.name": ("toolrl_jax.train.environments", "ENVIRONMENTS"),
}
# modules of the composable trainer (the lead's branch), named by the doc before they land here
LANDING_WITH_THE_NEW_TREE: set[str] = set()
DICT_KEYS = {"reward.components": ("toolrl_jax.train.rewards", "REWARD_COMPONENTS")}


def doc_keys() -> list[tuple[str, str | None]]:
    return sorted(set(KEY_RE.findall(DOC.read_text())), key=str)


def _names(module: str, attr: str):
    return getattr(importlib.import_module(module), attr)


def _unwrap(hint):
    """X | None -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return hint


def check_key(root: type, dotted: str, value: str | None) -> str | None:
    """None if ``dotted`` (and ``value``) is valid in the dataclass tree ``root``, else why not."""
    parts = dotted.split(".")
    cls: typing.Any = root
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if prefix in DICT_KEYS:  # a name inside a name -> weight mapping
            if part not in _names(*DICT_KEYS[prefix]):
                return f"{dotted}: {part!r} is not a registered {prefix} name"
            return None if i == len(parts) - 1 else f"{dotted}: nothing below {prefix}.{part}"
        if not dataclasses.is_dataclass(cls):
            return f"{dotted}: {prefix} is not a section"
        hints = typing.get_type_hints(cls)
        if part not in {f.name for f in dataclasses.fields(cls)}:
            return f"{dotted}: {cls.__name__} has no field {part!r}"
        cls = _unwrap(hints[part])
    if value is not None:
        value = value.strip()
        if dotted in NAMED_VALUES and value not in _names(*NAMED_VALUES[dotted]):
            return f"{dotted}: {value!r} is not one of its names"
        if typing.get_origin(cls) is typing.Literal and value not in [str(a) for a in typing.get_args(cls)]:
            return f"{dotted}: {value!r} is not one of {typing.get_args(cls)}"
    return None


def test_doc_names_config_keys():
    keys = doc_keys()
    assert len(keys) > 40, "the key pattern no longer finds the keys in docs/methods.md"
    assert ("algo.advantage.estimator", "rloo") in keys
    assert ("reward.components.otc", "") in keys


@dataclasses.dataclass(frozen=True)
class _Leaf:
    mode: typing.Literal["a", "b"] = "a"
    cap: float | None = None


@dataclasses.dataclass(frozen=True)
class _Root:
    algo: _Leaf = dataclasses.field(default_factory=_Leaf)


def test_checker_rejects_wrong_keys():
    assert check_key(_Root, "algo.mode", "a") is None
    assert check_key(_Root, "algo.cap", None) is None
    assert "no field" in check_key(_Root, "algo.mood", None)
    assert "not one of" in check_key(_Root, "algo.mode", "c")
    assert "not a section" in check_key(_Root, "algo.mode.deeper", None)


def test_every_config_key_in_methods_doc_exists():
    from toolrl_jax.train.config import TrainConfig

    problems = [p for key, value in doc_keys() if (p := check_key(TrainConfig, key, value or None))]
    assert not problems, "\n".join(problems)


def test_files_named_in_methods_doc_exist():
    paths = set(re.findall(r"`((?:toolrl_jax|tests|configs|docs)/[\w/.*]+?)`", DOC.read_text()))
    paths |= {"toolrl_jax/" + p for p in re.findall(r"`((?:rewards|rl|train|tools)/\w+\.py)`",
                                                     DOC.read_text())}
    assert paths
    missing = [p for p in sorted(paths - LANDING_WITH_THE_NEW_TREE) if not list(REPO.glob(p))]
    assert not missing, missing


def test_references_to_the_methods_doc_resolve():
    stale = []
    for path in [*REPO.glob("toolrl_jax/**/*.py"), *REPO.glob("tests/**/*.py"),
                 *REPO.glob("docs/*.md"), REPO / "README.md"]:
        text = path.read_text(encoding="utf-8")
        if "METHODS" + ".md" in text:
            stale.append(str(path.relative_to(REPO)))
    assert not stale, f"these cite a methods file outside the repository (use docs/methods.md): {stale}"
    assert DOC.is_file()
