//! Token ids against the sentence-transformers golden file, prompts, truncation and id checks.

mod common;

use gemma_embed::model::ModelConfig;
use gemma_embed::tokenize::{Tokenizer, Truncation};
use gemma_embed::Error;

fn tokenizer() -> Option<Tokenizer> {
    let dir = common::real_model_dir()?;
    let config = ModelConfig::load(&dir).unwrap();
    Some(Tokenizer::load(&dir, &config).unwrap())
}

#[test]
fn token_ids_equal_the_golden_file_for_every_case() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let golden = common::golden();
    assert!(!golden.cases.is_empty());
    for (i, case) in golden.cases.iter().enumerate() {
        // The prompt comes from the model's config by name; the golden file's string must agree.
        let prompt = case
            .prompt_name
            .as_deref()
            .map(|name| tokenizer.prompt(name).unwrap());
        assert_eq!(prompt.unwrap_or(""), case.prompt, "{}: prompt", case.name);
        let ids = tokenizer
            .encode(i, prompt, &case.text, Truncation::Truncate)
            .unwrap();
        assert_eq!(ids, case.token_ids, "{}", case.name);
        assert_eq!(ids.len(), case.n_tokens, "{}", case.name);
    }
}

#[test]
fn batch_encoding_equals_the_golden_file() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let golden = common::golden();
    let texts: Vec<String> = golden
        .cases
        .iter()
        .map(|c| format!("{}{}", c.prompt, c.text))
        .collect();
    let ids = tokenizer
        .encode_batch(&texts, Truncation::Truncate)
        .unwrap();
    for (case, ids) in golden.cases.iter().zip(&ids) {
        assert_eq!(ids, &case.token_ids, "{}", case.name);
    }
}

#[test]
fn truncation_keeps_eos_or_refuses_naming_the_length() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let golden = common::golden();
    let truncated = golden.cases.iter().find(|c| c.n_tokens == 2048).unwrap();
    let err = tokenizer
        .encode(
            7,
            Some(&truncated.prompt),
            &truncated.text,
            Truncation::Refuse,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Input { index: 7, .. }), "{err}");
    assert!(err.to_string().contains("max_seq_length = 2048"), "{err}");

    // "hello" then 2999 times " hello": <bos>, `hello`, 2999 x `▁hello`, <eos>.
    let hello = tokenizer
        .encode(0, None, "hello hello", Truncation::Refuse)
        .unwrap();
    assert_eq!((hello.len(), hello[0], hello[3]), (4, 2, 1));
    assert_ne!(
        hello[1], hello[2],
        "`hello` and `▁hello` are different tokens"
    );
    let long = format!("hello{}", " hello".repeat(2999));
    let err = tokenizer
        .encode(3, None, &long, Truncation::Refuse)
        .unwrap_err();
    assert!(err.to_string().contains("3002 tokens"), "{err}");
    let ids = tokenizer
        .encode(3, None, &long, Truncation::Truncate)
        .unwrap();
    assert_eq!(ids.len(), 2048);
    assert_eq!(ids[0], 2);
    assert_eq!(ids[1], hello[1]);
    assert!(ids[2..2047].iter().all(|&id| id == hello[2]));
    assert_eq!(ids[2047], 1);

    // The vocabulary's longest tokens are 93 bytes (an added token of 31 `▁`, three bytes each,
    // matched in the text as it is): a text longer than 2046 of them cannot fit, and is refused
    // without being tokenized; one of 2046 is tokenized, and fits exactly.
    let run = "\u{2581}".repeat(31);
    let widest = run.repeat(2046);
    let ids = tokenizer
        .encode(0, None, &widest, Truncation::Refuse)
        .unwrap();
    assert_eq!(ids.len(), 2048);
    let err = tokenizer
        .encode(5, None, &format!("{widest}x"), Truncation::Refuse)
        .unwrap_err();
    assert!(matches!(err, Error::Input { index: 5, .. }), "{err}");
    assert!(
        err.to_string()
            .contains("190279 bytes, at least 2049 tokens, more than max_seq_length = 2048"),
        "{err}"
    );
    // Truncated, it is tokenized as ever.
    let ids = tokenizer
        .encode(0, None, &format!("{widest}x"), Truncation::Truncate)
        .unwrap();
    assert_eq!(ids.len(), 2048);
    // Text of the longest ordinary tokens (`─` x 16, 48 bytes) past the bound's 93 bytes per
    // token is tokenized, and refused with its exact count.
    let rules = "─".repeat(16).repeat(2047);
    let err = tokenizer
        .encode(0, None, &rules, Truncation::Refuse)
        .unwrap_err();
    assert!(
        err.to_string().contains(": 2049 tokens, more than"),
        "{err}"
    );
}

#[test]
fn unknown_prompt_lists_the_known_names() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let err = tokenizer.prompt("querry").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::UnknownPrompt { .. }));
    assert!(
        message.contains("querry") && message.contains("query") && message.contains("STS"),
        "{message}"
    );
}

#[test]
fn ids_outside_the_embedding_table_are_refused() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    // `<image_soft_token>` is an added token with id 262144, one past the embedding table.
    let err = tokenizer
        .encode(5, None, "look: <image_soft_token>", Truncation::Truncate)
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Input { index: 5, .. }), "{message}");
    assert!(
        message.contains("262144") && message.contains("<image_soft_token>"),
        "{message}"
    );

    assert!(tokenizer.check_ids(0, &[2, 9259, 1]).is_ok());
    let err = tokenizer.check_ids(4, &[2, 262144, 1]).unwrap_err();
    assert!(matches!(err, Error::Input { index: 4, .. }), "{err}");
    assert!(err.to_string().contains("token 1: id 262144"), "{err}");
    assert!(tokenizer.check_ids(1, &[]).is_err());
    assert!(tokenizer.check_ids(1, &vec![2; 2049]).is_err());
}

#[test]
fn decoding_the_golden_ids_gives_back_the_texts() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let golden = common::golden();
    for (i, case) in golden.cases.iter().enumerate() {
        let full = format!("{}{}", case.prompt, case.text);
        let text = tokenizer.decode(i, &case.token_ids, true).unwrap();
        if case.n_tokens < tokenizer.max_seq_len() {
            assert_eq!(text, full, "{}", case.name);
        } else {
            // Truncated: the text up to where the kept tokens end.
            assert!(
                full.starts_with(&text) && text.len() > full.len() / 2,
                "{}: {} of {} bytes",
                case.name,
                text.len(),
                full.len()
            );
        }
        let with_special = tokenizer.decode(i, &case.token_ids, false).unwrap();
        assert_eq!(with_special, format!("<bos>{text}<eos>"), "{}", case.name);
    }
    // 262144 (`<image_soft_token>`) is the tokenizer's last id.
    assert_eq!(
        tokenizer.decode(0, &[2, 262144, 1], false).unwrap(),
        "<bos><image_soft_token><eos>"
    );
    let err = tokenizer.decode(3, &[2, 262145], true).unwrap_err();
    assert!(matches!(err, Error::Input { index: 3, .. }), "{err}");
    assert!(err.to_string().contains("token 1: id 262145"), "{err}");
}

/// Right truncation tokenizes only the first `TRUNCATED_TEXT_BYTES` of a text: the 2046 tokens
/// kept must be those of the whole text, checked against the `tokenizers` library on whole
/// texts of 1.5 MiB, natural and pathological (runs of one character, whose merges pair up from
/// one end; spaces, which become `▁` runs; scripts without spaces; a 93-byte vocabulary token
/// repeated).
#[test]
fn truncation_sees_the_first_mib_and_keeps_the_whole_texts_tokens() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let dir = common::real_model_dir().unwrap();
    let whole_text_tokenizer =
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let longest_token = {
        let vocab = whole_text_tokenizer.get_vocab(false);
        vocab.into_keys().max_by_key(|t| t.len()).unwrap()
    };
    assert_eq!(
        longest_token.len(),
        93,
        "the bound in TRUNCATED_TEXT_BYTES's comment"
    );
    let golden = common::golden();
    let natural: String = golden.cases.iter().map(|c| c.text.as_str()).collect();
    let size = 3 * gemma_embed::tokenize::TRUNCATED_TEXT_BYTES / 2;
    let repeat = |unit: &str| unit.repeat(size / unit.len() + 1);
    let texts = [
        repeat(&natural),
        repeat("a"),
        repeat("ab"),
        repeat(" "),
        repeat("= "),
        repeat("嵌入"),
        repeat(&longest_token),
        // A run that the cut ends in the middle of.
        "x ".repeat(1000) + &"z".repeat(size),
    ];
    let keep = tokenizer.max_seq_len() - tokenizer.added_tokens();
    for text in &texts {
        assert!(text.len() > gemma_embed::tokenize::TRUNCATED_TEXT_BYTES);
        let ids = tokenizer
            .encode(0, None, text, Truncation::Truncate)
            .unwrap();
        let whole = whole_text_tokenizer
            .encode_fast(text.as_str(), false)
            .unwrap();
        assert!(whole.len() > keep);
        assert_eq!(
            ids[1..ids.len() - 1],
            whole.get_ids()[..keep],
            "text starting {:?}",
            text.chars().take(20).collect::<String>()
        );
    }
}
