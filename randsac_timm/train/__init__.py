"""Pretraining plumbing: run configs and presets (`config`, `configs/`), data sets and seeded loaders (`data`), the
training loop (`engine`), checkpoints (`checkpoint`), torchrun process groups (`distributed`), the objective as a
`timm.task` (`task`), online evaluation during pretraining (`online_eval`) and training curves (`curves`). Nothing
here is specific to the paper; `randsac_timm.models` is."""
