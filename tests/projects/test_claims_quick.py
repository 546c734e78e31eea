"""``run_claims.py --quick``: every arm trains and is evaluated, and the table is written."""

import json

import run_claims  # projects/small_scale_claims, on the path through pytest.ini


def test_quick_claims_run_writes_every_arm_and_claim(tmp_path):
    assert run_claims.main(["--quick", "--output-dir", str(tmp_path)]) == 0
    text = (tmp_path / "claims.md").read_text()
    for name, *_ in run_claims.ARMS:
        assert f"| {name} |" in text
    assert "| MERGE on >= MERGE off (semantic mIoU) |" in text
    data = json.loads((tmp_path / "claims.json").read_text())
    counts = data["counts"]["0"]
    rows = data["rows"]
    # Equal updates per dataset: each separate arm trains exactly its co-trained draws.
    assert sum(counts) == 6
    for i, name in enumerate(("separate: panoptic only", "separate: semantic only",
                              "separate: box only")):
        assert rows[name]["iterations"] == str(counts[i])
    assert rows["DaTaSeg co-trained (equal updates per dataset)"]["iterations"] == "6"
    assert rows["DaTaSeg co-trained (equal total iterations)"]["iterations"] == "2"
    assert all(len(r["metrics"]) == len(run_claims.COLUMNS) for r in rows.values())
