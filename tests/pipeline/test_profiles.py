"""configs/: the replicated profile's keys apply to params.yaml as `dvc exp run -S` would, and it covers the study."""

from __future__ import annotations

import pytest
import yaml

from eapo.config import params_from_dict, set_dotted
from eapo.data.synthetic import generate
from flows.pipeline import dvc_set_args, flatten_profile, load_profile, study_overrides
from tests.conftest import ROOT

PROFILE = ROOT / "configs" / "replicated.params.yaml"


def test_flatten_profile_gives_dotted_keys_and_keeps_lists_whole():
    assert flatten_profile({"study": {"seeds": [0, 1]}, "prepare": {"synthetic": {"n": 5}}, "x": {}}) == {
        "study.seeds": [0, 1], "prepare.synthetic.n": 5, "x": {}}
    with pytest.raises(ValueError, match="mapping"):
        flatten_profile([1, 2])  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_profile(ROOT / "configs" / "nope.yaml")
    # Pipeline flags become the same dotted keys; --seeds is study.seeds, --seed every stage's seed.
    sets = study_overrides(["grpo"], 3, {"train.steps": 2}, seeds=[0, 1])
    assert sets["study.variants"] == ["grpo"] and sets["study.seeds"] == [0, 1]
    assert sets["train.seed"] == 3 and sets["prepare.seed"] == 3 and sets["train.steps"] == 2


def test_replicated_profile_is_valid_and_covers_every_variant():
    profile = load_profile(PROFILE)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Every variant defined in params.yaml (the entropy baselines included, once they are defined) is in the study.
    assert set(raw["variants"]) <= set(profile["study.variants"])
    assert len(profile["study.seeds"]) >= 3 and profile["evaluate.num_prompts"] >= 100
    # Every other key is a real params key with a valid value (a typo fails here, naming the key).
    for key, value in profile.items():
        if key != "study.variants":
            set_dotted(raw, key, value)
    params = params_from_dict(raw)
    assert params.study.seeds == profile["study.seeds"]
    test_prompts = round(params.prepare.synthetic.n * params.prepare.test_fraction)
    # The prompt space is large enough: the profile once asked for 150 one-digit additions, of which there are 100.
    fams = params.prepare.synthetic.families
    assert len(generate(params.prepare.synthetic.n, families=list(fams), levels=fams,
                        seed=params.prepare.synthetic.seed)) == params.prepare.synthetic.n
    assert test_prompts >= params.evaluate.num_prompts
    assert max(params.evaluate.pass_k) <= params.evaluate.k


def test_every_profile_key_reaches_dvc_as_one_parsable_set_argument():
    """The replicated profile's 10-variant list once reached `dvc exp run -S` wrapped over two lines (YAML's 80-column
    flow style), and DVC's Hydra override parser rejected it: the replicated study could not start."""
    from dvc.utils.hydra import to_hydra_overrides

    profile = load_profile(PROFILE)
    sets = dvc_set_args(profile)
    assert len(sets) == len(profile) and all("\n" not in s for s in sets)
    parsed = {o.key_or_group: o.value() for o in to_hydra_overrides(sets)}
    assert parsed["study.variants"] == profile["study.variants"]
    assert parsed["study.seeds"] == profile["study.seeds"] and parsed["train.steps"] == profile["train.steps"]
    # Strings that YAML would quote stay one value; nested mappings survive.
    assert dvc_set_args({"a.b": "x y", "c": {"d": [1, 2]}}) == ["a.b=x y", "c={d: [1, 2]}"]
