//! Tokenization: the model's `tokenizer.json`, prompt prepending, truncation keeping `<eos>`,
//! id validation.
//!
//! The text the tokenizer sees is `prompt + text`, unchanged (sentence-transformers 6.x does not
//! strip). Truncation matches `tokenizers`' own `TruncationParams` (right side, room kept for
//! the special tokens), so a truncated sequence still ends with `<eos>`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use rayon::prelude::*;
use tokenizers::{ModelWrapper, PostProcessor, TruncationDirection};

use crate::model::{Model, ModelConfig};
use crate::{Error, Result};

/// What to do with an input longer than `max_seq_len` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// Keep the first tokens and the closing special tokens (sentence-transformers' behaviour).
    Truncate,
    /// Keep the last tokens (and the special tokens around them), as TEI's
    /// `truncation_direction: "Left"`; a prompt is cut first.
    TruncateLeft,
    /// Fail with an error naming the input and its length.
    Refuse,
}

/// The most of a text the tokenizer sees when it truncates on the right: 1 MiB, the start of
/// the text cut after a whole character. The model keeps 2048 tokens, and this vocabulary's
/// longest token is 93 bytes, so the tokens kept are those of the whole text while a huge text
/// (a stray multi-megabyte line of a crawl) costs no more tokenizer memory than this.
pub const TRUNCATED_TEXT_BYTES: usize = 1 << 20;

/// What of `text` the tokenizer sees: its first [`TRUNCATED_TEXT_BYTES`] under right
/// truncation; all of it under left truncation (the tokens at the end can depend on where the
/// text starts) and when truncation is off (the error names the whole text's length).
fn text_to_tokenize(text: &str, truncation: Truncation) -> &str {
    match truncation {
        Truncation::Truncate => {
            // (`str::floor_char_boundary` is newer than this crate's rust-version.)
            let mut end = TRUNCATED_TEXT_BYTES.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            &text[..end]
        }
        Truncation::TruncateLeft | Truncation::Refuse => text,
    }
}

/// The most bytes of text one token of `tokenizer` covers, where each byte of a text is covered
/// by exactly one token: a byte-fallback BPE (no unknown token standing for any length of text)
/// with no normalizer but Gemma's, which only lengthens a text (each space becomes a three-byte
/// `▁`), so that no token covers more bytes of the text than its own string has. Added tokens,
/// matched in the text as it is (Gemma's runs of up to 31 `▁`, 93 bytes), count alike. `None`
/// for other tokenizers, whose normalizers may shorten a text.
fn longest_token_bytes(tokenizer: &tokenizers::Tokenizer) -> Option<usize> {
    let byte_fallback =
        matches!(tokenizer.get_model(), ModelWrapper::BPE(bpe) if bpe.byte_fallback);
    let gemma_normalizer = serde_json::json!({
        "type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"
    });
    let normalizer_fits = tokenizer.get_normalizer().is_none_or(|normalizer| {
        serde_json::to_value(normalizer).is_ok_and(|value| value == gemma_normalizer)
    });
    (byte_fallback && normalizer_fits).then(|| {
        tokenizer
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1)
    })
}

/// The prompt of texts that name none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultPrompt {
    None,
    /// One of the model's named prompts.
    Named(String),
    /// A prompt string, prepended as it is.
    Literal(String),
}

/// One token as `/tokenize` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: u32,
    /// The piece of the input it covers (the token's own string for special tokens).
    pub text: String,
    pub special: bool,
    /// Byte offsets into `prompt + text`; none for special tokens.
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// The model's tokenizer with its prompts and limits.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    prompts: BTreeMap<String, String>,
    /// What texts without a prompt of their own get: the model's `default_prompt_name`, or
    /// what [`Tokenizer::set_default_prompt`] chose.
    default_prompt: DefaultPrompt,
    vocab_size: usize,
    max_seq_len: usize,
    /// Special tokens the post-processor adds around a single sequence (`<bos>`, `<eos>`).
    added_tokens: usize,
    /// The most bytes of a text one token stands for, where every byte is some token's
    /// ([`longest_token_bytes`]): a text of `n` bytes is at least `n / this` tokens (93 for
    /// Gemma). Found at the first text long enough to ask (it reads the whole vocabulary).
    longest_token_bytes: OnceLock<Option<usize>>,
}

impl Tokenizer {
    /// The tokenizer of a loaded model (`tokenizer.json` in its directory).
    pub fn for_model(model: &Model) -> Result<Self> {
        Self::load(&model.dir, &model.config)
    }

    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        // Truncation is done here (see `encode_one`) so that an over-long input can be refused
        // with its length; padding is never wanted for packed batches.
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        let added_tokens = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if added_tokens >= config.max_seq_len {
            return Err(Error::Tokenizer(format!(
                "the post-processor adds {added_tokens} tokens, max_seq_length is {}",
                config.max_seq_len
            )));
        }
        Ok(Self {
            inner,
            longest_token_bytes: OnceLock::new(),
            prompts: config.prompts.clone(),
            default_prompt: match &config.default_prompt_name {
                Some(name) => DefaultPrompt::Named(name.clone()),
                None => DefaultPrompt::None,
            },
            vocab_size: config.vocab_size,
            max_seq_len: config.max_seq_len,
            added_tokens,
        })
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Special tokens added around every sequence (`<bos>`, `<eos>`).
    pub fn added_tokens(&self) -> usize {
        self.added_tokens
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The prompt string of a named prompt (`query`, `document`, `STS`, ...).
    pub fn prompt(&self, name: &str) -> Result<&str> {
        self.prompts
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::UnknownPrompt {
                name: name.to_string(),
                known: if self.prompts.is_empty() {
                    "(none)".to_string()
                } else {
                    self.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }

    /// The named prompts.
    pub fn prompts(&self) -> &BTreeMap<String, String> {
        &self.prompts
    }

    /// The name of the default prompt, when it is one of the model's prompts.
    pub fn default_prompt_name(&self) -> Option<&str> {
        match &self.default_prompt {
            DefaultPrompt::Named(name) => Some(name),
            DefaultPrompt::None | DefaultPrompt::Literal(_) => None,
        }
    }

    /// The prompt of texts that name none: the model's `default_prompt_name`, or what
    /// [`Tokenizer::set_default_prompt`] chose.
    pub fn default_prompt(&self) -> Option<&str> {
        match &self.default_prompt {
            DefaultPrompt::None => None,
            DefaultPrompt::Named(name) => self.prompts.get(name).map(String::as_str),
            DefaultPrompt::Literal(text) => Some(text),
        }
    }

    /// Replace the model's default prompt (TEI's `--default-prompt-name` and `--default-prompt`):
    /// a named prompt must be one of the model's.
    pub fn set_default_prompt(&mut self, prompt: DefaultPrompt) -> Result<()> {
        if let DefaultPrompt::Named(name) = &prompt {
            self.prompt(name)?;
        }
        self.default_prompt = prompt;
        Ok(())
    }

    /// The prompt named `name`, or without a name the default prompt (if any): what
    /// sentence-transformers' `encode(prompt_name=...)` prepends.
    pub fn named_or_default_prompt(&self, name: Option<&str>) -> Result<Option<&str>> {
        match name {
            Some(name) => self.prompt(name).map(Some),
            None => Ok(self.default_prompt()),
        }
    }

    /// Token ids of `prompt + text`, `<bos>` first and `<eos>` last. `index` names the input in
    /// errors.
    pub fn encode(
        &self,
        index: usize,
        prompt: Option<&str>,
        text: &str,
        truncation: Truncation,
    ) -> Result<Vec<u32>> {
        let full;
        let text = match prompt {
            Some(prompt) => {
                full = format!("{prompt}{text}");
                full.as_str()
            }
            None => text,
        };
        self.encode_one(index, text, truncation)
    }

    /// Encode many texts (prompts already prepended) in parallel; an error names the first
    /// offending text (lowest index in `texts`), whatever the threads' timing.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        truncation: Truncation,
    ) -> Result<Vec<Vec<u32>>> {
        let encoded: Vec<Result<Vec<u32>>> = texts
            .par_iter()
            .enumerate()
            .map(|(index, text)| self.encode_one(index, text.as_ref(), truncation))
            .collect();
        encoded.into_iter().collect()
    }

    fn encode_one(&self, index: usize, text: &str, truncation: Truncation) -> Result<Vec<u32>> {
        let tokenizer_error = |e: tokenizers::Error| Error::Input {
            index,
            message: format!("tokenizer: {e}"),
        };
        // (A token covers a byte at least: a text of fewer bytes than the limit fits.)
        if truncation == Truncation::Refuse && text.len() + self.added_tokens > self.max_seq_len {
            // A text too long for any tokenizing to save is refused without it: a multi-megabyte
            // text would take seconds.
            let longest = self
                .longest_token_bytes
                .get_or_init(|| longest_token_bytes(&self.inner));
            if let Some(longest) = *longest {
                let fewest = text.len().div_ceil(longest) + self.added_tokens;
                if fewest > self.max_seq_len {
                    return Err(Error::Input {
                        index,
                        message: format!(
                            "{} bytes, at least {fewest} tokens, more than max_seq_length = {} \
                             (truncation is off)",
                            text.len(),
                            self.max_seq_len
                        ),
                    });
                }
            }
        }
        let text = text_to_tokenize(text, truncation);
        let mut encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(tokenizer_error)?;
        let len = encoding.len() + self.added_tokens;
        if len > self.max_seq_len {
            let keep = self.max_seq_len - self.added_tokens;
            match truncation {
                Truncation::Truncate => encoding.truncate(keep, 0, TruncationDirection::Right),
                Truncation::TruncateLeft => encoding.truncate(keep, 0, TruncationDirection::Left),
                Truncation::Refuse => {
                    return Err(Error::Input {
                        index,
                        message: format!(
                            "{len} tokens, more than max_seq_length = {} (truncation is off)",
                            self.max_seq_len
                        ),
                    })
                }
            }
        }
        let encoding = self
            .inner
            .post_process(encoding, None, true)
            .map_err(tokenizer_error)?;
        let ids = encoding.get_ids().to_vec();
        self.check_ids(index, &ids)?;
        Ok(ids)
    }

    /// The tokens of `prompt + text` with their text and byte offsets into `prompt + text`
    /// (special tokens have no offsets), without truncation: what a `/tokenize` route shows.
    pub fn tokens(
        &self,
        prompt: Option<&str>,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenInfo>> {
        let full = format!("{}{text}", prompt.unwrap_or(""));
        let encoding = self
            .inner
            .encode(full.as_str(), add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let tokens = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_offsets())
            .zip(encoding.get_special_tokens_mask())
            .map(|(((&id, token), &(start, stop)), &special)| {
                let special = special == 1;
                match full.get(start..stop).filter(|_| !special) {
                    Some(piece) => TokenInfo {
                        id,
                        text: piece.to_string(),
                        special,
                        start: Some(start),
                        stop: Some(stop),
                    },
                    None => TokenInfo {
                        id,
                        text: token.clone(),
                        special,
                        start: None,
                        stop: None,
                    },
                }
            })
            .collect();
        Ok(tokens)
    }

    /// The text of token ids (what a `/decode` route answers), special tokens dropped when
    /// `skip_special_tokens`. `index` names the input in errors; an id outside the tokenizer's
    /// vocabulary is refused rather than silently dropped.
    pub fn decode(&self, index: usize, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let known = self.inner.get_vocab_size(true);
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= known)
        {
            return Err(Error::Input {
                index,
                message: format!(
                    "token {position}: id {id} is outside the tokenizer's vocabulary of {known} \
                     tokens"
                ),
            });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Input {
                index,
                message: format!("tokenizer: {e}"),
            })
    }

    /// Validate token ids given directly: non-empty, at most `max_seq_len` long, every id inside
    /// the embedding table (the tokenizer knows one more id, `<image_soft_token>` = 262144, that
    /// the model has no embedding for).
    pub fn check_ids(&self, index: usize, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::Input {
                index,
                message: "no tokens".into(),
            });
        }
        if ids.len() > self.max_seq_len {
            return Err(Error::Input {
                index,
                message: format!(
                    "{} tokens, more than max_seq_length = {}",
                    ids.len(),
                    self.max_seq_len
                ),
            });
        }
        if let Some((position, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.vocab_size)
        {
            let token = self
                .inner
                .id_to_token(id)
                .map_or_else(String::new, |t| format!(" `{t}`"));
            return Err(Error::Input {
                index,
                message: format!(
                    "token {position}: id {id}{token} is outside the model's vocabulary of {} embeddings",
                    self.vocab_size
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_right_truncation_cuts_the_text_after_a_whole_character() {
        let short = "a short text";
        for truncation in [
            Truncation::Truncate,
            Truncation::TruncateLeft,
            Truncation::Refuse,
        ] {
            assert_eq!(text_to_tokenize(short, truncation), short);
        }
        // `é` is two bytes, so a character straddles the limit.
        let long = "é".repeat(TRUNCATED_TEXT_BYTES / 2) + "x" + &"é".repeat(10);
        let seen = text_to_tokenize(&long, Truncation::Truncate);
        assert_eq!(seen.len(), TRUNCATED_TEXT_BYTES);
        assert!(long.starts_with(seen));
        let straddling = "x".to_string() + &long;
        let seen = text_to_tokenize(&straddling, Truncation::Truncate);
        assert_eq!(seen.len(), TRUNCATED_TEXT_BYTES - 1);
        assert!(straddling.starts_with(seen));
        assert_eq!(text_to_tokenize(&long, Truncation::TruncateLeft), long);
        assert_eq!(text_to_tokenize(&long, Truncation::Refuse), long);
    }
}
