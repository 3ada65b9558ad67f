"""The public data sets beside the repository read with no flags (skipped without them)."""

import pytest

from instructmining.readers import read_records


@pytest.mark.parametrize(
    ("name", "rows", "schema"),
    [
        ("pools/dolly_3k.json", 2996, "alpaca"),
        ("pools/alpaca_random_9k.json", 9229, "alpaca"),
        ("pools/hh_rlhf/helpful-base_test.jsonl.gz", 2354, "hh-rlhf"),
    ],
)
def test_pools_read_without_flags(shared_data, name, rows, schema):
    result = read_records(shared_data / name)
    assert len(result.records) == rows
    assert result.schema == schema
    assert not result.rejects
    assert all(r.output for r in result.records[:100])


def test_hh_rlhf_rejected_side(shared_data):
    path = shared_data / "pools/hh_rlhf/helpful-base_test.jsonl.gz"
    chosen = read_records(path).records
    rejected = read_records(path, field_map="transcript=rejected").records
    assert [r.instruction for r in chosen[:50]] == [r.instruction for r in rejected[:50]]
    assert sum(a.output != b.output for a, b in zip(chosen, rejected, strict=True)) > 2000
