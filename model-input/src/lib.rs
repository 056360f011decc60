//! What the engines read of a model, apart from the weights: a GGUF's metadata ([`gguf`]), an mlx-lm
//! folder's text files ([`model_folder`]), the tokenizer ([`tokenizer`]) and chat template
//! ([`chat_template`]) and the two together ([`prompt_format`]), and the default model's cache
//! ([`model_cache`]). The worker and the lab use it; the coordinator never reads a model.

pub mod chat_template;
pub mod gguf;
pub mod model_cache;
pub mod model_folder;
pub mod prompt_format;
pub mod tokenizer;
