"""The paper's method, as timm models.

Serialization (`segments`: random hierarchical segments and their prediction order), the attention masks it
implies (`masks`) and the kernels that apply them (`attention`), the encoders (`randsac_vit`), the decoder with
trainable skip memory (`decoder`) and its two-stream variant (`two_stream`), the pixel objective (`losses`), the
pretraining init (`initialization`), and the registered pretraining wrappers: RandSAC (`randsac_pretrain`) and
the MAE baseline (`mae_pretrain`).
"""
