//! [`ChatTemplate`]: a model's Jinja chat template, rendered the way
//! Hugging Face transformers (and so vLLM) render it, so a chat prompt's
//! token count can be exact.

use std::path::Path;

use gateway_core::{CHAT_TEMPLATE_KWARGS, ChatInputs, ChatMessage, Role, ToolCall};
use minijinja::value::ValueKind;
use minijinja::{Environment, Error, ErrorKind, Value, context};

mod clock;
mod pyjson;
mod pystr;

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
/// Rendering follows transformers' `apply_chat_template` as vLLM calls it:
/// `trim_blocks` and `lstrip_blocks` on; the variables `messages`,
/// `tools`, `documents` (none), `add_generation_prompt`, `bos_token` and
/// `eos_token`; the functions `raise_exception(message)` and
/// `strftime_now(format)` (UTC); transformers' `tojson` filter (no HTML
/// escaping, `", "` and `": "` separators, non-ASCII kept, floats as
/// Python writes them); Python's string, dict and list methods
/// (`.items()`, `.startswith()`, ...); `{{ x }}` printing Python's
/// `str(x)` (`True`, `None`, `['a']`); maps keep their key order, as
/// Python's dicts do.
///
/// The values are the ones vLLM hands the template (see
/// [`render`](ChatTemplate::render)).
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: &str) -> String {
    clock::strftime_now(format)
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
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", pyjson::tojson);
        env.set_formatter(pystr::format);
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

    /// The prompt text the engine builds from `messages` and the chat
    /// request's `tools` (the JSON array text as the client sent it).
    ///
    /// The template sees what vLLM (0.32) gives transformers:
    /// - each message as `{"role", "content"}`, then `tool_calls` (an
    ///   assistant's, when it has any), `tool_call_id` (a tool message's)
    ///   and `name` (when given); `content` is a string, `""` for an
    ///   assistant's `null`;
    /// - each tool call as `{"id", "function": {"arguments", "name"},
    ///   "type": "function"}` with `arguments` read from its JSON text into
    ///   a map in the model's key order, and `{}` when they are empty, not
    ///   JSON or not a JSON object (vLLM's coercion);
    /// - each tool as vLLM's request model writes it back:
    ///   `{"type": "function", "function": {"name", "description",
    ///   "parameters"[, "strict"][, "defer_loading"]}[, "defer_loading"]}`,
    ///   a missing `description` or `parameters` as none, other fields
    ///   dropped, and the `parameters` schema exactly in the client's key
    ///   order.
    ///
    /// # Errors
    /// [`TemplateError`] if rendering fails (the template raised, say), or
    /// `tools` is not an array of function tools vLLM accepts, or holds a
    /// JSON value that has no equal here (an integer beyond 128 bits, a
    /// lone surrogate).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_request(messages, ChatInputs::tools(tools), add_generation_prompt)
    }

    /// As [`render`](ChatTemplate::render), with the request's template
    /// variables too: the keys of the `chat_template_kwargs` object in
    /// `inputs.extra` are added to the template's variables, as vLLM,
    /// SGLang and trtllm-serve hand them to `apply_chat_template(...,
    /// **chat_template_kwargs)` (a variable the template does not use
    /// changes nothing, as vLLM drops it). Read only when `inputs.extra`
    /// may hold the key ([`ChatInputs::template_kwargs_text`]); an absent
    /// or `null` value is no variables.
    ///
    /// # Errors
    /// As [`render`](ChatTemplate::render); also when `inputs.extra` is not
    /// a JSON object, its `chat_template_kwargs` is not an object, or
    /// names one of [`RESERVED_TEMPLATE_KWARGS`] (they are not plain
    /// variables: the engine's rendering would differ from this one).
    pub fn render_request(
        &self,
        messages: &[ChatMessage],
        inputs: ChatInputs<'_>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let messages = messages
            .iter()
            .map(message_value)
            .collect::<Result<Vec<Value>, _>>()?;
        let tools = match inputs.tools {
            Some(text) => tools_value(text)?,
            None => Value::from(()),
        };
        let kwargs = match inputs.template_kwargs_text() {
            Some(extra) => template_kwargs(extra)?,
            None => Vec::new(),
        };
        let template = self.env.get_template(NAME)?;
        let own = context! {
            messages => messages,
            tools => tools,
            documents => (),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        if kwargs.is_empty() {
            return Ok(template.render(own)?);
        }
        // None of the kwargs is one of the variables above (they are
        // reserved), so the two sets of keys do not overlap.
        let mut vars: Vec<(Value, Value)> = Vec::with_capacity(6 + kwargs.len());
        for key in own.try_iter()? {
            let value = own.get_item(&key)?;
            vars.push((key, value));
        }
        vars.extend(kwargs);
        Ok(template.render(Value::from_iter(vars))?)
    }
}

/// Keys of `chat_template_kwargs` that are not plain template variables:
/// `apply_chat_template`'s own parameters (another template, the
/// conversation, tools, documents, the generation prompt, tokenization
/// switches) and the special tokens it passes itself. A request naming one
/// is rendered by the engine in a way this template cannot follow, so its
/// count falls back to a bound.
pub const RESERVED_TEMPLATE_KWARGS: &[&str] = &[
    "messages",
    "conversation",
    "tools",
    "documents",
    "chat_template",
    "add_generation_prompt",
    "continue_final_message",
    "tokenize",
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "return_dict",
    "return_assistant_tokens_mask",
    "tokenizer_kwargs",
    "processor_kwargs",
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
];

/// The variables of the `chat_template_kwargs` object in the request's
/// pass-through fields `extra` (the text of a JSON object), in the
/// client's order, read as Python's `json.loads` reads them.
fn template_kwargs(extra: &str) -> Result<Vec<(Value, Value)>, TemplateError> {
    let bad = |why: String| TemplateError(format!("{CHAT_TEMPLATE_KWARGS}: {why}"));
    let fields = pyjson::parse(extra).map_err(|e| bad(e.to_string()))?;
    if fields.kind() != ValueKind::Map {
        return Err(bad("the extra fields are not an object".into()));
    }
    let kwargs = fields.get_attr(CHAT_TEMPLATE_KWARGS)?;
    match kwargs.kind() {
        ValueKind::Undefined | ValueKind::None => return Ok(Vec::new()),
        ValueKind::Map => {}
        _ => return Err(bad("not an object".into())),
    }
    let mut vars = Vec::new();
    for key in kwargs.try_iter()? {
        let name = key.as_str().unwrap_or_default();
        if RESERVED_TEMPLATE_KWARGS.contains(&name) {
            return Err(bad(format!("{name} is not a template variable")));
        }
        let value = kwargs.get_item(&key)?;
        vars.push((key, value));
    }
    Ok(vars)
}

/// A message as vLLM hands it to the template (its keys in vLLM's order).
fn message_value(m: &ChatMessage) -> Result<Value, TemplateError> {
    let mut fields = vec![
        ("role", Value::from(m.role.as_str())),
        ("content", Value::from(m.content.as_str())),
    ];
    if m.role == Role::Assistant && !m.tool_calls.is_empty() {
        let calls = m
            .tool_calls
            .iter()
            .map(tool_call_value)
            .collect::<Result<Vec<Value>, _>>()?;
        fields.push(("tool_calls", Value::from(calls)));
    }
    if m.role == Role::Tool {
        if let Some(id) = &m.tool_call_id {
            fields.push(("tool_call_id", Value::from(id.as_str())));
        }
    }
    if let Some(name) = &m.name {
        fields.push(("name", Value::from(name.as_str())));
    }
    Ok(Value::from_iter(fields))
}

/// An optional boolean field as pydantic reads one (lax mode): `true`,
/// `false`, 0, 1, 0.0, 1.0 and the strings `true/false`, `t/f`, `yes/no`,
/// `y/n`, `on/off`, `1/0` in any case; `None` when absent or null.
fn lax_bool(v: &Value, key: &str) -> Result<Option<bool>, TemplateError> {
    let x = v.get_attr(key).unwrap_or_default();
    let b = match x.kind() {
        ValueKind::Undefined | ValueKind::None => return Ok(None),
        ValueKind::Bool => Some(x.is_true()),
        ValueKind::Number => f64::try_from(x.clone())
            .ok()
            .and_then(|n| (n == 0.0).then_some(false).or((n == 1.0).then_some(true))),
        ValueKind::String => match x.as_str().unwrap_or_default().to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
            "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    };
    b.map(Some)
        .ok_or_else(|| TemplateError(format!("tools: {key} must be a boolean")))
}

/// A tool call as vLLM hands it to the template: the arguments a map.
fn tool_call_value(call: &ToolCall) -> Result<Value, TemplateError> {
    let empty = || Value::from_iter(Vec::<(Value, Value)>::new());
    let arguments = if call.arguments.is_empty() {
        empty()
    } else {
        match pyjson::parse(&call.arguments) {
            Ok(v) if v.kind() == ValueKind::Map => v,
            // vLLM coerces arguments that are not a JSON object to {}.
            Ok(_) | Err(pyjson::ParseError::Invalid(_)) => empty(),
            Err(e @ pyjson::ParseError::Unsupported(_)) => {
                return Err(TemplateError(format!("tool call arguments: {e}")));
            }
        }
    };
    let function = Value::from_iter([
        ("arguments", arguments),
        ("name", Value::from(call.name.as_str())),
    ]);
    Ok(Value::from_iter([
        ("id", Value::from(call.id.as_str())),
        ("function", function),
        ("type", Value::from("function")),
    ]))
}

/// The request's `tools` as vLLM hands them to the template: each
/// validated by its request model and dumped back (`model_dump()`).
fn tools_value(text: &str) -> Result<Value, TemplateError> {
    let bad = |why: String| TemplateError(format!("tools: {why}"));
    let list = pyjson::parse(text).map_err(|e| bad(e.to_string()))?;
    if list.kind() != ValueKind::Seq {
        return Err(bad("not an array".into()));
    }
    let field = |v: &Value, key: &str| v.get_attr(key).unwrap_or_default();
    // An optional field of a kind, `None` when absent or null.
    let optional = |v: &Value, key: &str, kind| -> Result<Option<Value>, TemplateError> {
        let x = field(v, key);
        if x.is_undefined() || x.is_none() {
            Ok(None)
        } else if x.kind() == kind {
            Ok(Some(x))
        } else {
            Err(bad(format!("{key} must be a {kind}")))
        }
    };
    let mut tools = Vec::new();
    for tool in list.try_iter()? {
        if tool.kind() != ValueKind::Map {
            return Err(bad("each tool must be an object".into()));
        }
        let kind = field(&tool, "type");
        if !kind.is_undefined() && kind.as_str() != Some("function") {
            return Err(bad("vLLM takes only function tools".into()));
        }
        let function = field(&tool, "function");
        if function.kind() != ValueKind::Map {
            return Err(bad("a tool needs a function object".into()));
        }
        let name = optional(&function, "name", ValueKind::String)?
            .ok_or_else(|| bad("a function needs a name".into()))?;
        let none = Value::from(());
        let mut f = vec![
            ("name", name),
            (
                "description",
                optional(&function, "description", ValueKind::String)?.unwrap_or(none.clone()),
            ),
            (
                "parameters",
                optional(&function, "parameters", ValueKind::Map)?.unwrap_or(none),
            ),
        ];
        if let Some(strict) = lax_bool(&function, "strict")? {
            f.push(("strict", Value::from(strict)));
        }
        let defer = lax_bool(&tool, "defer_loading")?;
        if let Some(d) = lax_bool(&function, "defer_loading")?.or(defer) {
            f.push(("defer_loading", Value::from(d)));
        }
        let mut t = vec![
            ("type", Value::from("function")),
            ("function", Value::from_iter(f)),
        ];
        if let Some(d) = defer {
            t.push(("defer_loading", Value::from(d)));
        }
        tools.push(Value::from_iter(t));
    }
    Ok(Value::from(tools))
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
        let text = t.render(&[ChatMessage::user("Hi")], None, true).unwrap();
        assert_eq!(text, "<|user|>\nHi</s>\n<|assistant|>");
        let bad = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        assert!(
            bad.render(&[], None, false)
                .unwrap_err()
                .0
                .contains("no system role")
        );
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    /// Renders `source` with the variable `x` read from `json`.
    fn with_x(source: &str, json: &str) -> String {
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let x = pyjson::parse(json).unwrap();
        t.env
            .get_template(NAME)
            .unwrap()
            .render(context! { x => x })
            .unwrap()
    }

    /// Expected values: transformers 5.19's template environment (Jinja2
    /// 3.1.6), the same template and `x = json.loads(X)`.
    #[test]
    fn tojson_and_printing_are_pythons() {
        const X: &str = r#"{"b": [1, 2.50, {"é": null}], "a": {}, "c": [], "d": "é\n"}"#;
        let cases = [
            (
                "{{ x | tojson }}",
                "{\"b\": [1, 2.5, {\"é\": null}], \"a\": {}, \"c\": [], \"d\": \"é\\n\"}",
            ),
            (
                "{{ x | tojson(indent=2) }}",
                "{\n  \"b\": [\n    1,\n    2.5,\n    {\n      \"é\": null\n    }\n  ],\n  \"a\": {},\n  \"c\": [],\n  \"d\": \"é\\n\"\n}",
            ),
            (
                "{{ x | tojson(indent='\\t', separators=(';', '=')) }}",
                "{\n\t\"b\"=[\n\t\t1;\n\t\t2.5;\n\t\t{\n\t\t\t\"é\"=null\n\t\t}\n\t];\n\t\"a\"={};\n\t\"c\"=[];\n\t\"d\"=\"é\\n\"\n}",
            ),
            (
                "{{ x | tojson(sort_keys=true, ensure_ascii=true) }}",
                "{\"a\": {}, \"b\": [1, 2.5, {\"\\u00e9\": null}], \"c\": [], \"d\": \"\\u00e9\\n\"}",
            ),
            (
                "{{ x | tojson(true, 0) }}",
                "{\n\"b\": [\n1,\n2.5,\n{\n\"\\u00e9\": null\n}\n],\n\"a\": {},\n\"c\": [],\n\"d\": \"\\u00e9\\n\"\n}",
            ),
            (
                "{{ {'z': 1, 'a': 2, 3: 4.0} | tojson }}",
                "{\"z\": 1, \"a\": 2, \"3\": 4.0}",
            ),
            (
                "{% for k, v in x.items() %}{{ k }}={{ v | tojson }};{% endfor %}{{ x.d.startswith('é') }}|{{ 'a,b'.split(',') | tojson }}",
                "b=[1, 2.5, {\"é\": null}];a={};c=[];d=\"é\\n\";True|[\"a\", \"b\"]",
            ),
        ];
        for (source, want) in cases {
            assert_eq!(with_x(source, X), want, "{source}");
        }
        assert_eq!(
            with_x(
                "{{ true }}|{{ none }}|{{ 2.50 }}|{{ 1e16 }}|{{ 7 }}|{{ [1, 'a', none, {'k': false}] }}|{{ x }}|{{ nothing }}|{{ x.d }}",
                r#"{"b": [1, 2.50, {"é": null}], "a": {}, "c": [], "d": "it's"}"#,
            ),
            "True|None|2.5|1e+16|7|[1, 'a', None, {'k': False}]|{'b': [1, 2.5, {'é': None}], 'a': {}, 'c': [], 'd': \"it's\"}||it's"
        );
        assert_eq!(with_x("{{ strftime_now('%Y') | length }}", "0"), "4");
        let bad = ChatTemplate::new("{{ x | tojson(nope=1) }}", "", "").unwrap();
        assert!(bad.render(&[], None, false).is_err());
    }

    fn tool_error(tools: &str) -> String {
        let t = ChatTemplate::new("{{ tools | tojson }}", "", "").unwrap();
        t.render(&[], Some(tools), false).unwrap_err().0
    }

    /// vLLM's request model: `type` defaults to "function", other types
    /// and malformed functions are refused; `defer_loading` is copied into
    /// the function; unknown fields are dropped.
    #[test]
    fn tools_are_what_vllm_validates() {
        let t = ChatTemplate::new("{{ tools | tojson }}", "", "").unwrap();
        let tools = r#"[{"function": {"x": 1, "parameters": {}, "name": "f", "description": "d"},
            "defer_loading": true, "extra": 2}]"#;
        // Python: [t.model_dump() for t in ChatCompletionRequest(...).tools]
        assert_eq!(
            t.render(&[], Some(tools), false).unwrap(),
            r#"[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}, "defer_loading": true}, "defer_loading": true}]"#
        );
        assert_eq!(t.render(&[], Some("[]"), false).unwrap(), "[]");
        assert!(tool_error(r#"[{"type": "web_search"}]"#).contains("function tools"));
        assert!(tool_error(r#"[{"function": {"description": "no name"}}]"#).contains("name"));
        // pydantic reads "yes" as true (Python: the same model_dump).
        assert_eq!(
            t.render(
                &[],
                Some(r#"[{"function": {"name": "f", "strict": "yes"}}]"#),
                false
            )
            .unwrap(),
            r#"[{"type": "function", "function": {"name": "f", "description": null, "parameters": null, "strict": true}}]"#
        );
        assert!(
            tool_error(r#"[{"function": {"name": "f", "strict": "maybe"}}]"#).contains("strict")
        );
        assert!(tool_error(r#"{"function": {"name": "f"}}"#).contains("array"));
        assert!(tool_error("[1]").contains("object"));
    }

    /// Arguments beyond what a minijinja value holds fail the render (the
    /// count falls back to a bound) instead of rendering differently.
    #[test]
    fn arguments_python_reads_but_rust_cannot_are_refused() {
        let t = ChatTemplate::new("{{ messages | tojson }}", "", "").unwrap();
        let call = |arguments: &str| ChatMessage {
            role: Role::Assistant,
            tool_calls: vec![ToolCall {
                id: "c".into(),
                name: "f".into(),
                arguments: arguments.into(),
            }],
            ..ChatMessage::default()
        };
        assert_eq!(
            t.render(&[call(r#"{"n": NaN, "big": 1e400}"#)], None, false)
                .unwrap(),
            r#"[{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"arguments": {"n": NaN, "big": Infinity}, "name": "f"}, "type": "function"}]}]"#
        );
        assert!(
            t.render(&[call(r#"{"s": "\ud800"}"#)], None, false)
                .is_err()
        );
        assert!(
            t.render(
                &[call(r#"{"n": 1701411834604692317316873037158841057280}"#)],
                None,
                false
            )
            .is_err()
        );
    }
}
