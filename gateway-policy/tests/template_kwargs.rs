//! `chat_template_kwargs`: the request's template variables are rendered
//! into the prompt the estimate counts, as vLLM, SGLang and trtllm-serve
//! render them (`apply_chat_template(..., **chat_template_kwargs)`), so a
//! reasoning switch is reserved and charged exactly, not as drift.
//!
//! The template is TinyLlama's (the fixture) with a Qwen3-style switch:
//! `enable_thinking = false` writes an empty thinking block after the
//! generation prompt, and a printed variable (`system_hint`).
#![cfg(feature = "tokenizers")]
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, Script};
use gateway_core::*;
use gateway_policy::*;

pub mod support;
use support::settings;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/");

/// TinyLlama's template, a printed variable before the messages and a
/// thinking switch after the generation prompt.
const TEMPLATE: &str = "{% if system_hint is defined %}
{{ '<|system|>
' + system_hint + eos_token }}
{% endif %}
{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% if enable_thinking is defined and enable_thinking is false %}
{{ '<think>

</think>

' }}{% endif %}
{% endif %}
{% endfor %}";

/// What the template writes for [`messages`] without variables.
const PLAIN: &str = "<|system|>\nBe brief.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n";
/// What `enable_thinking = false` adds at the end.
const THINK_OFF: &str = "<think>\n\n</think>\n\n";
/// What `system_hint` adds in front.
const HINT: &str = "<|system|>\nRéponds en français.</s>\n";

fn messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("Be brief."),
        ChatMessage::user("What is 2+2?"),
    ]
}

fn tokenizer() -> HfTokenCounter {
    HfTokenCounter::from_file(format!("{DIR}tinyllama.json"), true).unwrap()
}

fn template() -> ChatTemplate {
    ChatTemplate::new(TEMPLATE, "<s>", "</s>").unwrap()
}

fn counter() -> &'static HfTokenCounter {
    static COUNTER: LazyLock<HfTokenCounter> =
        LazyLock::new(|| tokenizer().with_chat_template(template()));
    &COUNTER
}

fn with_extra(extra: &str) -> ChatInputs<'_> {
    ChatInputs {
        tools: None,
        extra: Some(extra),
        scope: None,
    }
}

/// The prompt's count with `extra` as its pass-through fields.
fn count(extra: Option<&str>) -> TokenCount {
    let inputs = ChatInputs {
        tools: None,
        extra,
        scope: None,
    };
    counter().count_request(&Prompt::Chat(messages()), inputs)
}

/// Tokens of `text` as the engine encodes a rendered prompt (no special
/// tokens added: the template writes its own).
fn tokens(text: &str) -> u64 {
    tokenizer().count_text(text).value()
}

#[test]
fn the_thinking_switch_is_rendered_and_counted_exactly() {
    let t = template();
    let off = r#"{"top_k":20,"chat_template_kwargs":{"enable_thinking":false}}"#;
    assert_eq!(t.render(&messages(), None, true).unwrap(), PLAIN);
    assert_eq!(
        t.render_request(&messages(), with_extra(off), true)
            .unwrap(),
        format!("{PLAIN}{THINK_OFF}")
    );
    // The counts: the tokenizer's own count of each text, and the switch
    // adds exactly the tokens of its block (12: no token spans the seam
    // after `<|assistant|>\n`).
    assert_eq!(tokens(PLAIN), 33);
    assert_eq!(tokens(&format!("{PLAIN}{THINK_OFF}")), 45);
    assert_eq!(count(None), TokenCount::Exact(33));
    assert_eq!(count(Some(off)), TokenCount::Exact(45));
    assert_eq!(tokens(&format!("\n{THINK_OFF}")) - tokens("\n"), 12);
    // The ids are the rendered text's: the plain prompt's, then the block's.
    let prompt = Prompt::Chat(messages());
    let plain = counter()
        .encode_request(&prompt, ChatInputs::default())
        .unwrap();
    let thinking = counter().encode_request(&prompt, with_extra(off)).unwrap();
    assert_eq!(thinking.len(), 45);
    assert_eq!(thinking[..33], plain[..]);

    // `true`, an absent or null object, and extras without the key render
    // as without variables.
    for extra in [
        r#"{"chat_template_kwargs":{"enable_thinking":true}}"#,
        r#"{"chat_template_kwargs":null}"#,
        r#"{"chat_template_kwargs":{}}"#,
        r#"{"top_k":20,"response_format":{"type":"json_object"}}"#,
    ] {
        assert_eq!(count(Some(extra)), TokenCount::Exact(33), "{extra}");
    }
    // Extras without the key are not even parsed.
    assert_eq!(with_extra(r#"{"top_k":20}"#).template_kwargs_text(), None);
    assert!(with_extra(r#"{"top_k":20}"#).is_empty());
}

#[test]
fn a_printed_variable_counts_its_text() {
    let extra = r#"{"chat_template_kwargs":{"system_hint":"Réponds en français.","enable_thinking":false}}"#;
    let text = format!("{HINT}{PLAIN}{THINK_OFF}");
    assert_eq!(
        template()
            .render_request(&messages(), with_extra(extra), true)
            .unwrap(),
        text
    );
    assert_eq!(tokens(&text), 60);
    assert_eq!(count(Some(extra)), TokenCount::Exact(60));
}

/// A key spelled with escapes is the same key to the engine's JSON reader,
/// so it is counted too (the substring check lets `\u` through).
#[test]
fn an_escaped_key_is_the_same_key() {
    let extra = r#"{"chat\u005ftemplate_kwargs":{"enable_thinking":false}}"#;
    assert_eq!(count(Some(extra)), TokenCount::Exact(45));
}

/// Keys that are `apply_chat_template`'s own parameters (or the special
/// tokens it passes) are not plain variables: the count falls back to the
/// bound, with an allowance for the extra fields' text, never below the
/// engine's rendering.
#[test]
fn reserved_keys_fall_back_to_a_bound() {
    let bare = tokenizer();
    let prompt = Prompt::Chat(messages());
    let TokenCount::UpperBound(without) = bare.count_prompt(&prompt) else {
        panic!("a chat without a template is a bound");
    };
    for key in RESERVED_TEMPLATE_KWARGS {
        let extra = format!(r#"{{"chat_template_kwargs":{{"{key}":false}}}}"#);
        assert!(
            template()
                .render_request(&messages(), with_extra(&extra), true)
                .unwrap_err()
                .0
                .contains("not a template variable"),
            "{key}"
        );
        let allowance = tools_allowance(bare.count_text(&extra).value());
        assert_eq!(
            count(Some(&extra)),
            TokenCount::UpperBound(without + allowance),
            "{key}"
        );
        assert_eq!(
            counter().encode_request(&prompt, with_extra(&extra)),
            None,
            "{key}"
        );
    }
    // Not an object: the engine refuses it; the estimate is a bound.
    let extra = r#"{"chat_template_kwargs":[1]}"#;
    assert!(!count(Some(extra)).is_exact());
    // Without a template, the variables are only bounded.
    let extra = r#"{"chat_template_kwargs":{"enable_thinking":false}}"#;
    assert_eq!(
        bare.count_request(&prompt, with_extra(extra)),
        TokenCount::UpperBound(without + tools_allowance(bare.count_text(extra).value()))
    );
}

/// Through the pipeline: the request's `extra` reaches the estimate. An
/// engine that counts the thinking block (45 tokens) is charged exactly
/// that, with no drift; the same engine count for a request whose
/// estimate left the block out would be 12 tokens of drift.
#[tokio::test(start_paused = true)]
async fn the_pipeline_reserves_and_charges_the_rendered_variables() {
    let pricing = Pricing {
        input: Money::from_picos(10),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(100),
    };
    let (mock, handle) = MockBackend::new("mock-0", "think");
    let gateway = Gateway::builder(settings())
        .tenant(Tenant::new("team-a"), key_hash("sk-t"))
        .model(ModelSpec {
            name: "think".into(),
            pricing,
            context_window: 1000,
            default_max_tokens: 16,
            media: MediaCosts::default(),
            counter: Arc::new(tokenizer().with_chat_template(template())),
        })
        .backend(Arc::new(mock), "think", "think", None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    let run = |id: &str, extra: Option<&str>| {
        let mut r = ClientRequest::new(id, "think", Prompt::Chat(messages()));
        r.max_tokens = Some(8);
        r.extra = extra.map(Arc::from);
        r
    };
    let settle = || async {
        for _ in 0..1000 {
            let a = gateway.account(&tenant.id).unwrap();
            if a.reserved == Money::ZERO && gateway.active() == 0 {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never settled");
    };

    // The engine renders the block: 45 prompt tokens.
    handle.push(Script::tokens(&["4"], Duration::ZERO).with_prompt_tokens(45));
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let extra = r#"{"chat_template_kwargs":{"enable_thinking":false}}"#;
    let mut stream = gateway
        .generate(&tenant, run("off", Some(extra)), cancel)
        .await
        .unwrap();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    let a = settle().await;
    assert_eq!((a.requests, a.usage), (1, Usage::new(45, 1)));
    assert_eq!(a.spent, Money::from_picos(45 * 10 + 100));
    // The engine got the field as sent.
    assert_eq!(handle.requests()[0].request.extra.as_deref(), Some(extra));
    let metrics = gateway.render_metrics();
    for line in [
        r#"gateway_estimate_drift_tokens_total{model="think"} 0"#,
        r#"gateway_prompt_overrun_total{model="think",backend="mock-0"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }

    // The same engine count for a request without the variables: its
    // estimate is 33, the charge is clamped there and the 12 tokens of the
    // block are drift.
    handle.push(Script::tokens(&["4"], Duration::ZERO).with_prompt_tokens(45));
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = gateway
        .generate(&tenant, run("plain", None), cancel)
        .await
        .unwrap();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    let a = settle().await;
    assert_eq!((a.requests, a.usage), (2, Usage::new(45 + 33, 2)));
    assert_eq!(a.spent, Money::from_picos((45 + 33) * 10 + 2 * 100));
    let metrics = gateway.render_metrics();
    for line in [
        r#"gateway_estimate_drift_tokens_total{model="think"} 12"#,
        r#"gateway_prompt_overrun_total{model="think",backend="mock-0"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }
}
