//! Routing sees the prompt's leading token ids as the engine will: with the
//! real TinyLlama tokenizer and chat template, the route policy gets the
//! first ids of the rendered chat (and of a text prompt with BOS), exactly
//! as many as it asked for; a model without a tokenizer gives none. And the
//! default prefix affinity keeps requests that share leading token blocks
//! on one backend, printing the spread.
#![cfg(feature = "tokenizers")]
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script};
use gateway_core::*;
use gateway_policy::route::{Candidate, RoutePolicy, RouteRequest};
use gateway_policy::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/");

fn tinyllama() -> Arc<HfTokenCounter> {
    let template = ChatTemplate::from_file(
        format!("{FIXTURES}tinyllama.chat_template.jinja"),
        "<s>",
        "</s>",
    )
    .unwrap();
    Arc::new(
        HfTokenCounter::from_file(format!("{FIXTURES}tinyllama.json"), true)
            .unwrap()
            .with_chat_template(template),
    )
}

/// Records what it is given; ranks by index.
#[derive(Debug, Default)]
struct Recording {
    seen: Mutex<Vec<Option<Vec<u32>>>>,
}

impl RoutePolicy for Recording {
    fn rank(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> Vec<usize> {
        self.seen
            .lock()
            .unwrap()
            .push(request.prefix_tokens.map(<[u32]>::to_vec));
        candidates.iter().map(|c| c.index).collect()
    }

    fn prefix_tokens(&self) -> usize {
        8
    }
}

fn model(name: &str, counter: Arc<dyn TokenCounter>) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        pricing: Pricing::default(),
        context_window: 2048,
        default_max_tokens: 4,
        media: gateway_policy::MediaCosts::default(),
        counter,
    }
}

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mocks: Vec<MockHandle>,
}

fn setup(router: Option<Arc<dyn RoutePolicy>>, backends: usize) -> Setup {
    let mut builder = Gateway::builder(Settings::default())
        .tenant(Tenant::new("t"), key_hash("sk-t"))
        .model(model("llama", tinyllama()))
        .model(model("plain", Arc::new(ByteBound::default())));
    if let Some(router) = router {
        builder = builder.route_policy(router);
    }
    let mut mocks = Vec::new();
    for i in 0..backends {
        let (mock, handle) = MockBackend::new(&format!("llama-{i}"), "llama");
        handle.set_default(Script::tokens(&["a", "b"], Duration::ZERO));
        builder = builder.backend(Arc::new(mock), "llama", "llama", None);
        mocks.push(handle);
    }
    let (mock, handle) = MockBackend::new("plain-0", "plain");
    handle.set_default(Script::tokens(&["a"], Duration::ZERO));
    builder = builder.backend(Arc::new(mock), "plain", "plain", None);
    mocks.push(handle);
    let gateway = builder.build().unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    Setup {
        gateway,
        tenant,
        mocks,
    }
}

async fn serve(s: &Setup, id: &str, model: &str, prompt: Prompt) {
    let request = ClientRequest::new(id, model, prompt);
    let mut stream = s
        .gateway
        .generate(&s.tenant, request, CancelHandle::new())
        .await
        .unwrap();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
}

#[tokio::test]
async fn the_policy_gets_the_leading_token_ids_it_asked_for() {
    let router = Arc::new(Recording::default());
    let s = setup(Some(router.clone()), 1);
    let chat = Prompt::Chat(vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("Hello there"),
    ]);
    serve(&s, "r1", "llama", chat).await;
    serve(&s, "r2", "llama", Prompt::Text("Hello world".into())).await;
    serve(&s, "r3", "llama", Prompt::Tokens(vec![9, 8, 7])).await;
    serve(&s, "r4", "plain", Prompt::Text("Hello world".into())).await;
    let seen = router.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            // `<|system|>\nYou are terse.</s>\n...`: the rendered template's
            // first 8 ids (no BOS: the template has none).
            Some(vec![529, 29989, 5205, 29989, 29958, 13, 3492, 526]),
            // BOS, ▁Hello, ▁world: all of them (fewer than 8).
            Some(vec![1, 15043, 3186]),
            // A token prompt's own ids.
            Some(vec![9, 8, 7]),
            // No tokenizer: bytes only.
            None,
        ]
    );
    // The estimate that priced them came from the same tokenization.
    assert_eq!(s.mocks[0].requests().len(), 3);
}

#[tokio::test]
async fn shared_leading_token_blocks_land_on_one_backend() {
    let s = setup(None, 4);
    // Four long system prompts (each well over 4 blocks of 64 tokens), ten
    // users each with their own question.
    let systems: Vec<String> = (0..4)
        .map(|g| {
            format!(
                "You are assistant number {g}. {}",
                "Answer with care and cite sources. ".repeat(40)
            )
        })
        .collect();
    for round in 0..10 {
        for (g, system) in systems.iter().enumerate() {
            let chat = Prompt::Chat(vec![
                ChatMessage::system(system.clone()),
                ChatMessage::user(format!("question {round} of group {g}")),
            ]);
            serve(&s, &format!("g{g}-r{round}"), "llama", chat).await;
        }
    }
    // Which backend served each group's requests.
    let mut spread = vec![[0usize; 4]; 4];
    for (b, mock) in s.mocks[..4].iter().enumerate() {
        for r in mock.requests() {
            let g: usize = r.request.id.as_str()[1..2].parse().unwrap();
            spread[g][b] += 1;
        }
    }
    println!("requests per backend, by system prompt: {spread:?}");
    for (g, row) in spread.iter().enumerate() {
        // After its first request a group stays on one backend.
        assert_eq!(row.iter().sum::<usize>(), 10, "group {g}: {row:?}");
        assert_eq!(
            row.iter().filter(|n| **n > 0).count(),
            1,
            "group {g}: {row:?}"
        );
    }
}
