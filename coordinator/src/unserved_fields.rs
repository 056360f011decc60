//! OpenAI's fields that the pool does not serve (log probabilities, tool calls, echo, best-of,
//! suffix). A request that asks for one is refused naming it, rather than answered as if it had not
//! asked: an agent that sends tools and gets plain text back would go wrong without a word.

use modelpool::PoolError;
use serde::Deserialize;
use serde_json::Value;

/// OpenAI fields the pool does not serve. Sent with their "off" values (`null`, `false`, `0`, `[]`,
/// `""`, `best_of: 1`, tools with `tool_choice: "none"`) they are accepted, as clients send them so.
#[derive(Debug, Default, Deserialize)]
pub struct Unsupported {
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    echo: Option<Value>,
    #[serde(default)]
    best_of: Option<Value>,
    #[serde(default)]
    suffix: Option<Value>,
}

/// Whether a field's value asks for something: anything but an "off" value.
fn asks(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(fields)) => !fields.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

impl Unsupported {
    /// The first field that asks for what the pool does not serve, and why it is refused.
    pub fn refusal(&self) -> Option<PoolError> {
        let not_served =
            |field: &str, what: &str| Some(PoolError::invalid(field, format!("not supported: the pool does not return {what}")));
        let tools_off = self.tool_choice.as_ref().and_then(Value::as_str) == Some("none");
        if asks(&self.logprobs) || asks(&self.top_logprobs) {
            let field = if asks(&self.logprobs) { "logprobs" } else { "top_logprobs" };
            return not_served(field, "log probabilities");
        }
        if !tools_off && (asks(&self.tools) || asks(&self.functions)) {
            return not_served(if asks(&self.tools) { "tools" } else { "functions" }, "tool calls");
        }
        if asks(&self.echo) {
            return not_served("echo", "the prompt with the completion");
        }
        if self.best_of.as_ref().is_some_and(|v| !v.is_null() && v.as_u64() != Some(1)) {
            return not_served("best_of", "the best of several completions; only 1");
        }
        if asks(&self.suffix) {
            return not_served("suffix", "insertions (text after the completion)");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(fields: Value) -> Option<String> {
        let unsupported: Unsupported = serde_json::from_value(fields).unwrap();
        unsupported.refusal().map(|error| match error {
            PoolError::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn asking_for_what_the_pool_does_not_serve_is_refused_naming_the_field() {
        assert_eq!(refused(json!({"logprobs": true})).as_deref(), Some("logprobs"));
        assert_eq!(refused(json!({"logprobs": 2})).as_deref(), Some("logprobs"));
        assert_eq!(refused(json!({"top_logprobs": 3})).as_deref(), Some("top_logprobs"));
        let tool = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(refused(json!({"tools": tool})).as_deref(), Some("tools"));
        assert_eq!(refused(json!({"tools": tool, "tool_choice": "auto"})).as_deref(), Some("tools"));
        assert_eq!(refused(json!({"functions": [{"name": "f"}]})).as_deref(), Some("functions"));
        assert_eq!(refused(json!({"echo": true})).as_deref(), Some("echo"));
        assert_eq!(refused(json!({"best_of": 3})).as_deref(), Some("best_of"));
        assert_eq!(refused(json!({"suffix": "end"})).as_deref(), Some("suffix"));
    }

    #[test]
    fn the_off_values_clients_send_are_accepted() {
        let off = json!({"logprobs": false, "top_logprobs": 0, "tools": [], "functions": null, "echo": false,
                         "best_of": 1, "suffix": "", "user": "u1", "metadata": {"a": "b"}});
        assert_eq!(refused(off), None);
        let tool = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(refused(json!({"tools": tool, "tool_choice": "none"})), None, "tools the model may not call");
    }
}
