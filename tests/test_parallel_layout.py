"""The parallel layout of `make test` (tests/conftest.py): the long tests start first, spread over the workers."""

from types import SimpleNamespace

from tests.conftest import pytest_collection_modifyitems


class Item(SimpleNamespace):
    def get_closest_marker(self, name):
        return SimpleNamespace(args=(self.minutes,)) if name == "minutes" and self.minutes else None


def _layout(minutes: list[float], workers: int) -> list[list[str]]:
    items = [Item(name=f"t{i}", minutes=m) for i, m in enumerate(minutes)]
    config = SimpleNamespace(workerinput={"workercount": workers})
    pytest_collection_modifyitems(config, items)
    assert sorted(i.name for i in items) == sorted(f"t{i}" for i in range(len(minutes)))  # a permutation
    blocks, left = [], list(items)
    for k in range(workers):  # how worksteal splits the collection: node k takes left // (nodes remaining)
        size = len(left) // (workers - k)
        blocks.append([i.name for i in left[:size]])
        left = left[size:]
    return blocks


def test_long_tests_lead_the_blocks_longest_first_and_balanced():
    minutes = [0, 0, 1.5, 0, 8, 0, 5, 0, 0, 2, 0, 1.2, 0, 0]
    blocks = _layout(minutes, 2)
    # greedy longest first, each to the lighter block: 8 | 5, 2, 1.5 (7 < 8) | then 1.2 to the first (8 < 8.5)
    assert blocks[0][:2] == ["t4", "t11"]
    assert blocks[1][:3] == ["t6", "t9", "t2"]
    assert [len(b) for b in blocks] == [7, 7]
    assert blocks[0][2:] == ["t0", "t1", "t3", "t5", "t7"]  # the rest keep collection order


def test_one_worker_keeps_the_collection_order():
    items = [Item(name=f"t{i}", minutes=m) for i, m in enumerate([0, 8, 0])]
    pytest_collection_modifyitems(SimpleNamespace(), items)
    assert [i.name for i in items] == ["t0", "t1", "t2"]
