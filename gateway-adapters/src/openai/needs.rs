//! What an OpenAI request asks for beyond plain text: its
//! [`Capabilities`] needs, which decide the backends it may go to.
//!
//! | capability | asked for by |
//! |---|---|
//! | `tools` | a non-empty `tools` array, unless `tool_choice` is `"none"` |
//! | `reasoning` | `reasoning_effort` (but `"none"`), `chat_template_kwargs.enable_thinking` or `.thinking` true, vLLM's `thinking_token_budget`, `nvext.max_thinking_tokens` |
//! | `structured_output` | `response_format` of a type other than `text`, `structured_outputs`, `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` (also inside `nvext`), SGLang's `regex` / `ebnf` |
//! | `image_input` | an `image_url` content part |
//! | `logprobs` | `logprobs` true (chat) or a number (completions), `top_logprobs` above 0, SGLang's `return_logprob` true |
//!
//! A field set to `null` (or `false`) asks for nothing.

use gateway_core::{Capabilities, Capability, ContentPart, MediaKind, Prompt};
use serde_json::Value;

use super::json;
use super::request::ParsedRequest;

/// The guided-decoding fields of vLLM (and of NIM 1.x and Dynamo inside
/// `nvext`).
const GUIDED: &[&str] = &[
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
];

/// What `parsed` needs of a backend beyond plain text. Computed from its
/// tools, prompt and extra fields as they will be sent (after the
/// pass-through policy dropped any).
///
/// ```
/// use gateway_adapters::openai::{needs, parse_chat};
/// use gateway_core::{Capabilities, Capability};
///
/// let body = br#"{"model":"m","messages":[{"role":"user","content":"Hi"}],
///     "tools":[{"type":"function","function":{"name":"f"}}],"logprobs":true}"#;
/// let parsed = parse_chat(body).unwrap();
/// assert_eq!(
///     needs(&parsed),
///     Capabilities::from_iter([Capability::Tools, Capability::Logprobs])
/// );
/// ```
pub fn needs(parsed: &ParsedRequest) -> Capabilities {
    let mut needs = Capabilities::NONE;
    if images(&parsed.prompt) {
        needs.insert(Capability::ImageInput);
    }
    let extra = parsed.extra.as_deref().and_then(json::object_entries);
    let field = |key: &str| -> Option<Value> {
        let entry = extra
            .as_ref()?
            .iter()
            .find(|e| e.key_text().is_some_and(|k| k == key))?;
        serde_json::from_str(entry.value).ok()
    };
    let tools = parsed
        .tools
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
    let tool_choice_none = field("tool_choice").is_some_and(|c| c == "none");
    if tools && !tool_choice_none {
        needs.insert(Capability::Tools);
    }
    let nvext = field("nvext");
    let nv = |key: &str| nvext.as_ref().and_then(|n| n.get(key)).is_some_and(set);
    let reasoning = field("reasoning_effort").is_some_and(|e| set(&e) && e != "none")
        || field("chat_template_kwargs").is_some_and(|k| {
            ["enable_thinking", "thinking"]
                .iter()
                .any(|s| k.get(s) == Some(&Value::Bool(true)))
        })
        || field("thinking_token_budget").is_some_and(|b| set(&b))
        || nv("max_thinking_tokens");
    if reasoning {
        needs.insert(Capability::Reasoning);
    }
    let structured = field("response_format").is_some_and(|f| match f.get("type") {
        Some(Value::String(t)) => t != "text",
        _ => false,
    }) || ["structured_outputs", "regex", "ebnf"]
        .iter()
        .chain(GUIDED)
        .any(|k| field(k).is_some_and(|v| set(&v)))
        || GUIDED.iter().any(|k| nv(k));
    if structured {
        needs.insert(Capability::StructuredOutput);
    }
    let logprobs = field("logprobs").is_some_and(|l| l == true || l.is_number())
        || field("top_logprobs").is_some_and(|n| n.as_u64().is_some_and(|n| n > 0))
        || field("return_logprob").is_some_and(|r| r == true);
    if logprobs {
        needs.insert(Capability::Logprobs);
    }
    needs
}

/// Whether `value` asks for something: not `null` nor `false`.
fn set(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

/// Whether a chat prompt holds an image part.
fn images(prompt: &Prompt) -> bool {
    let Prompt::Chat(messages) = prompt else {
        return false;
    };
    messages.iter().any(|m| {
        m.parts
            .iter()
            .any(|p| matches!(p, ContentPart::Media(media) if media.kind == MediaKind::Image))
    })
}

#[cfg(test)]
mod tests {
    use gateway_core::Capability as C;

    use super::*;
    use crate::openai::{parse_chat, parse_completion};

    fn chat(fields: &str) -> Capabilities {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"Hi"}}]{fields}}}"#);
        match parse_chat(body.as_bytes()) {
            Ok(parsed) => needs(&parsed),
            Err(e) => panic!("{fields}: {e}"),
        }
    }

    fn set_of(caps: &[C]) -> Capabilities {
        caps.iter().copied().collect()
    }

    const TOOL: &str =
        r#","tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]"#;

    #[test]
    fn plain_requests_need_nothing() {
        assert_eq!(chat(""), Capabilities::NONE);
        assert_eq!(
            chat(r#","temperature":0.5,"top_k":4,"seed":3"#),
            Capabilities::NONE
        );
        assert_eq!(
            chat(r#","logprobs":false,"top_logprobs":0,"response_format":{"type":"text"}"#),
            Capabilities::NONE
        );
        assert_eq!(
            chat(r#","reasoning_effort":null,"chat_template_kwargs":{"enable_thinking":false}"#),
            Capabilities::NONE
        );
        assert_eq!(chat(r#","tools":[]"#), Capabilities::NONE);
        assert_eq!(
            chat(r#","guided_json":null,"structured_outputs":null"#),
            Capabilities::NONE
        );
    }

    #[test]
    fn tools_unless_tool_choice_none() {
        assert_eq!(chat(TOOL), set_of(&[C::Tools]));
        assert_eq!(
            chat(&format!(r#"{TOOL},"tool_choice":"auto""#)),
            set_of(&[C::Tools])
        );
        assert_eq!(
            chat(&format!(
                r#"{TOOL},"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}"#
            )),
            set_of(&[C::Tools])
        );
        assert_eq!(
            chat(&format!(r#"{TOOL},"tool_choice":"none""#)),
            Capabilities::NONE
        );
    }

    #[test]
    fn reasoning_switches() {
        for fields in [
            r#","reasoning_effort":"high""#,
            r#","chat_template_kwargs":{"enable_thinking":true}"#,
            r#","chat_template_kwargs":{"thinking":true}"#,
            r#","thinking_token_budget":512"#,
            r#","nvext":{"max_thinking_tokens":128}"#,
        ] {
            assert_eq!(chat(fields), set_of(&[C::Reasoning]), "{fields}");
        }
        assert_eq!(chat(r#","reasoning_effort":"none""#), Capabilities::NONE);
    }

    #[test]
    fn structured_output_fields() {
        for fields in [
            r#","response_format":{"type":"json_object"}"#,
            r#","response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}"#,
            r#","structured_outputs":{"choice":["a","b"]}"#,
            r#","guided_json":{"type":"object"}"#,
            r#","guided_regex":"[a-z]+""#,
            r#","guided_choice":["yes","no"]"#,
            r#","guided_grammar":"root ::= \"a\"""#,
            r#","regex":"\\d+""#,
            r#","ebnf":"root ::= \"a\"""#,
            r#","nvext":{"guided_json":{"type":"object"}}"#,
        ] {
            assert_eq!(chat(fields), set_of(&[C::StructuredOutput]), "{fields}");
        }
    }

    #[test]
    fn logprobs_fields() {
        assert_eq!(chat(r#","logprobs":true"#), set_of(&[C::Logprobs]));
        assert_eq!(
            chat(r#","logprobs":true,"top_logprobs":3"#),
            set_of(&[C::Logprobs])
        );
        assert_eq!(chat(r#","return_logprob":true"#), set_of(&[C::Logprobs]));
        let completion = |fields: &str| {
            let body = format!(r#"{{"model":"m","prompt":"Hi"{fields}}}"#);
            parse_completion(body.as_bytes()).map(|p| needs(&p)).ok()
        };
        assert_eq!(completion(r#","logprobs":0"#), Some(set_of(&[C::Logprobs])));
        assert_eq!(completion(r#","logprobs":5"#), Some(set_of(&[C::Logprobs])));
        assert_eq!(completion(r#","logprobs":null"#), Some(Capabilities::NONE));
    }

    #[test]
    fn images_and_everything_at_once() {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[
                {{"type":"text","text":"What is it?"}},
                {{"type":"image_url","image_url":{{"url":"data:image/png;base64,AAAA"}}}}]}}]
                {TOOL},"response_format":{{"type":"json_object"}},"logprobs":true,
                "reasoning_effort":"low"}}"#
        );
        let parsed = parse_chat(body.as_bytes()).unwrap();
        assert_eq!(needs(&parsed), Capabilities::ALL);
        // Audio is not an image.
        let audio = br#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}]}]}"#;
        assert_eq!(needs(&parse_chat(audio).unwrap()), Capabilities::NONE);
    }
}
