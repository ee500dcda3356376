"""A GPT-style decoder with the sequence length ``L`` symbolic: attention's ``t·L²·d`` term appears.

Run from the repository root: ``python -m examples.transformer``. The decoder is
``symcx.zoo.models.GPT`` (token and learned position embeddings, pre-norm blocks with causal
``F.scaled_dot_product_attention`` and a GELU MLP); ``gpt2_small`` is the same at GPT-2's
124M sizes, built on the meta device so no weights are allocated.
"""

from __future__ import annotations

import torch

import symcx
from symcx.zoo.models import GPT, gpt2_small


def main() -> None:
    model = GPT(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128)
    a = symcx.analyze(model, model.example_input(16), dims={"L": 1})
    print("GPT (4 layers, width 128), per step in t (batch) and L (sequence length):")
    print("  forward ", a.forward_flops)
    print("  backward", a.backward_flops)
    causal = symcx.analyze(model, model.example_input(16), dims={"L": 1}, causal_attention=True)
    print("  forward counting only the causal triangle:", causal.forward_flops)
    print("  big-O of a training step:", a.big_o("step"))
    with torch.device("meta"):
        gpt2 = gpt2_small()
    b = symcx.analyze(gpt2, torch.zeros(2, 16, dtype=torch.long, device="meta"), dims={"L": 1})
    print(f"GPT-2 small ({b.params} parameters), forward:", b.forward_flops)
    print("  at L = 1024:", b.subs(L=1024).forward_flops)


if __name__ == "__main__":
    main()
