#!/usr/bin/env python3
"""Write a full-size EmbeddingGemma-300m with random weights: the real config, float32
safetensors with the real tensor names, the sentence-transformers module files and a tiny
word-level tokenizer (the real tokenizer.json is 33 MB; the GPU check feeds token ids).

The result loads in `SentenceTransformer(dir)` and in `gemma-embed --model dir`.

    python3 tools/gpu/make_random_model.py OUT_DIR [--seed N]

Scales (std of a normal draw) keep activations in a realistic range: embedding rows 0.06
(the real model's std), projections 0.02, Dense 1/sqrt(in), and every RMSNorm weight w with
std 0.3 so that the Gemma `(1 + w)` factor is exercised away from 1.
"""

import argparse
import json
import os
import secrets
import shutil
import sys
import time

import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))

EMBED_STD = 0.06
LINEAR_STD = 0.02
NORM_STD = 0.3

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"]
WORDS = ["the", "a", "of", "and", "to", "in", "is", "for", "on", "with", "query", "text"]


def backbone_tensors(cfg, rng):
    hidden = cfg["hidden_size"]
    inter = cfg["intermediate_size"]
    head_dim = cfg["head_dim"]
    q_dim = cfg["num_attention_heads"] * head_dim
    kv_dim = cfg["num_key_value_heads"] * head_dim

    def normal(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    tensors = {
        "embed_tokens.weight": normal((cfg["vocab_size"], hidden), EMBED_STD),
        "norm.weight": normal((hidden,), NORM_STD),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        for norm in ["input_layernorm", "post_attention_layernorm",
                     "pre_feedforward_layernorm", "post_feedforward_layernorm"]:
            tensors[p + norm + ".weight"] = normal((hidden,), NORM_STD)
        tensors[p + "self_attn.q_proj.weight"] = normal((q_dim, hidden), LINEAR_STD)
        tensors[p + "self_attn.k_proj.weight"] = normal((kv_dim, hidden), LINEAR_STD)
        tensors[p + "self_attn.v_proj.weight"] = normal((kv_dim, hidden), LINEAR_STD)
        tensors[p + "self_attn.o_proj.weight"] = normal((hidden, q_dim), LINEAR_STD)
        tensors[p + "self_attn.q_norm.weight"] = normal((head_dim,), NORM_STD)
        tensors[p + "self_attn.k_norm.weight"] = normal((head_dim,), NORM_STD)
        tensors[p + "mlp.gate_proj.weight"] = normal((inter, hidden), LINEAR_STD)
        tensors[p + "mlp.up_proj.weight"] = normal((inter, hidden), LINEAR_STD)
        tensors[p + "mlp.down_proj.weight"] = normal((hidden, inter), LINEAR_STD)
    return tensors


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_tokenizer(out, cfg):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL_TOKENS[:4])
    bos, eos = vocab["<bos>"], vocab["<eos>"]
    assert (bos, eos) == (cfg["bos_token_id"], cfg["eos_token_id"])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        pair="<bos> $A <eos> <bos> $B <eos>",
        special_tokens=[("<bos>", bos), ("<eos>", eos)],
    )
    tok.save(os.path.join(out, "tokenizer.json"))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    write_json(os.path.join(out, "special_tokens_map.json"), specials)
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "padding_side": "right",
        "model_max_length": cfg["max_position_embeddings"],
        **specials,
    })


def write_sentence_transformers_files(out, cfg, rng):
    hidden = cfg["hidden_size"]
    dense_width = 4 * hidden  # 3072 for EmbeddingGemma
    write_json(os.path.join(out, "modules.json"), [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
    write_json(os.path.join(out, "1_Pooling", "config.json"), {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    for name, (fan_in, fan_out) in [("2_Dense", (hidden, dense_width)), ("3_Dense", (dense_width, hidden))]:
        os.makedirs(os.path.join(out, name), exist_ok=True)
        write_json(os.path.join(out, name, "config.json"), {
            "in_features": fan_in,
            "out_features": fan_out,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        })
        weight = rng.standard_normal((fan_out, fan_in), dtype=np.float32) * np.float32(fan_in ** -0.5)
        save_file({"linear.weight": weight.astype(np.float32)}, os.path.join(out, name, "model.safetensors"))
    os.makedirs(os.path.join(out, "4_Normalize"), exist_ok=True)
    write_json(os.path.join(out, "sentence_bert_config.json"), {
        "max_seq_length": cfg["max_position_embeddings"],
        "do_lower_case": False,
    })
    write_json(os.path.join(out, "config_sentence_transformers.json"), {
        "model_type": "SentenceTransformer",
        "prompts": {"query": "task: search result | query: ", "document": "title: none | text: "},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory (created; existing model files are overwritten)")
    ap.add_argument("--seed", type=int, default=None, help="weight seed (default: fresh, printed)")
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else secrets.randbits(31)
    start = time.time()
    with open(os.path.join(HERE, "config.json")) as f:
        cfg = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    shutil.copyfile(os.path.join(HERE, "config.json"), os.path.join(args.out, "config.json"))

    rng = np.random.default_rng(seed)
    tensors = backbone_tensors(cfg, rng)
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(t.size for t in tensors.values())
    del tensors
    write_sentence_transformers_files(args.out, cfg, rng)
    write_tokenizer(args.out, cfg)
    write_json(os.path.join(args.out, "random_model.json"), {
        "seed": seed,
        "embed_std": EMBED_STD,
        "linear_std": LINEAR_STD,
        "norm_std": NORM_STD,
    })
    print(f"random EmbeddingGemma: {n_params / 1e6:.1f}M backbone parameters, seed {seed}, "
          f"{time.time() - start:.1f} s -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
