"""``MODEL.DATASEG.FAST_PATHS``: one switch for every CPU fast path."""

import pytest
import torch
from detectron2.modeling import build_model

from dataseg.modeling.fast_paths import check_fast_paths, plain_computations, use_fast_paths

from helpers import PAN, make_inputs, model_cfg, register_model_metadata


def test_the_switch_picks_the_fast_paths_on_cpu_tensors_only():
    cpu, meta = torch.zeros(1), torch.zeros(1, device="meta")
    assert use_fast_paths("auto", cpu)
    assert not use_fast_paths("auto", meta)  # any other device: the plain computations
    assert not use_fast_paths("off", cpu)
    assert check_fast_paths("off") == "off"
    with pytest.raises(ValueError, match=r"FAST_PATHS must be one of \('auto', 'off'\)"):
        check_fast_paths("grid_sample")


def test_every_fast_path_follows_the_one_key(tmp_path):
    """Building with FAST_PATHS "off" leaves no part on a fast path; "auto" gives every part
    the key, and the two models compute the same losses up to the fast paths' rounding and the
    pixel-centre sampling of the loss points."""
    register_model_metadata()
    cfg = model_cfg(tmp_path)
    models = {}
    for setting in ("auto", "off"):
        cfg.MODEL.DATASEG.FAST_PATHS = setting
        torch.manual_seed(0)
        models[setting] = build_model(cfg)
    for setting, model in models.items():
        switched = {m.fast_paths for m in model.modules()
                    if isinstance(getattr(m, "fast_paths", None), str)}
        assert switched == {setting}
        assert model.criterion.mask_supervision.fast_paths == setting
    with plain_computations(models["auto"]):
        outputs = [m.eval()(make_inputs(PAN, with_targets=False)) for m in models.values()]
    torch.testing.assert_close(outputs[0][0]["sem_seg"], outputs[1][0]["sem_seg"],
                               rtol=1e-5, atol=1e-5)
