//! Tokenization: the model's `tokenizer.json`, prompt prepending, truncation keeping `<eos>`,
//! id validation.
