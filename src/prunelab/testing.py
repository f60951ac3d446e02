"""Tiny random-weight models and a byte-level tokenizer, for fast tests without any download.

Each builder makes a model of a real Hugging Face architecture from a small config, so tests
exercise the same module structure and forward signatures as the full-size models.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# Small configs of each architecture family the engine must handle.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256, sliding_window=32),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False),
    "gemma3": dict(model_type="gemma3_text", hidden_size=64, intermediate_size=128,
                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                   head_dim=16, max_position_embeddings=256, sliding_window=16,
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256),
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64),
    # state-space models: two groups of four heads (Mamba-2), and Mamba's inner channels
    "mamba2": dict(model_type="mamba2", hidden_size=64, num_hidden_layers=2, expand=2,
                   head_dim=16, num_heads=8, n_groups=2, state_size=16, chunk_size=16),
    "mamba": dict(model_type="mamba", hidden_size=64, num_hidden_layers=2, expand=2,
                  state_size=8),
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: every UTF-8 byte is one token (vocab 260)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for char in sorted(byte_chars):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_model(family: str = "llama", seed: int = 0, vocab_size: int = 260):
    """A randomly initialised causal LM of `family` (see TINY_CONFIGS), in eval mode, fp32."""
    spec = dict(TINY_CONFIGS[family])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, bos_token_id=1,
                                  eos_token_id=2, pad_token_id=0, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def tiny_loaded(family: str = "llama", seed: int = 0):
    """A `LoadedModel` wrapping a tiny random model and the byte tokenizer."""
    from prunelab.zoo.models import LoadedModel

    return LoadedModel(model=tiny_model(family, seed), tokenizer=tiny_tokenizer(),
                       name=f"tiny-{family}", path=None, info={"tiny": True})


def dense_layer_inputs(model, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each prunable layer's inputs [tokens, in] over `windows`, by full layer name, from one
    full forward of the unpruned model (the reference the block-by-block engine is checked
    against)."""
    from prunelab.arch import named_prunable_layers

    layers = named_prunable_layers(model)
    seen: dict[str, list] = {name: [] for name in layers}
    handles = [m.register_forward_hook(lambda mod, a, o, n=name: seen[n].append(a[0]))
               for name, m in layers.items()]
    try:
        with torch.no_grad():
            model(input_ids=windows, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for n, xs in seen.items()}
