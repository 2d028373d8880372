import copy
import dataclasses
import typing

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
    with pytest.raises(dataclasses.FrozenInstanceError):
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


# ---------------------------------------------------------------------------------------------- every value at load

@pytest.mark.parametrize("dotted,value,needle", [
    # registry names, looked up in eapo/core and eapo/data
    ("train.advantage", "nope", "train.advantage"),
    ("annotate.advantage", "nope", "annotate.advantage"),
    ("train.agg", "nope", "train.agg"),
    ("variants.grpo.weighting", "nope", "variants.grpo.weighting"),
    ("prepare.synthetic.families", {"add": [1], "div": [1]}, "prepare.synthetic.families.div"),
    ("prepare.synthetic.families", {"mul": [7]}, "prepare.synthetic.families.mul[0]"),
    ("prepare.synthetic.families", {"add": []}, "prepare.synthetic.families.add"),
    ("model.device", "gpu", "model.device"),
    ("prepare.sources", [{"kind": "xml", "path": "a.xml"}], "prepare.sources[0].kind"),
    # NaN and inf
    ("reward.timeout_s", float("nan"), "reward.timeout_s"),
    ("reward.timeout_s", float("inf"), "reward.timeout_s"),
    ("train.lr", float("nan"), "train.lr"),
    ("train.lr", float("inf"), "train.lr"),
    ("variants.eapo.phi", float("nan"), "variants.eapo.phi"),
    ("report.reward_threshold", float("-inf"), "report.reward_threshold"),
    # ranges
    ("rollout.num_prompts", 0, "rollout.num_prompts"),
    ("evaluate.num_prompts", -1, "evaluate.num_prompts"),
    ("report.ci", 1.5, "report.ci"),
    ("report.ci", 1.0, "report.ci"),
    ("report.bootstrap", -5, "report.bootstrap"),
    ("annotate.cmi.ci", 0.0, "annotate.cmi.ci"),
    ("prepare.test_fraction", 1.0, "prepare.test_fraction"),
    ("reward.timeout_s", 0.0, "reward.timeout_s"),
    ("reward.workers", 0, "reward.workers"),
    ("evaluate.k", 0, "evaluate.k"),
    ("train.steps", 0, "train.steps"),
    ("train.warmup_steps", -1, "train.warmup_steps"),
    ("train.top_p", 0.0, "train.top_p"),
    ("model.threads", 0, "model.threads"),
    ("prepare.max_prompt_chars", 0, "prepare.max_prompt_chars"),
    ("annotate.tau", -0.5, "annotate.tau"),
])
def test_every_value_is_checked_at_load(dotted, value, needle):
    with pytest.raises(ConfigError) as err:
        params_from_dict(with_change(dotted, value))
    assert needle in str(err.value), str(err.value)


def test_registry_errors_list_the_registered_names():
    from eapo.core.advantages import ADVANTAGES
    from eapo.core.losses import AGGREGATIONS

    with pytest.raises(ConfigError) as err:
        params_from_dict(with_change("train.advantage", "nope"))
    assert all(name in str(err.value) for name in ADVANTAGES)
    with pytest.raises(ConfigError) as err:
        params_from_dict(with_change("train.agg", "nope"))
    assert all(name in str(err.value) for name in AGGREGATIONS)
    for section in ("train", "rollout"):
        with pytest.raises(ConfigError) as err:
            params_from_dict(with_change(f"{section}.backend", "vllm"))
        assert str(err.value) == f"{section}.backend: unknown sampler backend 'vllm'; known: fast, generate"


def test_a_newly_registered_name_is_accepted():
    from eapo.core.advantages import ADVANTAGES, register_advantage

    @register_advantage("test_only_adv")
    def _adv(rewards, group_ids, eps=1e-6):
        return rewards

    try:
        assert params_from_dict(with_change("train.advantage", "test_only_adv")).train.advantage == "test_only_adv"
    finally:
        del ADVANTAGES["test_only_adv"]


def test_a_newly_registered_sampler_backend_is_accepted():
    from eapo.sampler import BACKENDS

    @BACKENDS.register("test_only_backend")
    def _runner(model, rows, **kw):
        raise AssertionError("not called: loading params only checks the name")

    try:
        assert params_from_dict(with_change("train.backend", "test_only_backend")).train.backend == "test_only_backend"
    finally:
        BACKENDS.unregister("test_only_backend")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "auto"])
def test_device_names_torch_knows_are_accepted(device):
    assert params_from_dict(with_change("model.device", device)).model.device == device


@pytest.mark.parametrize("text", ["1e-06", "1.0e-6", "1E-6", "1e-6", "0.000001", "1.0E-06"])
def test_floats_in_any_yaml_notation(tmp_path, text):
    base = (ROOT / "params.yaml").read_text()
    assert "  lr: 4.0e-5\n" in base
    path = tmp_path / "params.yaml"
    path.write_text(base.replace("  lr: 4.0e-5\n", f"  lr: {text}\n"))
    assert load_params(path).train.lr == pytest.approx(1e-6, rel=1e-12)
    # the same through -S parsing, and from a plain YAML 1.1 reader's string
    from flows.stage import parse_overrides

    assert load_params(ROOT / "params.yaml", parse_overrides([f"train.lr={text}"])).train.lr == pytest.approx(1e-6)
    assert params_from_dict(with_change("train.lr", yaml.safe_load(text))).train.lr == pytest.approx(1e-6)


def test_a_string_is_still_not_a_number():
    with pytest.raises(ConfigError, match="train.lr"):
        params_from_dict(with_change("train.lr", "1e-6x"))


@pytest.mark.parametrize("item,needle", [
    ("train.steps=[1,", "train.steps"),
    ("train.lr.x=1", "train.lr"),
    ("train..lr=1", "train..lr"),
    ("=3", "key=value"),
    ("train.steps", "key=value"),
])
def test_malformed_overrides_are_config_errors(item, needle):
    from flows.stage import parse_overrides

    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", parse_overrides([item]))
    assert needle in str(err.value)


# ------------------------------------------------------------------------------ declarations and params.yaml agree

def _config_classes():
    from eapo import config

    seen, todo = [], [*config.SECTIONS.values(), config.VariantConfig]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for f in dataclasses.fields(cls):
            for tp in typing.get_args(typing.get_type_hints(cls)[f.name]) or (typing.get_type_hints(cls)[f.name],):
                if dataclasses.is_dataclass(tp):
                    todo.append(tp)
    return seen


def test_every_config_field_is_documented_where_declared():
    """Each field is followed by its docstring, in its own class or the class it inherits it from."""
    import ast
    import inspect

    undocumented = []
    for cls in _config_classes():
        documented = set()
        for klass in cls.__mro__:
            if not dataclasses.is_dataclass(klass):
                continue
            body = ast.parse(inspect.getsource(klass)).body[0].body
            for st, nxt in zip(body, body[1:]):
                if (isinstance(st, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                        and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                    documented.add(st.target.id)
        undocumented += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if f.name not in documented]
    assert not undocumented, f"fields without a docstring: {undocumented}"


def test_params_yaml_defaults_equal_the_dataclass_defaults():
    from eapo.config import SECTIONS

    not_listed = {("evaluate", "group_size")}  # inherited from the sampling keys and ignored by evaluate (k counts)
    for name, cls in SECTIONS.items():
        declared = dataclasses.asdict(cls())
        missing = {k for k in declared if k not in RAW[name] and (name, k) not in not_listed}
        assert not missing, f"{name}: params.yaml does not list {sorted(missing)}"
        for key, value in declared.items():
            if key in RAW[name]:
                assert RAW[name][key] == value, f"{name}.{key}: params.yaml has {RAW[name][key]!r}, default {value!r}"
    loaded = load_params(ROOT / "params.yaml")
    for name, cls in SECTIONS.items():
        assert getattr(loaded, name) == cls(), name


@pytest.mark.parametrize("dotted,value,needle", [
    ("prepare.seed", -1, "prepare.seed"),
    ("train.seed", -3, "train.seed"),
    ("study.variants", ["grpo", "eapo", "grpo"], "study.variants[2]"),
    ("prepare.sources", [{"kind": "jsonl", "path": "a.jsonl", "fields": {"question": "q"}}],
     "prepare.sources[0].fields.question"),
])
def test_seeds_duplicates_and_field_names(dotted, value, needle):
    with pytest.raises(ConfigError) as err:
        params_from_dict(with_change(dotted, value))
    assert needle in str(err.value), str(err.value)
