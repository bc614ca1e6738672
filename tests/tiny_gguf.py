"""A tiny GGUF file (Gemma-style SentencePiece vocabulary, two tensors) written with gguf's own writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOKENS_GGUF = ["<pad>", "<eos>", "<bos>", "<unk>", "▁", "a", "b", "c", "▁a", "ab", "▁ab", "bc", "▁c"]


def tiny_gguf(path: Path) -> Path:
    """A GGUF file with a Gemma-style SentencePiece vocabulary and two tensors, written by gguf's own writer."""
    from gguf import GGUFWriter, TokenType

    writer = GGUFWriter(str(path), "gemma3")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS_GGUF + [f"<0x{i:02X}>" for i in range(256)])
    writer.add_token_scores([0.0] * 4 + [-1.0, -2.0, -2.0, -2.0, -1.5, -1.2, -1.0, -1.3, -1.4] + [-10.0] * 256)
    writer.add_token_types([TokenType.CONTROL] * 3 + [TokenType.UNKNOWN] + [TokenType.NORMAL] * 9 + [TokenType.BYTE] * 256)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(3)
    writer.add_tensor("token_embd.weight", np.arange(24, dtype=np.float32).reshape(3, 8))
    writer.add_tensor("scales", np.linspace(0, 1, 10, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
