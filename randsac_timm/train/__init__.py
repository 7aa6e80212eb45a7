"""Pretraining plumbing: run configs and presets (`config`, `configs/`), data sets and seeded loaders (`data`), the
training loop (`engine`), checkpoints (`checkpoint`), torchrun process groups (`distributed`) and the objective as
a `timm.task` (`task`). Nothing here is specific to the paper; `randsac_timm.models` is."""
