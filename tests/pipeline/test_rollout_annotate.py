"""The rollout and annotate stages end to end on the tiny model, and `dvc repro rollout` on a project copy."""

import json

import numpy as np
import pytest

from eapo.config import load_params
from eapo.contracts import read_artifact
from eapo.lineage import lineage_tree
from tests.conftest import copy_project, dvc, write_tiny_params


@pytest.fixture(scope="module")
def tiny_run(prefect_api, tmp_path_factory):
    from flows.annotate import annotate_flow
    from flows.prepare import prepare_flow
    from flows.rollout import rollout_flow

    root = tmp_path_factory.mktemp("tiny")
    params_path = str(write_tiny_params(root, data_root=root))
    prepare_flow(params_path=params_path)
    metrics = rollout_flow(params_path=params_path)
    summary = annotate_flow(params_path=params_path)
    return load_params(params_path), metrics, summary


def test_rollouts_artifact_matches_teacher_forcing(tiny_run):
    import torch

    from eapo.policy import load_policy
    from eapo.sampler import teacher_forced_logprobs

    params, metrics, _ = tiny_run
    table, lin = read_artifact(params.paths.rollouts, "rollouts")
    assert table.num_rows == params.rollout.num_prompts * params.rollout.group_size
    assert metrics["samples"] == table.num_rows and 0.0 <= metrics["accuracy"] <= 1.0
    assert lin.extra["model"]["kind"] and "prompts_train" in lin.inputs
    torch.set_num_threads(1)
    policy = load_policy("tiny-random-llama", cache_dir=params.paths.model_cache, seed=params.model.seed)
    rows = table.to_pylist()
    for row in rows[:: max(1, len(rows) // 4)]:
        logp, ent = teacher_forced_logprobs(policy.model, row["prompt_ids"], row["response_ids"])
        np.testing.assert_allclose(row["logprobs"], logp, atol=1e-4)
        np.testing.assert_allclose(row["entropies"], ent, atol=1e-4)


def test_rollout_is_deterministic_for_a_seed(tiny_run, prefect_api):
    from flows.rollout import rollout_flow

    params, _, _ = tiny_run
    _, first = read_artifact(params.paths.rollouts, "rollouts")
    rollout_flow(params_path=_params_file(params), overrides=None)
    _, again = read_artifact(params.paths.rollouts, "rollouts")
    assert again.data_sha256 == first.data_sha256
    rollout_flow(params_path=_params_file(params), overrides={"rollout.seed": 1})
    _, other = read_artifact(params.paths.rollouts, "rollouts")
    assert other.data_sha256 != first.data_sha256
    rollout_flow(params_path=_params_file(params), overrides=None)  # restore for the annotate checks


def _params_file(params) -> str:
    from pathlib import Path

    return str(Path(params.paths.prompts_train).parents[2] / "params.yaml")


def test_annotate_outputs_are_consistent(tiny_run):
    params, _, summary = tiny_run
    tokens, lin = read_artifact(params.paths.tokens, "tokens")
    rollouts, _ = read_artifact(params.paths.rollouts, "rollouts")
    assert tokens.num_rows == sum(rollouts["n_tokens"].to_pylist())
    assert lin.extra["tau"] == pytest.approx(summary["tau"])
    stats = json.loads(open(params.paths.quadrant_stats).read())
    counted = sum(q["count"] for q in stats["quadrants"].values())
    labels = tokens["quadrant"].to_pylist()
    assert counted == sum(label != "none" for label in labels)
    shares = [q["grad_share"] for q in stats["quadrants"].values()]
    assert sum(shares) == pytest.approx(1.0, abs=1e-6) or sum(shares) == 0.0
    cmi, _ = read_artifact(params.paths.cmi, "cmi")
    assert 0 < cmi.num_rows <= params.annotate.cmi.positions
    assert all(0 <= v <= np.log(2) + 1e-6 for v in cmi["cmi_plugin"].to_pylist())
    assert set(cmi["estimator"].to_pylist()) == {params.annotate.cmi.estimator} == {"jackknife"}
    # Positions are stratified on τ: half above, half below (4 positions → 2 + 2), and `high` says which.
    ent, high = np.array(cmi["entropy"].to_pylist()), np.array(cmi["high"].to_pylist())
    assert (high == (ent >= np.float32(summary["tau"]))).all()
    assert high.sum() == cmi.num_rows - high.sum() == params.annotate.cmi.positions // 2
    c = stats["cmi"]
    assert c["estimator"] == "jackknife" and c["n_high"] == c["n_low"] == 2
    assert c["mean_cmi_high"] == pytest.approx(np.mean(np.array(cmi["cmi"].to_pylist())[high]), abs=1e-6)
    assert c["diff_high_low"] == pytest.approx(c["mean_cmi_high"] - c["mean_cmi_low"], abs=1e-9)
    assert c["diff_high_low_lo"] <= c["diff_high_low"] <= c["diff_high_low_hi"]
    # Lineage walks back to the prompts.
    tree = lineage_tree(params.paths.tokens)
    assert tree["inputs"]["rollouts"]["inputs"]["prompts_train"]["lineage"]["stage"] == "prepare"


def test_stratified_positions_split_on_tau_and_spread_within_each_stratum():
    from eapo.annotate import stratified_positions

    entropy = np.linspace(0.0, 3.0, 200).astype(np.float32)  # 40 tokens (20%) at or above τ = entropy[160]
    tau = float(entropy[160])
    idx, deciles = stratified_positions(entropy, 16, seed=0, tau=tau)
    assert len(idx) == 16 and len(set(idx.tolist())) == 16
    high = entropy[idx] >= tau
    assert high.sum() == 8  # half above τ, where entropy deciles would have put 2 of 16
    # One pick per equal-count entropy bin within each stratum: picks are ordered like the bins.
    hi_idx, lo_idx = np.sort(idx[high]), np.sort(idx[~high])
    assert all(160 + 5 * b <= j < 160 + 5 * (b + 1) for b, j in enumerate(hi_idx))
    assert all(20 * b <= j < 20 * (b + 1) for b, j in enumerate(lo_idx))
    assert deciles.tolist() == np.searchsorted(np.quantile(entropy, np.linspace(0, 1, 11)[1:-1]), entropy[idx],
                                               side="right").tolist()
    again, _ = stratified_positions(entropy, 16, seed=0, tau=tau)
    assert again.tolist() == idx.tolist()
    # Too few tokens above τ: the low stratum takes the remaining picks.
    idx, _ = stratified_positions(entropy, 16, seed=0, tau=float(entropy[-3]))
    assert len(idx) == 16 and (entropy[idx] >= entropy[-3]).sum() == 3


def test_cmi_comparison_from_probe_results():
    from eapo.annotate import ProbeResult, cmi_comparison

    def probe(i, h, cmi, high):
        return ProbeResult(i, h, 0, cmi, cmi - 0.1, cmi + 0.1, 0.5, np.zeros((2, 2)), cmi + 0.05, high)

    probes = [probe(0, 2.0, 0.30, True), probe(1, 1.0, 0.10, True), probe(2, 0.2, 0.02, False),
              probe(3, 0.1, -0.02, False)]
    out = cmi_comparison(probes, n_boot=300, ci=0.9, seed=0)
    assert out["high"]["n"] == out["low"]["n"] == 2
    assert out["high"]["mean_cmi"] == pytest.approx(0.2) and out["low"]["mean_cmi"] == pytest.approx(0.0)
    assert out["high"]["cmi_over_h"] == pytest.approx(0.2 / 1.5)
    assert out["low"]["mean_cmi_plugin"] == pytest.approx(0.05)
    assert out["diff_high_low"] == pytest.approx(0.2)
    assert out["diff_high_low_lo"] <= 0.2 <= out["diff_high_low_hi"]
    only_high = cmi_comparison(probes[:2], n_boot=50, ci=0.9, seed=0)
    assert only_high["low"]["n"] == 0 and only_high["low"]["mean_cmi"] is None
    assert only_high["diff_high_low"] is None


def test_dvc_repro_rollout_after_prepare(prefect_api, tmp_path):
    project = copy_project(tmp_path / "proj")
    write_tiny_params(project)
    proc = dvc(project, "repro", "rollout", api_url=prefect_api)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running stage 'prepare'" in proc.stdout and "Running stage 'rollout'" in proc.stdout
    table, _ = read_artifact(project / "data/rollout/rollouts.parquet", "rollouts")
    assert table.num_rows == 16
    again = dvc(project, "repro", "rollout", api_url=prefect_api)
    assert again.returncode == 0 and "Running stage" not in again.stdout


@pytest.mark.slow
def test_smollm2_rollout_four_prompts(prefect_api, tmp_path):
    """The real embedded model: 4 prompts x G=2, rewards scored, schema valid."""
    from flows.prepare import prepare_flow
    from flows.rollout import rollout_flow

    params_path = str(write_tiny_params(tmp_path, data_root=tmp_path, **{
        "model.name_or_path": "smollm2-135m-instruct", "model.threads": 2, "rollout.num_prompts": 4,
        "rollout.group_size": 2, "rollout.max_new_tokens": 24}))
    prepare_flow(params_path=params_path)
    metrics = rollout_flow(params_path=params_path)
    params = load_params(params_path)
    table, lin = read_artifact(params.paths.rollouts, "rollouts")
    assert table.num_rows == 8 and lin.extra["model"]["name"] == "smollm2-135m-instruct"
    assert set(table["reward"].to_pylist()) <= {0.0, 1.0}
    # A response cut at the token limit gets no answer and no credit (reward.score_truncated: false); of those that
    # ended, the grader reads a final answer from some (here 2 of 4: the rest end on prose or several numbers).
    rows = table.to_pylist()
    assert all(r["extracted"] is None and r["reward"] == 0.0 for r in rows if r["finish_reason"] == "length")
    assert any(r["extracted"] is not None for r in rows if r["finish_reason"] == "eos")
    assert 0.0 < metrics["extraction_rate"] <= metrics["eos_rate"]
    assert any(t.strip() for t in table["response"].to_pylist())
