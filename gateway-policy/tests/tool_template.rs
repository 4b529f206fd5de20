//! The tool-aware TinyLlama template (`tinyllama.tools.chat_template.jinja`)
//! rendered and counted exactly as vLLM renders a chat request with tools,
//! tool calls and tool results.
//!
//! Every expected text and count below was produced once by
//! `scripts/real-engine/tool_template_expect.py` in the real-engine venv
//! (vLLM 0.32.0, transformers 5.19.0): the same messages and `tools` text
//! through vLLM's request model and message preprocessing, then
//! transformers' `apply_chat_template(..., add_generation_prompt=True)`,
//! the text encoded with the fixture tokenizer without special tokens.
#![cfg(feature = "tokenizers")]

use std::sync::LazyLock;

use gateway_core::{
    ChatInputs, ChatMessage, ContentPart, Prompt, Role, TokenCount, TokenCounter, ToolCall,
    tools_allowance,
};
use gateway_policy::{ChatTemplate, HfTokenCounter};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/");

/// The request's `tools`, byte for byte as the script sends them:
/// non-ASCII, nested schemas, keys out of alphabetical order (the second
/// tool's `function` before its `type`, `parameters` before `name`),
/// floats, booleans, a tool without description or parameters.
const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"Météo actuelle d'une ville — 東京 aussi","parameters":{"type":"object","properties":{"city":{"type":"string","description":"Nom de la ville"},"unit":{"enum":["celsius","fahrenheit"],"type":"string","default":"celsius"},"threshold":{"type":"number","default":21.5,"minimum":-273.15,"multipleOf":0.001,"examples":[2.0,1e-05,1e16,12345.678,-0.0,7]},"detail":{"type":"object","properties":{"hourly":{"type":"boolean","default":false},"days":{"type":"integer","maximum":16,"default":3}},"required":["days"]}},"required":["city"],"additionalProperties":false}}},{"function":{"parameters":{"properties":{"query":{"type":"string","description":"texte \"cité\"\tavec tab"}},"type":"object"},"name":"search"},"type":"function"},{"type":"function","function":{"name":"now","strict":true}}]"#;

/// What the template writes for [`TOOLS`]: vLLM's request model puts
/// `type` first, `name`, `description` (null when absent), `parameters`
/// (null when absent), `strict` in that order; the schemas keep the
/// client's order; floats as Python writes them (`1e-05`, `1e+16`, `-0.0`).
const TOOLS_TURN: &str = "<|system|>\nTo call a function, answer with <tool_call>{\"name\": <function name>, \"arguments\": <arguments object>}</tool_call>; the functions are listed in <tools></tools>.\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Météo actuelle d'une ville — 東京 aussi\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"Nom de la ville\"}, \"unit\": {\"enum\": [\"celsius\", \"fahrenheit\"], \"type\": \"string\", \"default\": \"celsius\"}, \"threshold\": {\"type\": \"number\", \"default\": 21.5, \"minimum\": -273.15, \"multipleOf\": 0.001, \"examples\": [2.0, 1e-05, 1e+16, 12345.678, -0.0, 7]}, \"detail\": {\"type\": \"object\", \"properties\": {\"hourly\": {\"type\": \"boolean\", \"default\": false}, \"days\": {\"type\": \"integer\", \"maximum\": 16, \"default\": 3}}, \"required\": [\"days\"]}}, \"required\": [\"city\"], \"additionalProperties\": false}}}\n{\"type\": \"function\", \"function\": {\"name\": \"search\", \"description\": null, \"parameters\": {\"properties\": {\"query\": {\"type\": \"string\", \"description\": \"texte \\\"cité\\\"\\tavec tab\"}}, \"type\": \"object\"}}}\n{\"type\": \"function\", \"function\": {\"name\": \"now\", \"description\": null, \"parameters\": null, \"strict\": true}}\n</tools></s>\n";

#[expect(clippy::unwrap_used, reason = "test helper: the fixtures must load")]
fn template(file: &str) -> ChatTemplate {
    ChatTemplate::from_file(format!("{DIR}{file}"), "<s>", "</s>").unwrap()
}

#[expect(clippy::unwrap_used, reason = "test helper: the fixtures must load")]
fn tokenizer() -> HfTokenCounter {
    HfTokenCounter::from_file(format!("{DIR}tinyllama.json"), true).unwrap()
}

/// The fixture tokenizer with the tool-aware template (loaded once).
fn counter() -> &'static HfTokenCounter {
    static COUNTER: LazyLock<HfTokenCounter> = LazyLock::new(
        #[expect(clippy::unwrap_used, reason = "test setup: the fixtures must load")]
        || {
            HfTokenCounter::from_file(format!("{DIR}tinyllama.json"), true)
                .unwrap()
                .with_chat_template(template("tinyllama.tools.chat_template.jinja"))
        },
    );
    &COUNTER
}

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

/// An assistant message with tool calls `(id, name, arguments)`.
fn calls(content: &str, calls: &[(&str, &str, &str)]) -> ChatMessage {
    ChatMessage {
        tool_calls: calls
            .iter()
            .map(|&(id, name, arguments)| ToolCall {
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            })
            .collect(),
        ..msg(Role::Assistant, content)
    }
}

fn tool(call: &str, name: Option<&str>, content: &str) -> ChatMessage {
    ChatMessage {
        tool_call_id: Some(call.into()),
        name: name.map(Into::into),
        ..msg(Role::Tool, content)
    }
}

/// Weather questions, two calls (the assistant's content null), two
/// results (one with the function's name), an answer, a follow-up.
fn weather() -> Vec<ChatMessage> {
    vec![
        msg(Role::System, "Tu es un assistant météo."),
        msg(Role::User, "Quel temps fait-il à Zürich et à 東京 ?"),
        calls(
            "",
            &[
                (
                    "call_1",
                    "get_weather",
                    r#"{"city": "Zürich", "detail": {"days": 2, "hourly": true}, "threshold": 18.0}"#,
                ),
                (
                    "call_2",
                    "get_weather",
                    r#"{"unit":"celsius","city":"東京"}"#,
                ),
            ],
        ),
        tool(
            "call_1",
            Some("get_weather"),
            r#"{"temp": 17.5, "sky": "nuageux"}"#,
        ),
        tool("call_2", None, "晴れ 22°C"),
        msg(Role::Assistant, "À Zürich 17,5 °C, à 東京 22 °C."),
        msg(Role::User, "Et demain ?"),
    ]
}

/// Calls whose arguments vLLM turns into `{}`: empty, a JSON array, not
/// JSON; and an empty tool result.
fn odd_arguments() -> Vec<ChatMessage> {
    vec![
        msg(Role::User, "Cherche « météo demain » puis donne l'heure."),
        calls(
            "Je cherche.",
            &[
                ("c1", "search", r#"{"query":"météo demain"}"#),
                ("c2", "now", ""),
                ("c3", "now", "[1, 2]"),
                ("c4", "now", "{oops"),
            ],
        ),
        tool("c1", None, "Demain : pluie, 12.5 °C"),
        tool("c2", None, ""),
    ]
}

/// Asserts the render, the exact count and the ids' ends of `messages`.
#[expect(clippy::unwrap_used, reason = "test helper: asserts")]
fn check(
    messages: &[ChatMessage],
    tools: Option<&str>,
    text: &str,
    count: u64,
    first: [u32; 4],
    last: [u32; 4],
) {
    let c = counter();
    let rendered = template("tinyllama.tools.chat_template.jinja")
        .render(messages, tools, true)
        .unwrap();
    assert_eq!(rendered, text);
    let prompt = Prompt::Chat(messages.to_vec());
    assert_eq!(
        c.count_request(&prompt, ChatInputs::tools(tools)),
        TokenCount::Exact(count)
    );
    let ids = c.encode_request(&prompt, ChatInputs::tools(tools)).unwrap();
    assert_eq!(ids.len() as u64, count);
    assert_eq!(
        (ids[..4].to_vec(), ids[ids.len() - 4..].to_vec()),
        (first.to_vec(), last.to_vec())
    );
}

#[test]
fn without_tools_it_renders_as_the_plain_template() {
    let plain = template("tinyllama.chat_template.jinja");
    let tools = template("tinyllama.tools.chat_template.jinja");
    let null_then_parts = vec![
        msg(Role::User, "hi"),
        // An assistant's `content: null` is "" (vLLM renders it so).
        msg(Role::Assistant, ""),
        ChatMessage {
            parts: vec![ContentPart::Text("a".into()), ContentPart::Text("b".into())],
            ..msg(Role::User, "a\nb")
        },
    ];
    let cases: [(Vec<ChatMessage>, &str, u64); 5] = [
        (
            vec![msg(Role::User, "Hello there")],
            "<|user|>\nHello there</s>\n<|assistant|>\n",
            17,
        ),
        (
            vec![
                msg(Role::System, "You are terse."),
                msg(Role::User, "Hello there"),
            ],
            "<|system|>\nYou are terse.</s>\n<|user|>\nHello there</s>\n<|assistant|>\n",
            30,
        ),
        (
            vec![
                msg(Role::System, "Réponds en français."),
                msg(Role::User, "Bonjour 🦀 ça va ?"),
                msg(Role::Assistant, "Oui, très bien.\nEt vous ?"),
                msg(Role::User, ""),
            ],
            "<|system|>\nRéponds en français.</s>\n<|user|>\nBonjour 🦀 ça va ?</s>\n<|assistant|>\nOui, très bien.\nEt vous ?</s>\n<|user|>\n</s>\n<|assistant|>\n",
            71,
        ),
        (
            vec![msg(Role::User, "1+1?"), msg(Role::Assistant, "2")],
            "<|user|>\n1+1?</s>\n<|assistant|>\n2</s>\n<|assistant|>\n",
            29,
        ),
        (
            null_then_parts,
            "<|user|>\nhi</s>\n<|assistant|>\n</s>\n<|user|>\na\nb</s>\n<|assistant|>\n",
            36,
        ),
    ];
    for (messages, text, count) in cases {
        assert_eq!(plain.render(&messages, None, true).unwrap(), text);
        assert_eq!(tools.render(&messages, None, true).unwrap(), text);
        let prompt = Prompt::Chat(messages);
        assert_eq!(counter().count_prompt(&prompt), TokenCount::Exact(count));
        assert_eq!(
            counter().count_request(&prompt, ChatInputs::default()),
            TokenCount::Exact(count)
        );
    }
}

#[test]
fn tools_are_listed_in_a_system_turn() {
    check(
        &[msg(Role::User, "Quelle heure est-il ?")],
        Some(TOOLS),
        &[
            TOOLS_TURN,
            "<|user|>\nQuelle heure est-il ?</s>\n<|assistant|>\n",
        ]
        .concat(),
        422,
        [529, 29989, 5205, 29989],
        [22137, 29989, 29958, 13],
    );
}

#[test]
fn tool_calls_and_results_render_as_vllm_does() {
    check(
        &weather(),
        Some(TOOLS),
        &[TOOLS_TURN, "<|system|>\nTu es un assistant météo.</s>\n<|user|>\nQuel temps fait-il à Zürich et à 東京 ?</s>\n<|assistant|>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"detail\": {\"days\": 2, \"hourly\": true}, \"threshold\": 18.0}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"celsius\", \"city\": \"東京\"}}\n</tool_call></s>\n<|tool|>\n{\"temp\": 17.5, \"sky\": \"nuageux\"}</s>\n<|tool|>\n晴れ 22°C</s>\n<|assistant|>\nÀ Zürich 17,5 °C, à 東京 22 °C.</s>\n<|user|>\nEt demain ?</s>\n<|assistant|>\n"].concat(),
        635,
        [529, 29989, 5205, 29989],
        [22137, 29989, 29958, 13],
    );
}

#[test]
fn arguments_that_are_no_json_object_render_as_empty_objects() {
    let odd = "<|user|>\nCherche « météo demain » puis donne l'heure.</s>\n<|assistant|>\nJe cherche.\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"météo demain\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call></s>\n<|tool|>\nDemain : pluie, 12.5 °C</s>\n<|tool|>\n</s>\n<|assistant|>\n";
    check(
        &odd_arguments(),
        Some(TOOLS),
        &[TOOLS_TURN, odd].concat(),
        579,
        [529, 29989, 5205, 29989],
        [22137, 29989, 29958, 13],
    );
    // Tool calls without `tools`: no tools turn.
    check(
        &odd_arguments(),
        None,
        odd,
        180,
        [529, 29989, 1792, 29989],
        [22137, 29989, 29958, 13],
    );
}

/// The values themselves, as `tojson` writes them: each message's keys in
/// vLLM's order (`tool_calls`, `tool_call_id`, `name` only when there),
/// each tool call's (`id`, `function` with `arguments` before `name`,
/// `type`), the tools' as vLLM's model dumps them, and `indent`.
#[test]
fn the_template_sees_what_vllm_passes() {
    let probe = ChatTemplate::new(
        "{% for m in messages %}{{ m | tojson }}\n{% endfor %}{{ tools | tojson }}\n{{ tools[0] | tojson(indent=2) }}",
        "<s>",
        "</s>",
    )
    .unwrap();
    let text = probe.render(&weather(), Some(TOOLS), true).unwrap();
    let messages = "{\"role\": \"system\", \"content\": \"Tu es un assistant météo.\"}\n{\"role\": \"user\", \"content\": \"Quel temps fait-il à Zürich et à 東京 ?\"}\n{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"id\": \"call_1\", \"function\": {\"arguments\": {\"city\": \"Zürich\", \"detail\": {\"days\": 2, \"hourly\": true}, \"threshold\": 18.0}, \"name\": \"get_weather\"}, \"type\": \"function\"}, {\"id\": \"call_2\", \"function\": {\"arguments\": {\"unit\": \"celsius\", \"city\": \"東京\"}, \"name\": \"get_weather\"}, \"type\": \"function\"}]}\n{\"role\": \"tool\", \"content\": \"{\\\"temp\\\": 17.5, \\\"sky\\\": \\\"nuageux\\\"}\", \"tool_call_id\": \"call_1\", \"name\": \"get_weather\"}\n{\"role\": \"tool\", \"content\": \"晴れ 22°C\", \"tool_call_id\": \"call_2\"}\n{\"role\": \"assistant\", \"content\": \"À Zürich 17,5 °C, à 東京 22 °C.\"}\n{\"role\": \"user\", \"content\": \"Et demain ?\"}";
    let tools = "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Météo actuelle d'une ville — 東京 aussi\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"Nom de la ville\"}, \"unit\": {\"enum\": [\"celsius\", \"fahrenheit\"], \"type\": \"string\", \"default\": \"celsius\"}, \"threshold\": {\"type\": \"number\", \"default\": 21.5, \"minimum\": -273.15, \"multipleOf\": 0.001, \"examples\": [2.0, 1e-05, 1e+16, 12345.678, -0.0, 7]}, \"detail\": {\"type\": \"object\", \"properties\": {\"hourly\": {\"type\": \"boolean\", \"default\": false}, \"days\": {\"type\": \"integer\", \"maximum\": 16, \"default\": 3}}, \"required\": [\"days\"]}}, \"required\": [\"city\"], \"additionalProperties\": false}}}, {\"type\": \"function\", \"function\": {\"name\": \"search\", \"description\": null, \"parameters\": {\"properties\": {\"query\": {\"type\": \"string\", \"description\": \"texte \\\"cité\\\"\\tavec tab\"}}, \"type\": \"object\"}}}, {\"type\": \"function\", \"function\": {\"name\": \"now\", \"description\": null, \"parameters\": null, \"strict\": true}}]";
    let indented = "{\n  \"type\": \"function\",\n  \"function\": {\n    \"name\": \"get_weather\",\n    \"description\": \"Météo actuelle d'une ville — 東京 aussi\",\n    \"parameters\": {\n      \"type\": \"object\",\n      \"properties\": {\n        \"city\": {\n          \"type\": \"string\",\n          \"description\": \"Nom de la ville\"\n        },\n        \"unit\": {\n          \"enum\": [\n            \"celsius\",\n            \"fahrenheit\"\n          ],\n          \"type\": \"string\",\n          \"default\": \"celsius\"\n        },\n        \"threshold\": {\n          \"type\": \"number\",\n          \"default\": 21.5,\n          \"minimum\": -273.15,\n          \"multipleOf\": 0.001,\n          \"examples\": [\n            2.0,\n            1e-05,\n            1e+16,\n            12345.678,\n            -0.0,\n            7\n          ]\n        },\n        \"detail\": {\n          \"type\": \"object\",\n          \"properties\": {\n            \"hourly\": {\n              \"type\": \"boolean\",\n              \"default\": false\n            },\n            \"days\": {\n              \"type\": \"integer\",\n              \"maximum\": 16,\n              \"default\": 3\n            }\n          },\n          \"required\": [\n            \"days\"\n          ]\n        }\n      },\n      \"required\": [\n        \"city\"\n      ],\n      \"additionalProperties\": false\n    }\n  }\n}";
    assert_eq!(text, format!("{messages}\n{tools}\n{indented}"));
}

#[test]
fn without_a_template_tools_are_only_bounded() {
    let bare = tokenizer();
    let prompt = Prompt::Chat(weather());
    let TokenCount::UpperBound(without) = bare.count_prompt(&prompt) else {
        panic!("a chat without a template is a bound");
    };
    let tools_tokens = bare.count_text(TOOLS).value();
    assert_eq!(
        bare.count_request(&prompt, ChatInputs::tools(Some(TOOLS))),
        TokenCount::UpperBound(without + tools_allowance(tools_tokens))
    );
    assert_eq!(
        bare.encode_request(&prompt, ChatInputs::tools(Some(TOOLS))),
        None
    );
    // The bound holds: above the exact count.
    assert!(without + tools_allowance(tools_tokens) > 635);
}
