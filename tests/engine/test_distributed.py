"""DaTaSeg on two real ranks: ``train_net.py --num-gpus 2`` on the CPU (gloo), then ``--resume``.

Each rank of the run saves, at every iteration, its batch, its weights and its gradients as
the optimizer is about to step (after DDP's all-reduce). The test then checks, at every
iteration:

* both ranks drew the same dataset and use the same seed (``SEED -1`` included: the seed is
  drawn once, on rank 0, and shared);
* their images are disjoint, and together they are exactly the batch a single process reads
  at that iteration (same images, same order);
* both ranks hold the same weights and the same all-reduced gradients, and those equal the
  gradients of a single process computing the two-rank step on the union batch;
* a run resumed from a checkpoint repeats iterations 2 and 3 on both ranks: same batches,
  weights and gradients, bit for bit.

What "the single-process gradient of the union batch" is (compared at float tolerance).
DDP averages the ranks' gradients: ``g = (g_0 + g_1) / 2`` with ``g_r`` the gradient of rank
``r``'s loss ``L_r``. The mask / box losses of a rank are sums over its matched pairs divided
by the ground-truth count averaged over ranks, ``G = (G_0 + G_1) / 2`` (all-reduced in the
criterion): ``(S_0 / G + S_1 / G) / 2 = (S_0 + S_1) / (G_0 + G_1)``, the union batch's sum
over its total ground-truth count, which is the normalisation of one process training on the
union batch. A criterion that normalised by its own count ``G_r`` would give
``(S_0 / G_0 + S_1 / G_1) / 2``: different whenever ``G_0 != G_1`` (asserted to happen here).
Two parts of a DaTaSeg (and Mask2Former) step are per forward pass by design, so the
reference does not run the union batch as ONE forward pass: the random points of the mask
losses (each rank draws its own, from (seed, iteration, rank)) and the class loss, a weighted
mean over the units of the forward pass (background units weigh NO_OBJECT_WEIGHT), which the
ranks' average does not turn into the union's mean unless both ranks have as many matched
units. So the single process forwards each rank's half of the union batch with that rank's
step seed and sums ``(CE_r + S_r / G) / 2`` (``S_r / G`` = its mask / box losses rescaled
from its own count to the all-reduced one); every network op is per image (frozen BN here:
the tiny config's BatchNorm would use each rank's own batch statistics).
"""

import os
import shutil
import subprocess
import sys

import torch

from helpers import REPO, TINY_CONFIG

MAX_ITER, PERIOD, SEED = 4, 2, 3
# The criterion's loss terms divided by the (all-reduced) ground-truth count; every other
# key must be a class loss (loss_ce*). A new term must be classified here.
GT_NORMALISED = ("loss_focal", "loss_dice", "loss_projection")

# Runs train_net.py's own main() with a trainer that records what the test compares. Under
# the "spawn" start method every rank imports this file as __mp_main__, so the patch below
# reaches the ranks (the __main__ block runs only in the launcher).
DRIVER = r'''
import os
import sys

import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

sys.path.insert(0, os.environ["DATASEG_REPO"])
import train_net  # noqa: E402
from dataseg.data.synthetic import register_synthetic_datasets  # noqa: E402
from dataseg.engine import DaTaSegTrainer  # noqa: E402

register_synthetic_datasets(os.environ["SYNTH_ROOT"], prefix="pytest_synth", replace=True)
RECORDS = os.environ["RECORDS"]


class RecordingTrainer(DaTaSegTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self._seed_before_resume = int(self.cfg.SEED)
        self._inner().register_forward_pre_hook(self._keep_batch)
        self.optimizer.register_step_pre_hook(self._record)

    def _inner(self):
        return getattr(self.model, "module", self.model)

    def _keep_batch(self, module, args):
        if module.training:
            self._batch = list(args[0])

    def _record(self, optimizer, args, kwargs):
        model = self._inner()
        torch.save({
            "world_size": comm.get_world_size(),
            "seed_before_resume": self._seed_before_resume,
            "seed": int(self.cfg.SEED),
            "batch": self._batch,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()
                      if p.grad is not None},
        }, os.path.join(RECORDS, f"rank{comm.get_rank()}_iter{get_event_storage().iter}.pth"))


train_net.Trainer = RecordingTrainer

if __name__ == "__main__":
    train_net.invoke_main()
'''


def _opts(output_dir, train, seed):
    opts = {
        "DATASETS.TRAIN": "(" + ", ".join(f"'{n}'" for n in train) + ",)",
        "DATASETS.TEST": "()",
        "DATALOADER.DATASEG.SAMPLING_RATIOS": "[1.0, 1.0, 1.0]",
        "DATALOADER.DATASEG.BATCH_SIZES": "[4, 4, 4]",  # 2 images per rank
        "MODEL.RESNETS.NORM": "FrozenBN",  # per-image network (see the module docstring)
        "INPUT.DATASEG.IMAGE_SIZES": "[64]", "MODEL.DATASEG.CRITERION.TRAIN_NUM_POINTS": 256,
        "MODEL.DATASEG.TEXT.ENCODER": "Random",
        "MODEL.DATASEG.TEXT.CACHE_DIR": os.path.join(output_dir, "text_cache"),
        "DATALOADER.NUM_WORKERS": 0, "SEED": seed, "MODEL.DEVICE": "cpu",
        "SOLVER.MAX_ITER": MAX_ITER, "SOLVER.CHECKPOINT_PERIOD": PERIOD,
        "TEST.DATASEG.NUM_VISUALIZATIONS": 0, "OUTPUT_DIR": output_dir,
    }
    return [str(x) for kv in opts.items() for x in kv]


def _train(tmp_path, synthetic_root, output_dir, records, opts, resume=False):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    os.makedirs(records, exist_ok=True)
    cmd = [sys.executable, str(driver), "--num-gpus", "2", "--dist-url", "auto",
           "--config-file", TINY_CONFIG] + (["--resume"] if resume else []) + opts
    env = dict(os.environ, DATASEG_REPO=str(REPO), SYNTH_ROOT=synthetic_root, RECORDS=records,
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {(rank, it): torch.load(os.path.join(records, f"rank{rank}_iter{it}.pth"),
                                   weights_only=False)
            for rank in (0, 1) for it in range(MAX_ITER)
            if os.path.exists(os.path.join(records, f"rank{rank}_iter{it}.pth"))}


def _files(batch):
    return [d["file_name"] for d in batch]


def _reference_grads(model, record0, record1, iteration):
    """The single-process gradient of the two-rank step on the union batch (module docstring).

    Returns ``(reference, local_normaliser, counts)``: the second is what a criterion
    normalising by each rank's own ground-truth count would give, to show the comparison tells
    them apart; ``counts`` the two ranks' ground-truth counts.
    """
    from detectron2.utils.events import EventStorage

    from dataseg.engine.training_guards import seed_step

    model.load_state_dict(record0["weights"])
    params = [p for p in model.parameters() if p.requires_grad]
    halves = []
    for rank, record in enumerate((record0, record1)):
        # The step seed rank `rank` used (the trainer's run_step seeds right before forward).
        seed_step(SEED, iteration, rank)
        with EventStorage(iteration):
            losses = model(record["batch"])
        unknown = [k for k in losses if not k.startswith("loss_ce")
                   and not k.startswith(GT_NORMALISED)]
        assert not unknown, f"classify these loss terms in GT_NORMALISED or not: {unknown}"
        ce = sum(v for k, v in losses.items() if k.startswith("loss_ce"))
        gt = sum(v for k, v in losses.items() if not k.startswith("loss_ce"))
        g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
        g_gt = torch.autograd.grad(gt, params, allow_unused=True)
        count = sum(len(d["instances"]) for d in record["batch"])
        halves.append((g_ce, g_gt, count))
    mean_count = max(1.0, (halves[0][2] + halves[1][2]) / 2)

    def combine(rescale):
        out = {}
        for i, (name, _) in enumerate((n, p) for n, p in model.named_parameters()
                                      if p.requires_grad):
            total = 0.0
            for g_ce, g_gt, count in halves:
                scale = max(1.0, count) / mean_count if rescale else 1.0
                for g, s in ((g_ce[i], 1.0), (g_gt[i], scale)):
                    if g is not None:
                        total = total + s * g
            out[name] = total / 2
        return out

    return combine(True), combine(False), (halves[0][2], halves[1][2])


def _relative_error(grads, reference):
    num = sum(float((grads[n] - reference[n]).pow(2).sum()) for n in reference)
    den = sum(float(reference[n].pow(2).sum()) for n in reference)
    return (num / den) ** 0.5


def test_two_ranks_share_datasets_split_images_match_one_process_and_resume(
        tmp_path, synthetic_root, synthetic_datasets):
    from detectron2.data import DatasetCatalog

    from dataseg.data import build_train_schedule
    from dataseg.engine import DaTaSegTrainer, get_dataseg_cfg

    train = [synthetic_datasets[k] for k in ("panoptic_train", "semantic_train", "box_train")]
    full_dir = str(tmp_path / "full")
    full = _train(tmp_path, synthetic_root, full_dir, str(tmp_path / "records_full"),
                  _opts(full_dir, train, SEED))
    assert sorted(full) == [(r, t) for r in (0, 1) for t in range(MAX_ITER)]

    # ---- data: same dataset, disjoint halves of the one-process batch -----------------------
    cfg = get_dataseg_cfg(TINY_CONFIG, _opts(full_dir, train, SEED))
    dicts = [DatasetCatalog.get(n) for n in train]
    single = build_train_schedule(cfg, [len(d) for d in dicts], world_size=1, seed=SEED)
    drawn = set()
    for t in range(MAX_ITER):
        r0, r1 = full[0, t], full[1, t]
        assert r0["world_size"] == r1["world_size"] == 2
        assert r0["seed"] == r1["seed"] == SEED
        names = {d["dataset_name"] for d in r0["batch"] + r1["batch"]}
        assert names == {train[single.dataset_at(t)]}, f"iteration {t}: {names}"
        drawn |= names
        assert len(r0["batch"]) == len(r1["batch"]) == 2
        assert not set(_files(r0["batch"])) & set(_files(r1["batch"]))
        union = [dicts[single.dataset_at(t)][i]["file_name"] for i in single.batch_indices(t)]
        assert _files(r0["batch"]) + _files(r1["batch"]) == union
    assert len(drawn) >= 2, "the seed draws one dataset only: pick a SEED that mixes them"

    # ---- gradients: both ranks agree, and equal the one-process union-batch gradient --------
    model = DaTaSegTrainer.build_model(cfg)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: same float summation order
    counts_differ = False
    try:
        for t in range(MAX_ITER):
            r0, r1 = full[0, t], full[1, t]
            for k in r0["weights"]:
                assert torch.equal(r0["weights"][k], r1["weights"][k]), (t, k)
            assert r0["grads"].keys() == r1["grads"].keys()
            for k in r0["grads"]:
                assert torch.equal(r0["grads"][k], r1["grads"][k]), (t, k)
            reference, local, counts = _reference_grads(model, r0, r1, t)
            assert r0["grads"].keys() == {n for n, g in reference.items()
                                          if isinstance(g, torch.Tensor)}
            error = _relative_error(r0["grads"], reference)
            assert error < 1e-4, f"iteration {t}: relative gradient error {error:.2e}"
            for k, g in r0["grads"].items():
                assert torch.allclose(g, reference[k], rtol=1e-3,
                                      atol=1e-5 * float(reference[k].abs().max()) + 1e-12), (t, k)
            if counts[0] != counts[1]:
                counts_differ = True
                # A rank-local normaliser is far outside the tolerance.
                assert _relative_error(r0["grads"], local) > 100 * max(error, 1e-6)
    finally:
        torch.set_num_threads(threads)
    assert counts_differ, "both ranks had as many segments at every iteration: pick a SEED"

    # ---- --resume with SEED -1: continues the same stream on both ranks ---------------------
    resumed_dir = str(tmp_path / "resumed")
    shutil.copytree(full_dir, resumed_dir)
    os.remove(os.path.join(resumed_dir, "model_final.pth"))
    with open(os.path.join(resumed_dir, "last_checkpoint"), "w") as f:
        f.write(f"model_{PERIOD - 1:07d}.pth")
    resumed = _train(tmp_path, synthetic_root, resumed_dir, str(tmp_path / "records_resumed"),
                     _opts(resumed_dir, train, -1), resume=True)
    assert sorted(resumed) == [(r, t) for r in (0, 1) for t in range(PERIOD, MAX_ITER)]
    # SEED -1 draws one seed for both ranks, then takes the checkpoint's.
    drawn_seeds = {resumed[r, PERIOD]["seed_before_resume"] for r in (0, 1)}
    assert len(drawn_seeds) == 1 and drawn_seeds != {SEED}
    for (rank, t), record in resumed.items():
        ref = full[rank, t]
        assert record["seed"] == SEED
        assert _files(record["batch"]) == _files(ref["batch"])
        for a, b in zip(record["batch"], ref["batch"]):
            assert torch.equal(a["image"], b["image"])  # augmentation too
        for part in ("weights", "grads"):
            different = [k for k in ref[part] if not torch.equal(record[part][k], ref[part][k])]
            assert not different, (rank, t, part, different[:5])
