"""Runs a trainer with torch DistributedDataParallel on CPU processes (gloo), the way `nnUNetv2_train -num_gpus N`
runs it on GPUs, and writes every rank's final weights so a test can compare the ranks.

nnU-Net's launcher refuses DDP without CUDA; everything below the launcher (trainer, DDP wrapping, loss all-gathers,
rank-0 logging and checkpointing) is the stock code path, which nnUNetExtTrainer keeps on the CPU under gloo.

    python tests/ddp_runner.py TRAINER DATASET CONFIGURATION FOLD OUT_DIR [--world-size 2]
"""

import argparse
import hashlib
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _modules(trainer) -> dict:
    return trainer.modules_by_name() if hasattr(trainer, "modules_by_name") else {"network": trainer.network}


def _digest(module: torch.nn.Module) -> str:
    from nnunet_ext.training.base import unwrap

    h = hashlib.sha256()
    for key, value in unwrap(module).state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _worker(rank: int, args: argparse.Namespace) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.training.base import unwrap

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    try:
        folder = Path(nnUNet_preprocessed.require()) / maybe_convert_to_dataset_name(args.dataset)
        plans = load_json(str(folder / "nnUNetPlans.json"))
        plans["continue_training"] = False  # what nnUNetv2_train passes without --c
        trainer = recursive_find_trainer_class_by_name(args.trainer)(
            plans=plans, configuration=args.configuration, fold=args.fold,
            dataset_json=load_json(str(folder / "dataset.json")), device=torch.device("cpu"))
        # a phase switch re-wraps modules in DDP, which broadcasts rank 0's weights: ranks that drifted apart in one
        # phase would look identical at the end, so every epoch's end is recorded too
        epochs = []
        on_epoch_end = trainer.on_epoch_end

        def record_then_end_epoch():
            epochs.append({name: _digest(m) for name, m in _modules(trainer).items()})
            on_epoch_end()

        trainer.on_epoch_end = record_then_end_epoch
        trainer.run_training()
        state = {name: {k: v.detach().cpu().clone() for k, v in unwrap(m).state_dict().items()}
                 for name, m in _modules(trainer).items()}
        extra = trainer.extra_checkpoint_state() if hasattr(trainer, "extra_checkpoint_state") else {}
        torch.save({"modules": state, "epochs": epochs, "num_epochs": trainer.num_epochs, "extra": extra,
                    "output_folder": trainer.output_folder,
                    "batch_size": trainer.batch_size}, Path(args.out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("trainer", "dataset", "configuration"):
        parser.add_argument(name)
    parser.add_argument("fold", type=int)
    parser.add_argument("out")
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    mp.spawn(_worker, args=(args,), nprocs=args.world_size, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
