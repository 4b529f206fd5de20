//! [`ChatTemplate`]: a model's Jinja chat template, rendered the way
//! Hugging Face transformers (and so vLLM) render it, so a chat prompt's
//! token count can be exact.

use std::path::Path;

use gateway_core::ChatMessage;
use minijinja::{Environment, Error, ErrorKind, Value, context};

/// A chat template that could not be loaded or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(pub String);

impl From<Error> for TemplateError {
    fn from(e: Error) -> Self {
        TemplateError(e.to_string())
    }
}

const NAME: &str = "chat";

/// A compiled chat template with the model's special tokens.
///
/// Rendering follows transformers' `apply_chat_template`: `trim_blocks` and
/// `lstrip_blocks` on, the variables `messages` (each with `role` and
/// `content`), `add_generation_prompt`, `bos_token` and `eos_token`, and a
/// `raise_exception(message)` function.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source`.
    ///
    /// # Errors
    /// [`TemplateError`] if the template does not parse.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_owned())?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Reads and compiles a template file.
    ///
    /// # Errors
    /// [`TemplateError`] if the file cannot be read or does not parse.
    pub fn from_file(
        path: impl AsRef<Path>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, TemplateError> {
        let path = path.as_ref();
        let source = std::fs::read_to_string(path)
            .map_err(|e| TemplateError(format!("cannot read {}: {e}", path.display())))?;
        ChatTemplate::new(&source, bos_token, eos_token)
    }

    /// The prompt text the engine builds from `messages`.
    ///
    /// # Errors
    /// [`TemplateError`] if rendering fails (the template raised, say).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let template = self.env.get_template(NAME)?;
        Ok(template.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_transformers() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n<|{{ m['role'] }}|>\n{{ m['content'] + eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}<|assistant|>{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let text = t.render(&[ChatMessage::user("Hi")], true).unwrap();
        assert_eq!(text, "<|user|>\nHi</s>\n<|assistant|>");
        let bad = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        assert!(
            bad.render(&[], false)
                .unwrap_err()
                .0
                .contains("no system role")
        );
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
