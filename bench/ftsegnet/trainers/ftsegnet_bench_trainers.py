"""Equal-budget trainers for bench/ftsegnet/ (found through nnUNet_extTrainer).

bench_ftsegnet_ablation.py (the earlier 5 x 16 ablation): nnUNetTrainer_ablation, FTSegNetTrainer(_NoCPB)_ablation.
bench_ftsegnet_tumor2d.py: every arm has the same narrow U-Net (features 16-256) and the same segmentation budget
TUMOR_BUDGET; FTSegNet's prior trains TUMOR_PRIOR_ITERATIONS steps on top, before epoch 0. Classification-only cases
(all-ignore label maps) are drawn by none of the segmenters: stock here drops them as FTSegNet does, so that every
arm's segmentation batches hold the same masked cases.
"""

from nnunet_ext.methods.ftsegnet.prior import classification_only_cases
from nnunet_ext.trainers.baseline_trainers import nnUNetExtTrainer
from nnunet_ext.trainers.ftsegnet_trainers import FTSegNetTrainer, FTSegNetTrainer_ClassOnly, FTSegNetTrainer_NoCPB
from nnunet_ext.training.variants import short_variant

BUDGET = {"epochs": 5, "iterations": 16, "val_iterations": 2}

nnUNetTrainer_ablation = short_variant(nnUNetExtTrainer, "nnUNetTrainer_ablation", **BUDGET)
FTSegNetTrainer_NoCPB_ablation = short_variant(FTSegNetTrainer_NoCPB, "FTSegNetTrainer_NoCPB_ablation", **BUDGET)
FTSegNetTrainer_ablation = short_variant(FTSegNetTrainer, "FTSegNetTrainer_ablation", **BUDGET)

TUMOR_BUDGET = {"epochs": 30, "iterations": 20, "val_iterations": 2}
# bench_ftsegnet_tumor2d.py --budget long: three times the segmentation epochs, to test whether the standard budget is
# what leaves the CPB's use of the prior (and so the false-positive target) to the seed; trainer names end in _long
TUMOR_BUDGETS = {"": TUMOR_BUDGET, "_long": dict(TUMOR_BUDGET, epochs=90)}
TUMOR_PRIOR_ITERATIONS = 1000  # bench_ftsegnet_prior_sweep.py: best validation accuracy (0.85) at lr 1e-3
NARROW = 16
# transformer update rules of the optimizer sweep (NoCPB, training/validation cases only)
TRANSFORMER_RULES = {"sgd": ("sgd", 1e-2, 3e-5, 0), "adamw1e3": ("adamw", 1e-3, 1e-2, 50),
                     "adamw3e4": ("adamw", 3e-4, 1e-2, 50)}


class _StockMasked(nnUNetExtTrainer):
    unet_base_features = NARROW

    def do_split(self):
        tr, val = super().do_split()
        only = set(classification_only_cases(self.preprocessed_dataset_folder, list(tr) + list(val),
                                             self.label_manager))
        return [k for k in tr if k not in only], [k for k in val if k not in only]


for _suffix, _budget in TUMOR_BUDGETS.items():
    globals()[f"nnUNetTrainer_tumorbench{_suffix}"] = short_variant(_StockMasked, f"nnUNetTrainer_tumorbench{_suffix}",
                                                                    **_budget)


def _rule(base: type, name: str, rule: str, prior_iterations: int = TUMOR_PRIOR_ITERATIONS) -> None:
    """The narrow network with the transformer rule `rule` and `prior_iterations` prior steps, registered once per
    budget of TUMOR_BUDGETS as `name` + the budget's suffix."""
    optimizer, lr, decay, warmup = TRANSFORMER_RULES[rule]
    narrow = type(f"{name}_base", (base,), {"unet_base_features": NARROW, "prior_iterations": prior_iterations,
                                            "transformer_optimizer": optimizer, "transformer_lr": lr,
                                            "transformer_weight_decay": decay, "transformer_warmup": warmup,
                                            "__module__": __name__})
    globals()[narrow.__name__] = narrow
    for suffix, budget in TUMOR_BUDGETS.items():
        globals()[name + suffix] = short_variant(narrow, name + suffix, **budget)


_WITH_PRIOR = (FTSegNetTrainer, FTSegNetTrainer_ClassOnly)  # the arms whose prior trains before epoch 0
for _rule_name in TRANSFORMER_RULES:
    for _base in (FTSegNetTrainer_NoCPB, *_WITH_PRIOR):
        _rule(_base, f"{_base.__name__}_tumorbench_{_rule_name}", _rule_name)

# the abundant-classes setting (168 images, 160 classification-only): its prior's step count, chosen on fold 0's
# validation cases by bench_ftsegnet_prior_sweep.py --dataset 789 (bench/results/ftsegnet/prior_sweep_789.json)
ABUNDANT_PRIOR_ITERATIONS = 6000  # validation accuracy 0.963 / 0.944 / 0.988 after 1000 / 3000 / 6000
if ABUNDANT_PRIOR_ITERATIONS != TUMOR_PRIOR_ITERATIONS:
    for _rule_name in TRANSFORMER_RULES:
        for _base in _WITH_PRIOR:
            _rule(_base, f"{_base.__name__}_tumorbench_{_rule_name}_prior{ABUNDANT_PRIOR_ITERATIONS}", _rule_name,
                  ABUNDANT_PRIOR_ITERATIONS)
