"""The paper's method, as timm models.

Serialization (`segments`: random hierarchical segments and their prediction order), the attention masks it
implies (`masks`) and the kernels that apply them (`attention`), the encoders (`randsac_vit`), the decoder with
trainable skip memory (`decoder`) and its two-stream variant (`two_stream`), the pixel objective (`losses`), the
pretraining init (`initialization`), what every pretraining wrapper shares (`pretrain_wrapper`: the encoder set-up,
the first block's input, the decoder sizes), and the registered wrappers: RandSAC (`randsac_pretrain`) and the MAE
baseline (`mae_pretrain`).
"""
