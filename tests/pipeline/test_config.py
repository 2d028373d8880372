import copy

import pytest
import yaml

from eapo.config import ConfigError, load_params, params_from_dict
from tests.conftest import ROOT

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(dotted: str, value):
    raw = copy.deepcopy(RAW)
    node = raw
    *head, last = dotted.split(".")
    for part in head:
        node = node[part]
    node[last] = value
    return raw


def test_default_params_load_typed_and_frozen():
    p = load_params(ROOT / "params.yaml")
    assert p.rollout.group_size == RAW["rollout"]["group_size"]
    assert p.variants["eapo"].weighting == "eapo"
    with pytest.raises(Exception):
        p.train.lr = 1.0  # frozen


@pytest.mark.parametrize("dotted,value,needle", [
    ("train.group_size", 1, "train.group_size"),
    ("rollout.group_size", 1, "rollout.group_size"),
    ("train.lr", -1e-5, "train.lr"),
    ("train.minibatches", 3, "train.minibatches"),  # 8 prompts x G=4 = 32 is not divisible by 3
    ("variants.eapo.alpha", 1.5, "variants.eapo"),
    ("variants.top20.rho", 0.0, "variants.top20"),
    ("variants.drop_pos_high.quadrant", "sideways", "variants.drop_pos_high"),
    ("study.variants", ["grpo", "nope"], "study.variants[1]"),
    ("rollout.temperature", "hot", "rollout.temperature"),
    ("model.dtype", "float8", "model.dtype"),
    ("train.typo_key", 3, "train.typo_key"),
])
def test_bad_values_fail_naming_the_key(dotted, value, needle):
    with pytest.raises(ConfigError) as err:
        params_from_dict(with_change(dotted, value))
    assert needle in str(err.value)


def test_unknown_section_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="unknown section"):
        params_from_dict({**RAW, "trian": {}})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(RAW))
    p = load_params(path, {"variants.eapo.alpha": 0.7, "train.steps": 3})
    assert p.variants["eapo"].alpha == 0.7 and p.train.steps == 3
    assert p.subset("variants.eapo")["variants.eapo"]["alpha"] == 0.7


def test_paper_scale_profile_is_valid():
    p = load_params(ROOT / "configs" / "paper-scale.params.yaml")
    assert p.train.group_size == 8 and p.train.max_new_tokens == 4096 and p.model.device == "cuda"
    assert p.train.prompts_per_step * p.train.group_size % p.train.minibatches == 0
