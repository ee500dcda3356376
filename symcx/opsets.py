"""Op families that the layers above treat alike: views that allocate nothing, the loss's seed gradient.

Every set here is keyed by family name (``"aten.view"``), as :func:`symcx._torch.op_names` gives it.
"""

from __future__ import annotations

__all__ = ["ALIAS_OPS", "GRAD_SEEDS", "UNMODELLED_MEMORY"]

#: Ops whose output aliases an input's storage: they allocate nothing and compute nothing.
ALIAS_OPS = frozenset(
    {
        "aten.view", "aten._unsafe_view", "aten.reshape", "aten.t", "aten.transpose", "aten.permute",
        "aten.expand", "aten.squeeze", "aten.unsqueeze", "aten.detach", "aten.alias", "aten.slice",
        "aten.select", "aten.as_strided", "aten.unflatten", "aten.flatten", "aten.split",
        "aten.split_with_sizes", "aten.unbind", "aten.chunk", "aten.narrow", "aten.diagonal",
        "aten.view_as", "aten.expand_as", "aten.lift_fresh", "aten.numpy_T", "aten.mT",
        "getitem",
    }
)

#: Ops that create the backward's initial gradient from the loss: not activations.
GRAD_SEEDS = frozenset({"aten.ones_like", "aten.full_like", "aten.ones", "aten.full", "aten.scalar_tensor"})

#: Ops whose kernel allocates memory no shape rule can size: the memory model flags them.
UNMODELLED_MEMORY = {
    "aten.mkldnn_rnn_layer": "oneDNN's RNN workspace (sized by oneDNN at run time; torch's meta kernel makes it "
                             "empty, aten/src/ATen/native/mkldnn/RNN.cpp)",
    "aten._cudnn_rnn": "cuDNN's RNN reserve space (sized by cuDNN at run time)",
}
