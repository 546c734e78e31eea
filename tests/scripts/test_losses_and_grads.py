"""scripts/losses_and_grads.py: a commit equals itself to the bit, and a change is named."""

import torch

import losses_and_grads  # scripts/, on the path through pytest.ini


def test_a_commit_equals_itself_and_a_changed_gradient_is_named(tmp_path, capsys):
    path = tmp_path / "before.pt"
    assert losses_and_grads.main(["--save", str(path)]) == 0
    saved = torch.load(path)
    assert set(saved) == set(losses_and_grads.COMBINATIONS)
    assert all(r["losses"] and r["grads"] for r in saved.values())
    assert losses_and_grads.main(["--compare", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith("BIT-EXACT")

    changed = {name: {kind: dict(values) for kind, values in r.items()}
               for name, r in saved.items()}
    key = sorted(changed["box"]["grads"])[0]
    changed["box"]["grads"][key] = changed["box"]["grads"][key] + 1e-3
    del changed["semantic"]["losses"]["loss_ce"]
    assert losses_and_grads.differences(saved, changed) == [
        "box grads " + key + ": max difference 0.001",
        "semantic losses loss_ce: in one run only",
    ]
