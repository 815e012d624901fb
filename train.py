#!/usr/bin/env python3
"""Train and evaluate a speech separator with one recipe from ``hparams/``.

    python train.py hparams/s4m-tiny_wsj0mix.yaml --data_folder=/data/wsj0-mix
    python train.py hparams/sepformer_minimix.yaml --precision=bf16
    torchrun --nproc_per_node=2 train.py hparams/<recipe>.yaml \
        --distributed_backend=gloo   # DDP (nccl on GPUs)

Every model and dataset goes through this one script: a recipe names its
dataset preparation, its separator and its training knobs in YAML
(``hparams/<model>_<dataset>.yaml``), and ``speechbrain_s4.brain.Separation``
trains whatever separator it gets. SpeechBrain's command-line options work
as usual (``--device``, ``--precision``, ``--max_grad_norm``,
``--grad_accumulation_factor``, ``--ckpt_interval_steps``, ``--test_only``,
...); any other ``--key=value`` overrides a key of the recipe, and keys of
the included files are overridden through their section, e.g.
``--training="{batch_size: 2, number_of_epochs: 10}"``.

Steps: parse the arguments, load the recipe, create the experiment folder,
prepare the data on the main process, build the datasets, fit, then test
with the best checkpoint (``<output_folder>/test_results.csv``); under
torchrun every rank joins the process group first and leaves it last.
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_s4.brain import Separation, distributed_group, flatten_hparams
from speechbrain_s4.dataio import dynamic_mixing_dataset, separation_dataset


def main(argv=None):
    """Run one experiment; ``argv`` defaults to ``sys.argv[1:]``."""
    hparams_file, run_opts, overrides = sb.parse_arguments(
        sys.argv[1:] if argv is None else argv
    )
    with distributed_group(run_opts):
        run(hparams_file, run_opts, overrides)


def run(hparams_file, run_opts, overrides):
    """Prepare, fit and test one recipe (inside the process group, if any)."""
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = flatten_hparams(load_hyperpyyaml(fin, overrides))

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if not hparams["skip_prep"]:
        run_on_main(hparams["prepare"])

    num_spks, sample_rate = hparams["num_spks"], hparams["sample_rate"]
    if hparams["dynamic_mixing"]:
        train_set = dynamic_mixing_dataset(
            hparams["train_csv"],
            hparams["sources_csv"],
            num_spks,
            sample_rate,
            hparams["segment_seconds"],
            epoch_size=hparams.get("epoch_size"),
        )
    else:
        train_set = separation_dataset(
            hparams["train_csv"],
            num_spks,
            sample_rate,
            hparams["segment_seconds"],
        )
    valid_set = separation_dataset(hparams["valid_csv"], num_spks, sample_rate)
    test_set = separation_dataset(hparams["test_csv"], num_spks, sample_rate)

    separation = Separation(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    separation.fit(
        separation.hparams.epoch_counter,
        train_set,
        valid_set,
        train_loader_kwargs=hparams["train_loader_options"],
        valid_loader_kwargs=hparams["valid_loader_options"],
    )
    separation.evaluate(
        test_set,
        min_key="si-snr",
        test_loader_kwargs=hparams["test_loader_options"],
    )


if __name__ == "__main__":
    main()
