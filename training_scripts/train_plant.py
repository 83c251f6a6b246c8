"""The PLANT recipe as a training script, for `python`, `torchrun` and `accelerate launch` alike.

    python training_scripts/train_plant.py --data ../shared/data/us_bills_110_crs_summary --output_dir runs/bills
    accelerate launch --config_file training_scripts/accelerate/multi_gpu_ddp.yaml \\
        training_scripts/train_plant.py config.yaml

Options are those of `plant-hf fit` (see `--help`), or one YAML/JSON file holding them.
"""

import sys

from plant_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit", *sys.argv[1:]]))
