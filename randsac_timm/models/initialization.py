"""Pretraining initialisation: the paper's (App. B.1) and MAE's, for every objective alike.

"We use xavier_uniform to initialize all Transformer blocks, following ViT's official code" (RandSAC, App. B.1),
as MAE's `initialize_weights` does:
- every `nn.Linear`: xavier-uniform weight, zero bias (qkv as one fused linear, as MAE);
- the patch embedding as the linear layer it is: xavier-uniform over its `(D, C * P * P)` view;
- every LayerNorm: weight 1, bias 0.

We deliberately differ from MAE in one detail: the patch-embedding bias starts at zero (MAE leaves PyTorch's
default uniform conv bias), so that "zero biases" holds for every layer. Position embeddings are fixed sin-cos
buffers and are not touched.

timm's own default (truncated normal, std 0.02) stays what `timm.create_model('randsac_vit_*')` gives for
fine-tuning from scratch; only the pretraining wrappers re-initialise their encoder, so RandSAC and MAE differ in
nothing but the objective. timm's `weight_init='jax'` is close but not this (lecun-normal patch embedding, 1e-6
MLP biases), hence this module.
"""
import torch.nn as nn

__all__ = ['init_linear_and_norm', 'init_pretraining_encoder']


def init_linear_and_norm(module: nn.Module) -> None:
    """`module.apply` hook: xavier-uniform linears with zero biases, LayerNorm 1 / 0 (MAE's `_init_weights`)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_pretraining_encoder(encoder: nn.Module) -> nn.Module:
    """Re-initialise a timm ViT encoder in place for pretraining (see the module docstring); returns it."""
    encoder.apply(init_linear_and_norm)
    proj = encoder.patch_embed.proj
    # a conv with stride = kernel is a linear map of each flattened patch: initialise it as one
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)
    return encoder
