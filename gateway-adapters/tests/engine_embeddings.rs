//! Embeddings through the OpenAI-compatible adapters over loopback HTTP,
//! against the vLLM simulator's `/v1/embeddings` (and its trtllm-serve,
//! Dynamo and NIM modes): the upstream body, vectors and usage as the
//! engine sent them, every refusal typed, engines without embeddings
//! `Unsupported`, and cancel, deadline and abort closing the connection.
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_embeddings {
    use std::sync::Arc;
    use std::time::Duration;

    use gateway_adapters::engines::{
        OpenAiCompatBackend, UpstreamConfig, dynamo, nim, openai, sglang, trtllm, vllm,
    };
    use gateway_core::{
        Backend, BackendError, ByteBound, CancelHandle, CancelReason, EmbedAttempt, EmbedRequest,
        EmbeddingVector, Embeddings, EncodingFormat, EnginePhase, FailureKind, Prompt, RequestId,
    };
    use gateway_sims::vllm::{
        BUSY_503, Fault, SimEngine, SimOptions, VllmSim, embedding_of, text_ids,
    };
    use serde_json::Value;
    use tokio::time::Instant;

    use crate::support::kit::ms;

    fn config(sim: &VllmSim) -> UpstreamConfig {
        let mut c = UpstreamConfig::new("vllm-0", sim.url(), "m");
        c.scrape_interval = ms(5);
        c
    }

    fn attempt(inputs: Vec<Prompt>) -> EmbedAttempt {
        let mut request = EmbedRequest::new("m", inputs);
        request.id = RequestId::new("embd-test-1");
        EmbedAttempt::new(request, Arc::new(ByteBound::default()))
    }

    fn texts() -> Vec<Prompt> {
        vec![
            Prompt::Text("Hello world".into()),
            Prompt::Text("the sea is blue".into()),
        ]
    }

    async fn embed(
        backend: &OpenAiCompatBackend,
        request: EmbedAttempt,
    ) -> Result<Embeddings, BackendError> {
        backend.embed(request, CancelHandle::new()).await
    }

    fn floats(v: &[f32]) -> EmbeddingVector {
        EmbeddingVector::Float(v.iter().map(|x| f64::from(*x)).collect())
    }

    #[tokio::test]
    async fn vllm_embeds_texts_and_tokens_as_the_engine_answers() {
        let sim = VllmSim::start(SimOptions::default()).await;
        let backend = vllm::backend(config(&sim)).unwrap();
        let mut request = attempt(texts());
        Arc::make_mut(&mut request.request).extra =
            Some(r#"{"user":"u-7","truncate_prompt_tokens":64}"#.into());
        request.served_model = "m".into();
        let answer = embed(&backend, request).await.unwrap();
        // 1 + 2 words, 1 + 4 words.
        assert_eq!(answer.prompt_tokens, Some(3 + 5));
        assert_eq!(answer.data.len(), 2);
        for (i, text) in ["Hello world", "the sea is blue"].iter().enumerate() {
            assert_eq!(answer.data[i].index, i as u32);
            assert_eq!(
                answer.data[i].vector,
                floats(&embedding_of(&text_ids(text), 8))
            );
        }
        let sent = sim.requests().pop().unwrap();
        assert_eq!(
            (sent.method.as_str(), sent.path.as_str()),
            ("POST", "/v1/embeddings")
        );
        assert_eq!(sent.header("x-request-id"), Some("embd-test-1"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_str(&sent.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model":"m","input":["Hello world","the sea is blue"],
                "encoding_format":"float","user":"u-7","truncate_prompt_tokens":64})
        );

        // Token ids, base64: the bytes are the engine's f32s.
        let mut request = attempt(vec![
            Prompt::Tokens(vec![1, 15043, 3186]),
            Prompt::Tokens(vec![9]),
        ]);
        Arc::make_mut(&mut request.request).encoding_format = EncodingFormat::Base64;
        let answer = embed(&backend, request).await.unwrap();
        assert_eq!(answer.prompt_tokens, Some(4));
        assert!(matches!(answer.data[0].vector, EmbeddingVector::Base64(_)));
        assert_eq!(
            answer.data[0].vector.to_f32s().unwrap(),
            embedding_of(&[1, 15043, 3186], 8)
        );
        assert_eq!(
            answer.data[1].vector.to_f32s().unwrap(),
            embedding_of(&[9], 8)
        );
        let body: Value = serde_json::from_str(&sim.requests().pop().unwrap().body).unwrap();
        assert_eq!(body["input"], serde_json::json!([[1, 15043, 3186], [9]]));
        assert_eq!(body["encoding_format"], "base64");
        assert_eq!(sim.abort_counts().total(), 0);
    }

    #[tokio::test]
    async fn refusals_are_typed() {
        let sim = VllmSim::start(SimOptions {
            script: vec![
                Fault::Http {
                    status: 503,
                    body: BUSY_503.to_owned(),
                    retry_after: Some(2),
                },
                Fault::Http {
                    status: 500,
                    body: r#"{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}"#.to_owned(),
                    retry_after: None,
                },
                Fault::Http {
                    status: 200,
                    body: r#"{"object":"list","data":[{"index":0,"embedding":{"no":1}}]}"#.to_owned(),
                    retry_after: None,
                },
            ],
            ..SimOptions::default()
        })
        .await;
        let backend = vllm::backend(config(&sim)).unwrap();
        let e = embed(&backend, attempt(texts())).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Overloaded);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let e = embed(&backend, attempt(texts())).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (FailureKind::Internal, "engine: boom")
        );
        let e = embed(&backend, attempt(texts())).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::ProtocolViolation);
        // The engine's own checks.
        let mut dims = attempt(texts());
        Arc::make_mut(&mut dims.request).dimensions = Some(4);
        let e = embed(&backend, dims).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::InvalidRequest);
        assert!(e.message().contains("Matryoshka"), "{e}");
        let e = embed(&backend, attempt(vec![Prompt::Tokens(vec![5; 8193])]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), FailureKind::ContextLengthExceeded);
        let mut other = attempt(texts());
        other.served_model = "other".into();
        let e = embed(&backend, other).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::ModelNotFound);
        // Inputs the wire cannot carry never leave.
        let before = sim.requests().len();
        let e = embed(
            &backend,
            attempt(vec![Prompt::Text("a".into()), Prompt::Tokens(vec![1])]),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), FailureKind::InvalidRequest);
        assert_eq!(sim.requests().len(), before);
    }

    #[tokio::test]
    async fn engines_without_embeddings_are_unsupported() {
        // A vLLM serving a generative model: no such route.
        let sim = VllmSim::start(SimOptions {
            embeddings: false,
            ..SimOptions::default()
        })
        .await;
        let e = embed(&vllm::backend(config(&sim)).unwrap(), attempt(texts()))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), FailureKind::Unsupported);
        assert_eq!(e.upstream_status(), Some(404));
        assert!(e.is_retryable());
        // trtllm-serve has none: refused without a request.
        let sim = VllmSim::start(SimOptions {
            engine: SimEngine::TrtLlm,
            ..SimOptions::default()
        })
        .await;
        let backend = trtllm::backend(config(&sim)).unwrap();
        let e = embed(&backend, attempt(texts())).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Unsupported);
        assert!(sim.requests().iter().all(|r| r.path != "/v1/embeddings"));
    }

    #[tokio::test]
    async fn openai_dynamo_and_nim_embed_too() {
        let sim = VllmSim::start(SimOptions::default()).await;
        let answer = embed(&openai::backend(config(&sim)).unwrap(), attempt(texts()))
            .await
            .unwrap();
        assert_eq!(answer.prompt_tokens, Some(8));
        let sim = VllmSim::start(SimOptions {
            engine: SimEngine::Dynamo,
            ..SimOptions::default()
        })
        .await;
        let answer = embed(&dynamo::backend(config(&sim)).unwrap(), attempt(texts()))
            .await
            .unwrap();
        assert_eq!(answer.data.len(), 2);
        let sim = VllmSim::start(SimOptions {
            engine: SimEngine::Nim,
            api_key: Some("nvapi-test".into()),
            ..SimOptions::default()
        })
        .await;
        let mut c = config(&sim);
        let backend = nim::backend(c.clone()).unwrap();
        let e = embed(&backend, attempt(texts())).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Unauthorized);
        c.api_key = Some("nvapi-test".into());
        let answer = embed(&nim::backend(c).unwrap(), attempt(texts()))
            .await
            .unwrap();
        assert_eq!(answer.prompt_tokens, Some(8));
        let sent = sim.requests().pop().unwrap();
        assert_eq!(sent.header("authorization"), Some("Bearer nvapi-test"));
    }

    #[tokio::test]
    async fn sglang_embeds_through_its_openai_route() {
        // The vLLM simulator stands in for SGLang's OpenAI route here.
        let sim = VllmSim::start(SimOptions::default()).await;
        let backend = sglang::backend(config(&sim)).unwrap();
        let answer = backend
            .embed(attempt(texts()), CancelHandle::new())
            .await
            .unwrap();
        assert_eq!(answer.prompt_tokens, Some(8));
        assert_eq!(sim.requests().pop().unwrap().path, "/v1/embeddings");
    }

    async fn wait_live(sim: &VllmSim, id: &str) {
        let until = Instant::now() + Duration::from_secs(5);
        while sim.phase_now(id).is_none() {
            assert!(Instant::now() < until, "never in flight");
            tokio::time::sleep(ms(2)).await;
        }
    }

    async fn wait_aborts(sim: &VllmSim, n: u64) {
        let until = Instant::now() + Duration::from_secs(5);
        while sim.abort_counts().total() < n {
            assert!(Instant::now() < until, "aborts: {:?}", sim.abort_counts());
            tokio::time::sleep(ms(2)).await;
        }
    }

    #[tokio::test]
    async fn cancel_deadline_abort_and_drop_close_the_connection() {
        let sim = VllmSim::start(SimOptions {
            script: vec![Fault::Stall { after_tokens: 0 }; 4],
            ..SimOptions::default()
        })
        .await;
        let backend = Arc::new(vllm::backend(config(&sim)).unwrap());
        // Cancel.
        let cancel = CancelHandle::new();
        let task = {
            let (backend, cancel) = (backend.clone(), cancel.clone());
            tokio::spawn(async move { backend.embed(attempt(texts()), cancel).await })
        };
        wait_live(&sim, "embd-test-1").await;
        cancel.cancel(CancelReason::ClientGone);
        let e = task.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), FailureKind::Canceled);
        wait_aborts(&sim, 1).await;
        assert_eq!(sim.abort_log()[0].phase, EnginePhase::Prefill);
        // Deadline.
        let mut late = attempt(texts());
        late.deadline = Some(Instant::now() + ms(100));
        let e = embed(&backend, late).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::TotalTimeout);
        wait_aborts(&sim, 2).await;
        // abort(id).
        let task = {
            let backend = backend.clone();
            tokio::spawn(async move { backend.embed(attempt(texts()), CancelHandle::new()).await })
        };
        wait_live(&sim, "embd-test-1").await;
        assert!(backend.abort(&RequestId::new("embd-test-1")).await.unwrap());
        let e = task.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), FailureKind::Canceled);
        wait_aborts(&sim, 3).await;
        // The future dropped.
        let call = backend.embed(attempt(texts()), CancelHandle::new());
        assert!(tokio::time::timeout(ms(200), call).await.is_err());
        wait_aborts(&sim, 4).await;
        assert_eq!(backend.pressure().inflight, 0);
    }
}
