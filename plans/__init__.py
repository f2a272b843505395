"""Planner presets applied through nnU-Net's Python API (`nnunet_ext plan`, docs/cpu.md).

    from nnunet_ext.plans import PRESETS, plan_dataset
    plans_identifier = plan_dataset(791, "cpu", ["2d"])   # then: nnUNetv2_train 791 2d 0 -p nnUNetPlans_cpu

The nnU-Net folders come from the environment (nnUNet_raw, nnUNet_preprocessed), as for the stock commands.
"""

from nnunet_ext.plans.api import check_request, plan_dataset
from nnunet_ext.plans.presets import (
    PRESETS,
    CPUContextPlanner,
    CPUNarrowPlanner,
    CPUPlanner,
    LowMemPlanner,
    Preset,
    plain_unet_macs,
)

__all__ = ["PRESETS", "Preset", "CPUPlanner", "CPUNarrowPlanner", "CPUContextPlanner", "LowMemPlanner", "check_request",
           "plan_dataset", "plain_unet_macs"]
