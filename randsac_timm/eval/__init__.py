"""Evaluation protocols: the paper's LARS linear probe (`linear_probe`, `lars`), the converged L-BFGS readout
(`converged_probe`), fine-tuning (`finetune`), their run configs (`config`) and `results.json` (`results`)."""
