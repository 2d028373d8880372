"""tasks/tail.py: the tail every stage shares (lineage, all-or-nothing write, assets, publish), in isolation."""

import json

import pytest

import tasks.tail
from eapo.lineage import read_lineage
from eapo.stageio import StageLocked, StageOutputs
from tasks.tail import Assets, File, Json, StageTail


class Recorder:
    """Stands in for record_assets and for a publication; notes what the final outputs held when it was called."""

    def __init__(self, paths):
        self.paths, self.seen = paths, []

    def __call__(self, outputs, inputs, key):
        self.seen.append(("assets", key, [str(o) for o in outputs], [str(i) for i in inputs], self._contents()))

    def publish(self):
        self.seen.append(("publish", self._contents()))

    def _contents(self):
        return [p.read_text() if p.exists() else None for p in self.paths]


def _run(tmp_path, monkeypatch, value, fail=False):
    summary, notes = tmp_path / "out" / "summary.json", tmp_path / "out" / "notes.txt"
    rec = Recorder([summary, notes])
    monkeypatch.setattr(tasks.tail, "record_assets", rec)
    with StageTail("tailtest", [summary, notes], lineage_stage="tailtest-lineage", key="tail-key") as tail:
        tail.finish({summary: Json({"value": value}),
                     notes: File(lambda p: p.write_text(f"notes {value}\n"), lineage=True)},
                    params={"x": value}, seed=3, extra={"e": 1}, assets=Assets([summary], ["in.parquet"]),
                    publish=[rec], run_info={"seconds": 1.5})
        if fail:
            raise RuntimeError("failed after finish")
    return summary, notes, rec


def test_tail_writes_with_one_lineage_then_records_assets_then_publishes(tmp_path, monkeypatch):
    summary, notes, rec = _run(tmp_path, monkeypatch, 1)
    assert json.loads(summary.read_text()) == {"value": 1} and notes.read_text() == "notes 1\n"
    lin, side = read_lineage(summary), read_lineage(notes)
    assert lin.stage == side.stage == "tailtest-lineage" and lin.params == {"x": 1} and lin.seed == 3
    assert lin.extra == {"e": 1} and side.data_sha256 != lin.data_sha256  # each output's own content hash
    # Assets (keyed by `key`), then the publications, each once the outputs were in place.
    assert rec.seen == [("assets", "tail-key", [str(summary)], ["in.parquet"], ['{\n  "value": 1\n}\n', "notes 1\n"]),
                        ("publish", ['{\n  "value": 1\n}\n', "notes 1\n"])]
    record = json.loads((summary.parent / ".eapo-run-tailtest.json").read_text())
    assert record["seconds"] == 1.5


def test_a_failure_in_the_stage_replaces_nothing_and_publishes_nothing(tmp_path, monkeypatch):
    summary, notes, _ = _run(tmp_path, monkeypatch, 1)
    with pytest.raises(RuntimeError, match="failed after finish"):
        _, _, rec = _run(tmp_path, monkeypatch, 2, fail=True)
    assert json.loads(summary.read_text()) == {"value": 1} and notes.read_text() == "notes 1\n"
    assert tasks.tail.record_assets.seen == []  # the second run's recorder: never called
    assert not list(summary.parent.glob(".eapo-staging-*"))


def test_the_lock_is_taken_before_the_stage_computes(tmp_path):
    out = tmp_path / "out" / "summary.json"
    holder = StageOutputs("tailtest", [out])
    holder._acquire()
    computed = []
    try:
        with pytest.raises(StageLocked, match="already running"), StageTail("tailtest", [out]):
            computed.append(1)
    finally:
        holder._release()
    assert computed == []


def test_a_stage_that_never_calls_finish_fails_naming_it(tmp_path, monkeypatch):
    out = tmp_path / "out" / "summary.json"
    with pytest.raises(FileNotFoundError, match="did not write its output"), StageTail("tailtest", [out]):
        pass
