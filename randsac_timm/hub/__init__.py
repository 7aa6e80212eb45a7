"""The model zoo: where weights come from and where they go.

`names` (the naming scheme and the packaged-weights folder), `loading` (strict loading of encoders and full
pretraining models from checkpoints, safetensors, `hf-hub:` / `local-dir:` and registered tags), `publish`
(export, push, package; `python -m randsac_timm.hub`), `model_card` (Hub-native cards), `weights/` (the weights
shipped inside the package).

Kept import-free: the model files import `names` and `loading` while they register, so this package must not
import them back.
"""
