//! How a request becomes token ids for one model: its tokenizer and its chat template, from a GGUF file or
//! an mlx-lm folder. Both engines and the bench (which counts tokens) use it, so a conversation is the
//! same ids whichever engine serves it.

use std::path::Path;

use crate::chat_template::{ChatTemplate, TemplateError, TemplateMessage};
use crate::gguf::GgufFile;
use crate::model_folder::{FolderError, FolderText, is_folder};
use crate::tokenizer::{Tokenizer, TokenizerError};
use modelpool::{PoolError, Prompt};

#[derive(Debug, thiserror::Error)]
pub enum PromptFormatError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

#[derive(Debug)]
pub struct PromptFormat {
    pub tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    pub model_name: String,
}

impl PromptFormat {
    /// The format of the model at `path`: a GGUF file or an mlx-lm folder.
    pub fn load(path: &Path) -> Result<Self, PromptFormatError> {
        if is_folder(path) { Self::from_folder(path) } else { Self::from_gguf(&GgufFile::open(path)?) }
    }

    pub fn from_gguf(file: &GgufFile) -> Result<Self, PromptFormatError> {
        let tokenizer = Tokenizer::from_gguf(file)?;
        let token_text = |id: Option<u32>| id.map(|id| tokenizer.decode(&[id], true));
        let template = match file.str("tokenizer.chat_template") {
            Ok(source) => Some(ChatTemplate::new(
                source,
                token_text(tokenizer.bos).as_deref(),
                token_text(tokenizer.eos.first().copied()).as_deref(),
            )?),
            Err(_) => None,
        };
        let model_name = file.str("general.name").map(String::from).unwrap_or_default();
        Ok(Self { tokenizer, template, model_name })
    }

    pub fn from_folder(folder: &Path) -> Result<Self, PromptFormatError> {
        let text = FolderText::read(folder)?;
        let mut tokenizer = Tokenizer::from_file(&text.tokenizer_json, text.bos_token.as_deref(), &text.eos_ids)?;
        // The EOS token the tokenizer configuration names stops a generation too (mlx-lm adds it).
        if let Some(id) = text.eos_token.as_deref().and_then(|t| tokenizer.token_id(t)) {
            tokenizer.add_eos(id);
        }
        let template = match &text.chat_template {
            Some(source) => Some(ChatTemplate::new(source, text.bos_token.as_deref(), text.eos_token.as_deref())?),
            None => None,
        };
        Ok(Self { tokenizer, template, model_name: text.model_name })
    }

    /// The conversation as the model's template writes it, with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[TemplateMessage<'_>]) -> Result<String, PoolError> {
        self.template()?.render(messages, true).map_err(template_error)
    }

    /// A request's prompt ids: a chat through the template (markers parsed only where it writes them), a
    /// raw prompt as the caller wrote it.
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, PoolError> {
        match prompt {
            Prompt::Raw(text) => self.tokenizer.encode_prompt(text).map_err(|e| PoolError::invalid("prompt", e.to_string())),
            Prompt::Chat(messages) => {
                let messages: Vec<TemplateMessage<'_>> = messages.iter().map(TemplateMessage::from).collect();
                self.template()?.encode(&self.tokenizer, &messages, true).map_err(template_error)
            }
        }
    }

    /// The model's chat template; an error when it has none.
    pub fn template(&self) -> Result<&ChatTemplate, PoolError> {
        self.template
            .as_ref()
            .ok_or_else(|| PoolError::FailedPrecondition("this model has no chat template; send a raw prompt instead of messages".into()))
    }
}

/// A template that refuses a conversation (raise_exception) is the caller's error; one that does not
/// compile is the model's.
fn template_error(error: TemplateError) -> PoolError {
    match error {
        TemplateError::Render(message) => PoolError::invalid("messages", message),
        other => PoolError::FailedPrecondition(other.to_string()),
    }
}
