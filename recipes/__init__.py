"""Data preparation: one module per dataset layout, one shared CSV schema.

Each ``recipes/<dataset>/prepare.py`` exposes
``prepare(data_folder, save_folder, sample_rate=..., **layout_options)`` and
writes ``train.csv``, ``valid.csv`` and ``test.csv`` (columns ``ID, duration,
mix_wav, s1_wav, s2_wav[, noise_wav]``) with :mod:`recipes.common`.
"""
