#!/usr/bin/env python3
"""Build tests/fixtures/tiny: a random-weight EmbeddingGemma in the real on-disk layout, plus the
embeddings sentence-transformers (float32, CPU) computes for a few token-id sequences.

The model is a Gemma3 text model with use_bidirectional_attention=true: hidden 48, 3 query heads
sharing 1 KV head of dim 16, intermediate 96, 4 layers mixing sliding and full attention, and a raw
sliding_window of 8 (window radius 4, so it bites on the longer test inputs). The
sentence-transformers modules match the real model: mean pooling including the prompt, Dense
48->144 and Dense 144->48 without bias, Normalize.

Run:  python3 tools/make_tiny_fixture.py [--out tests/fixtures/tiny]
Needs torch, transformers (>= 4.57, Gemma3 bidirectional), sentence-transformers, tokenizers,
safetensors.
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors

SEED = 20260127
HIDDEN = 48
INTERMEDIATE = 96
HEADS = 3
KV_HEADS = 1
HEAD_DIM = 16
VOCAB = 300
RAW_SLIDING_WINDOW = 8  # transformers turns it into the exclusive bound 8 // 2 + 1 = 5, |i-j| <= 4
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
DENSE_WIDTH = 144
MAX_SEQ_LEN = 64
PAD, EOS, BOS, UNK = 0, 1, 2, 3

# Token-id sequences (with <bos> first and <eos> last where long enough) of lengths 1..40.
LENGTHS = [1, 2, 3, 5, 8, 9, 13, 17, 24, 33, 40]


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def build_tokenizer(out: Path) -> Tokenizer:
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(len(specials), VOCAB):
        vocab[f"w{i}"] = i
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        pair="<bos> $A <eos> <bos> $B <eos>",
        special_tokens=[("<bos>", BOS), ("<eos>", EOS)],
    )
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(out / "tokenizer.json"))
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "padding_side": "right",
            "model_max_length": MAX_SEQ_LEN,
        },
    )
    return tokenizer


def write_configs(out: Path, real_config_sentence_transformers: dict) -> None:
    write_json(
        out / "config.json",
        {
            "architectures": ["Gemma3TextModel"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "attn_logit_softcapping": None,
            "bos_token_id": BOS,
            "dtype": "float32",
            "eos_token_id": EOS,
            "final_logit_softcapping": None,
            "head_dim": HEAD_DIM,
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": HIDDEN,
            "initializer_range": 0.02,
            "intermediate_size": INTERMEDIATE,
            "layer_types": LAYER_TYPES,
            "max_position_embeddings": 2 * MAX_SEQ_LEN,
            "model_type": "gemma3_text",
            "num_attention_heads": HEADS,
            "num_hidden_layers": len(LAYER_TYPES),
            "num_key_value_heads": KV_HEADS,
            "pad_token_id": PAD,
            "query_pre_attn_scalar": HEAD_DIM,
            "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": RAW_SLIDING_WINDOW,
            "use_bidirectional_attention": True,
            "use_cache": True,
            "vocab_size": VOCAB,
        },
    )
    modules = [
        ("0", "", "sentence_transformers.models.Transformer"),
        ("1", "1_Pooling", "sentence_transformers.models.Pooling"),
        ("2", "2_Dense", "sentence_transformers.models.Dense"),
        ("3", "3_Dense", "sentence_transformers.models.Dense"),
        ("4", "4_Normalize", "sentence_transformers.models.Normalize"),
    ]
    write_json(
        out / "modules.json",
        [{"idx": i, "name": n, "path": p, "type": t} for i, (n, p, t) in enumerate(modules)],
    )
    write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    for folder, (fin, fout) in [("2_Dense", (HIDDEN, DENSE_WIDTH)), ("3_Dense", (DENSE_WIDTH, HIDDEN))]:
        write_json(
            out / folder / "config.json",
            {
                "in_features": fin,
                "out_features": fout,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            },
        )
    write_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LEN, "do_lower_case": False})
    write_json(out / "config_sentence_transformers.json", real_config_sentence_transformers)


def random_weights(generator: torch.Generator) -> dict:
    """Every tensor of the real checkpoint layout, with magnitudes that keep activations O(1)
    and norm weights far from zero so that every (1 + w) factor matters."""

    def normal(*shape, std):
        return (torch.randn(*shape, generator=generator) * std).contiguous()

    def norm_weight(width):
        return normal(width, std=0.5)

    q_width, kv_width = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    tensors = {"embed_tokens.weight": normal(VOCAB, HIDDEN, std=0.5), "norm.weight": norm_weight(HIDDEN)}
    for layer in range(len(LAYER_TYPES)):
        p = f"layers.{layer}."
        tensors.update(
            {
                p + "input_layernorm.weight": norm_weight(HIDDEN),
                p + "post_attention_layernorm.weight": norm_weight(HIDDEN),
                p + "pre_feedforward_layernorm.weight": norm_weight(HIDDEN),
                p + "post_feedforward_layernorm.weight": norm_weight(HIDDEN),
                p + "self_attn.q_proj.weight": normal(q_width, HIDDEN, std=HIDDEN**-0.5),
                p + "self_attn.k_proj.weight": normal(kv_width, HIDDEN, std=HIDDEN**-0.5),
                p + "self_attn.v_proj.weight": normal(kv_width, HIDDEN, std=HIDDEN**-0.5),
                p + "self_attn.o_proj.weight": normal(HIDDEN, q_width, std=q_width**-0.5),
                p + "self_attn.q_norm.weight": norm_weight(HEAD_DIM),
                p + "self_attn.k_norm.weight": norm_weight(HEAD_DIM),
                p + "mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN, std=HIDDEN**-0.5),
                p + "mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN, std=HIDDEN**-0.5),
                p + "mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE, std=INTERMEDIATE**-0.5),
            }
        )
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/tiny")
    parser.add_argument(
        "--prompts-from",
        type=Path,
        default=Path.home() / ".cache/embeddinggemma-300m/config_sentence_transformers.json",
        help="config_sentence_transformers.json to copy the prompts from (the real model's)",
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    if args.prompts_from.exists():
        st_config = json.loads(args.prompts_from.read_text())
    else:
        st_config = {
            "prompts": {"query": "task: search result | query: ", "document": "title: none | text: "},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        }
    tokenizer = build_tokenizer(out)
    write_configs(out, st_config)

    generator = torch.Generator().manual_seed(SEED)
    save_file(random_weights(generator), str(out / "model.safetensors"), metadata={"format": "pt"})
    save_file({"linear.weight": torch.randn(DENSE_WIDTH, HIDDEN, generator=generator) * HIDDEN**-0.5},
              str(out / "2_Dense" / "model.safetensors"))
    save_file({"linear.weight": torch.randn(HIDDEN, DENSE_WIDTH, generator=generator) * DENSE_WIDTH**-0.5},
              str(out / "3_Dense" / "model.safetensors"))

    cases = []
    for length in LENGTHS:
        body = torch.randint(4, VOCAB, (length,), generator=generator).tolist()
        if length >= 2:
            body[0], body[-1] = BOS, EOS
        cases.append({"name": f"len{length}", "token_ids": body})
    # Two cases through the tokenizer, so tokenization of the fixture can be checked as well.
    for text in ["w10 w11 w12", "w250 w7 nonsense w299 w4"]:
        ids = tokenizer.encode(text).ids
        cases.append({"name": f"text_{len(ids)}", "text": text, "token_ids": ids})

    from sentence_transformers import SentenceTransformer

    reference = {}
    dense_norms = {}
    for attn in ["eager", "sdpa"]:
        st = SentenceTransformer(str(out), device="cpu", model_kwargs={"attn_implementation": attn})
        st.eval()
        hf_config = st[0].auto_model.config
        # The bidirectional rule must have turned the raw window 8 into the exclusive bound 5.
        assert hf_config.sliding_window == RAW_SLIDING_WINDOW // 2 + 1, hf_config.sliding_window
        assert hf_config.use_bidirectional_attention
        assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
        longest = max(len(c["token_ids"]) for c in cases)
        input_ids = torch.full((len(cases), longest), PAD, dtype=torch.long)
        mask = torch.zeros((len(cases), longest), dtype=torch.long)
        for row, case in enumerate(cases):
            ids = case["token_ids"]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        with torch.no_grad():
            features = {"input_ids": input_ids, "attention_mask": mask}
            batched = st(dict(features))["sentence_embedding"]
            # The pipeline without its Normalize module: what TEI's `normalize: false` answers.
            before_normalize = torch.nn.Sequential(*list(st)[:-1])(dict(features))["sentence_embedding"]
            dense_norms[attn] = before_normalize.norm(dim=1)
            for row, case in enumerate(cases):
                ids = torch.tensor([case["token_ids"]])
                alone = st({"input_ids": ids, "attention_mask": torch.ones_like(ids)})["sentence_embedding"]
                gap = (alone[0] - batched[row]).abs().max().item()
                assert gap < 1e-5, f"{attn}: {case['name']} alone vs padded batch differ by {gap}"
        reference[attn] = batched
    gap = (reference["eager"] - reference["sdpa"]).abs().max().item()
    assert gap < 1e-5, f"eager vs sdpa differ by {gap}"
    norm_gap = ((dense_norms["eager"] - dense_norms["sdpa"]).abs() / dense_norms["eager"]).max().item()
    assert norm_gap < 1e-5, f"eager vs sdpa Dense norms differ by {norm_gap} (relative)"

    import sentence_transformers
    import transformers

    for row, case in enumerate(cases):
        case["embedding"] = reference["eager"][row].tolist()
        # The L2 norm of the Dense output: embedding * dense_norm is that output.
        case["dense_norm"] = dense_norms["eager"][row].item()
    write_json(
        out / "expected.json",
        {
            "meta": {
                "generator": "tools/make_tiny_fixture.py",
                "reference": f"sentence-transformers {sentence_transformers.__version__}, "
                f"transformers {transformers.__version__}, torch {torch.__version__}, float32, CPU, "
                f"eager attention, right padding (eager vs sdpa max diff {gap:.1e})",
                "window_radius": RAW_SLIDING_WINDOW // 2,
            },
            "cases": cases,
        },
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1024:.0f} KiB, {len(cases)} cases)")


if __name__ == "__main__":
    main()
