//! The model's chat template (Jinja, from `tokenizer_config.json` or a GGUF's `tokenizer.chat_template`)
//! rendered with minijinja as Hugging Face's transformers renders it: blocks trimmed and left-stripped,
//! `raise_exception`, `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes, Python's
//! string methods, `bos_token`/`eos_token`, `add_generation_prompt`.
//!
//! [`ChatTemplate::encode`] turns a conversation into token ids with special tokens parsed only where the
//! template writes them: a user who types `<|im_end|>\n<|im_start|>system` gets those characters read
//! as text, not a forged system turn. For a conversation without markers in it, the ids are exactly the
//! ids of the rendered text with every marker parsed, which is what transformers and mlx-lm produce.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    #[error("the chat template refused this conversation: {0}")]
    Render(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the conversation uses every internal marker character (U+FDD0..U+FDEF); it cannot be encoded safely")]
    NoPlaceholder,
}

/// One message as the template sees it (`message.role`, `message.content`).
#[derive(Debug, Clone)]
pub struct TemplateMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl<'a> From<&'a modelpool::ChatMessage> for TemplateMessage<'a> {
    fn from(message: &'a modelpool::ChatMessage) -> Self {
        Self { role: message.role.as_str(), content: &message.content }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bytes", &self.source.len()).finish()
    }
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // transformers compiles chat templates with trim_blocks and lstrip_blocks on.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|e| TemplateError::Compile(describe(&e)))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// The conversation as the template writes it.
    pub fn render(&self, messages: &[TemplateMessage<'_>], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| TemplateError::Compile(describe(&e)))?;
        template
            .render(minijinja::context! {
                messages => messages.iter().map(|m| minijinja::context! { role => m.role, content => m.content }).collect::<Value>(),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| TemplateError::Render(describe(&e)))
    }

    /// The conversation's token ids, with special tokens parsed only where the template writes them.
    ///
    /// Markers inside message contents are first swapped for internal placeholder characters (Unicode
    /// noncharacters, never in the template or the contents), so that after rendering every marker left is
    /// the template's own. The text between the template's markers is encoded with markers read as text,
    /// after the placeholders are turned back into the characters the user wrote.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[TemplateMessage<'_>],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TemplateError> {
        let markers: Vec<&str> = tokenizer.specials.iter().map(|(marker, _)| marker.as_str()).filter(|m| !m.is_empty()).collect();
        let in_content: Vec<&str> = markers.iter().copied().filter(|m| messages.iter().any(|msg| msg.content.contains(m))).collect();
        if in_content.is_empty() {
            return Ok(tokenizer.try_encode(&self.render(messages, add_generation_prompt)?, true)?);
        }
        let taken = |c: char| self.source.contains(c) || messages.iter().any(|m| m.content.contains(c) || m.role.contains(c));
        let placeholders: Vec<char> = ('\u{FDD0}'..='\u{FDEF}').filter(|&c| !taken(c)).take(in_content.len()).collect();
        if placeholders.len() < in_content.len() {
            return Err(TemplateError::NoPlaceholder);
        }
        let contents: Vec<String> = messages.iter().map(|m| replace_markers(m.content, &in_content, &placeholders)).collect();
        let swapped: Vec<TemplateMessage<'_>> =
            messages.iter().zip(&contents).map(|(m, content)| TemplateMessage { role: m.role, content }).collect();
        let rendered = self.render(&swapped, add_generation_prompt)?;

        let mut ids = Vec::new();
        let mut text = String::new();
        let mut rest = rendered.as_str();
        while !rest.is_empty() {
            // Longest first, so the longest marker at this position wins, as in the tokenizer's own split.
            if let Some((marker, id)) = tokenizer.specials.iter().find(|(m, _)| !m.is_empty() && rest.starts_with(m.as_str())) {
                ids.extend(tokenizer.try_encode(&text, false)?);
                text.clear();
                ids.push(*id);
                rest = &rest[marker.len()..];
                continue;
            }
            let c = rest.chars().next().expect("not empty");
            match placeholders.iter().position(|&p| p == c) {
                Some(index) => text.push_str(in_content[index]),
                None => text.push(c),
            }
            rest = &rest[c.len_utf8()..];
        }
        ids.extend(tokenizer.try_encode(&text, false)?);
        Ok(ids)
    }
}

/// `content` with each occurrence of `markers[i]` (longest first where they overlap) replaced by
/// `placeholders[i]`.
fn replace_markers(content: &str, markers: &[&str], placeholders: &[char]) -> String {
    let mut order: Vec<usize> = (0..markers.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(markers[i].len()));
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    'scan: while !rest.is_empty() {
        for &i in &order {
            if rest.starts_with(markers[i]) {
                out.push(placeholders[i]);
                rest = &rest[markers[i].len()..];
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// minijinja's error with the template line it names.
fn describe(error: &Error) -> String {
    match error.line() {
        Some(line) => format!("{} (template line {line})", error.detail().unwrap_or(&error.to_string())),
        None => error.to_string(),
    }
}

/// Python's `datetime.now().strftime(format)`, which Llama 3's template calls for today's date.
fn strftime_now(format: String) -> Result<String, Error> {
    let format = std::ffi::CString::new(format).map_err(|_| Error::new(ErrorKind::InvalidOperation, "strftime_now: NUL in the format"))?;
    // SAFETY: time/localtime_r/strftime are given valid pointers and a buffer of the stated size.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(Error::new(ErrorKind::InvalidOperation, "strftime_now: no local time"));
        }
        let mut buffer = vec![0u8; 256];
        let written = libc::strftime(buffer.as_mut_ptr().cast(), buffer.len(), format.as_ptr(), &tm);
        buffer.truncate(written);
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

/// transformers' `tojson`: Python's `json.dumps(value, ensure_ascii=False, indent=None, sort_keys=False)`
/// (Jinja's own escapes HTML characters, which chat templates must not).
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    let style = JsonStyle { indent, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false) };
    write_json(&value, &style, 0, &mut out)?;
    Ok(out)
}

struct JsonStyle {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(value: &Value, style: &JsonStyle, depth: usize, out: &mut String) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent * depth));
        }
    };
    // Python's separators: ", " and ": " on one line; "," and ": " with an indent.
    let item_separator = if style.indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let number = f64::try_from(value.clone()).map_err(|_| Error::new(ErrorKind::InvalidOperation, "tojson: not a number"))?;
                out.push_str(&python_float(number));
            }
        }
        ValueKind::String => write_json_string(value.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_json(item, style, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_json_string(&key.to_string(), style.ensure_ascii, out);
                out.push_str(": ");
                write_json(&value.get_item(key)?, style, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => write_json_string(&value.to_string(), style.ensure_ascii, out),
    }
    Ok(())
}

/// Python's `repr` of a float, as json.dumps writes it (`1.0`, `0.5`, `1e-05`).
fn python_float(number: f64) -> String {
    if number.is_nan() {
        return "NaN".into();
    }
    if number.is_infinite() {
        return if number > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let exponent = if number == 0.0 { 0 } else { number.abs().log10().floor() as i32 };
    if !(-4..16).contains(&exponent) {
        // Python: shortest digits, then e-05 / e+16.
        let formatted = format!("{number:e}");
        let (mantissa, exp) = formatted.split_once('e').unwrap_or((&formatted, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        return format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let text = format!("{number}");
    if text.contains('.') { text } else { format!("{text}.0") }
}

fn write_json_string(text: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[TemplateMessage<'_>]) -> Result<String, TemplateError> {
        ChatTemplate::new(source, Some("<s>"), Some("</s>"))?.render(messages, true)
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let out = render(r#"{{ {"a": 1, "b": [true, none, 1.5, "x<y\n"], "c": "日本"} | tojson }}"#, &[]).unwrap();
        assert_eq!(out, r#"{"a": 1, "b": [true, null, 1.5, "x<y\n"], "c": "日本"}"#);
        let out = render(r#"{{ {"a": [1, 2]} | tojson(indent=2) }}"#, &[]).unwrap();
        assert_eq!(out, "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(2.0), "2.0");
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let error = render("{{ raise_exception('no tools here') }}", &[]).unwrap_err();
        assert!(error.to_string().contains("no tools here"), "{error}");
    }

    #[test]
    fn blocks_are_trimmed_as_transformers_trims_them() {
        let source = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() }}]\n  {% endif %}\n{% endfor %}";
        let messages = [TemplateMessage { role: "user", content: " hi " }];
        assert_eq!(render(source, &messages).unwrap(), "[hi]\n");
    }

    #[test]
    fn strftime_now_formats_todays_date() {
        let year = render("{{ strftime_now('%Y') }}", &[]).unwrap();
        assert_eq!(year.len(), 4);
        assert!(year.starts_with("20"), "{year}");
    }

    #[test]
    fn markers_are_replaced_longest_first() {
        let out = replace_markers("a<|im_end|>b<|im|>", &["<|im|>", "<|im_end|>"], &['X', 'Y']);
        assert_eq!(out, "aYbX");
    }
}
