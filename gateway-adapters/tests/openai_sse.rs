//! The SSE codec of `gateway_adapters::openai`: frame writing, the
//! incremental decoder (line ends, fields, limits, UTF-8, the end of the
//! body), the SSE test vectors of ENGINES.md §10, and properties over
//! arbitrary event sequences and arbitrary splits of the bytes.

// Everything sits in a `cfg(test)` module so clippy treats the helpers
// as test code too.
#[cfg(test)]
mod openai_sse {
    use bytes::BytesMut;
    use gateway_adapters::openai::{
        DONE_FRAME, SseDecoder, SseError, SseEvent, types::ChatCompletionChunk, write_comment,
        write_data, write_event,
    };
    use proptest::prelude::*;

    type Item = Result<SseEvent, SseError>;

    fn chunk(event: &SseEvent) -> ChatCompletionChunk {
        serde_json::from_str(&event.data).unwrap()
    }

    fn ev(data: &str) -> Item {
        Ok(SseEvent {
            event: None,
            data: data.to_owned(),
        })
    }

    fn named(name: &str, data: &str) -> Item {
        Ok(SseEvent {
            event: Some(name.to_owned()),
            data: data.to_owned(),
        })
    }

    /// Feeds `bytes` cut at `cuts`, taking the events after each push,
    /// then finishes.
    fn decode_cuts(bytes: &[u8], cuts: &[usize], max: usize) -> Vec<Item> {
        let mut dec = SseDecoder::new().with_max_event_bytes(max);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, bytes.len());
            dec.push(&bytes[start..cut]);
            out.extend(dec.events());
            start = cut;
        }
        dec.push(&bytes[start..]);
        out.extend(dec.events());
        dec.finish();
        out.extend(dec.events());
        assert!(dec.next_event().is_none());
        out
    }

    fn decode(bytes: &[u8]) -> Vec<Item> {
        decode_cuts(bytes, &[], SseDecoder::DEFAULT_MAX_EVENT_BYTES)
    }

    fn decode_bytewise(bytes: &[u8], max: usize) -> Vec<Item> {
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        decode_cuts(bytes, &cuts, max)
    }

    #[test]
    fn writes_frames() {
        let mut out = BytesMut::new();
        write_data(&mut out, "{\"a\":1}");
        write_data(&mut out, "two\nlines\r\nand\rmore");
        write_event(&mut out, Some("error\nbroken"), "x");
        write_comment(&mut out, "keep-alive");
        out.extend_from_slice(DONE_FRAME);
        assert_eq!(
            &out[..],
            &b"data: {\"a\":1}\n\n\
               data: two\ndata: lines\ndata: and\ndata: more\n\n\
               event: error\ndata: x\n\n\
               : keep-alive\n\n\
               data: [DONE]\n\n"[..]
        );
        assert_eq!(
            decode(&out),
            vec![
                ev("{\"a\":1}"),
                ev("two\nlines\nand\nmore"),
                named("error", "x"),
                ev("[DONE]"),
            ]
        );
        assert!(decode(&out).last().unwrap().as_ref().unwrap().is_done());
    }

    #[test]
    fn line_ends_fields_and_comments() {
        let stream = b"data:no-space\r\n\r\n\
                       data:  two spaces\rdata: second\r\r\
                       : comment\nid: 7\nretry: 100\nunknown: x\ndata\n\n\
                       event: update\ndata: {}\n\n\
                       event:ping\n\n\
                       : only a comment\n\n\n\n\
                       data: trailing \t \n\n";
        let expected = vec![
            ev("no-space"),
            ev(" two spaces\nsecond"),
            ev(""),
            named("update", "{}"),
            named("ping", ""),
            ev("trailing"),
        ];
        assert_eq!(decode(stream), expected);
        assert_eq!(decode_bytewise(stream, 1 << 20), expected);
    }

    #[test]
    fn skips_a_leading_byte_order_mark_only() {
        let stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n";
        // The second BOM is part of a field name, which is then unknown.
        assert_eq!(decode(stream), vec![ev("a")]);
        assert_eq!(decode_bytewise(stream, 1 << 20), vec![ev("a")]);
        // A lone partial BOM at the end is just bytes.
        assert_eq!(decode(b"\xef\xbb"), vec![]);
    }

    #[test]
    fn holds_events_until_complete() {
        let mut dec = SseDecoder::new();
        dec.push(b"data: {\"a\":");
        assert!(dec.next_event().is_none());
        assert!(dec.has_partial());
        dec.push(b"1}\n");
        assert!(dec.next_event().is_none());
        dec.push(b"\ndata: x\r");
        assert_eq!(dec.next_event(), Some(ev("{\"a\":1}")));
        assert!(dec.next_event().is_none());
        // A `\n` right after a `\r` that ended the previous read is part
        // of the same line end, not a blank line.
        dec.push(b"\n");
        assert!(dec.next_event().is_none());
        dec.push(b"\r\n");
        assert_eq!(dec.next_event(), Some(ev("x")));
        assert!(!dec.has_partial());
    }

    #[test]
    fn finish_completes_a_trailing_event() {
        // Blank line missing.
        assert_eq!(decode(b"data: a\n\ndata: b\n"), vec![ev("a"), ev("b")]);
        // Last line unterminated too.
        assert_eq!(decode(b"data: a\n\ndata: b"), vec![ev("a"), ev("b")]);
        assert_eq!(decode(b"data: a\ndata: b\r"), vec![ev("a\nb")]);
        // Nothing pending: nothing more.
        assert_eq!(decode(b"data: a\n\n: bye"), vec![ev("a")]);
        // Pushes after finish are ignored.
        let mut dec = SseDecoder::new();
        dec.finish();
        dec.push(b"data: late\n\n");
        assert!(dec.next_event().is_none());
    }

    #[test]
    fn invalid_utf8_is_an_error_for_that_event_only() {
        let stream = b"data: ok\n\ndata: \xff\xfe\n\nevent: \xc3\ndata: x\n\ndata: next\n\n";
        let expected = vec![
            ev("ok"),
            Err(SseError::InvalidUtf8),
            Err(SseError::InvalidUtf8),
            ev("next"),
        ];
        assert_eq!(decode(stream), expected);
        assert_eq!(decode_bytewise(stream, 1 << 20), expected);
        // A character cut by the end of the body.
        assert_eq!(decode(b"data: \xc3"), vec![Err(SseError::InvalidUtf8)]);
    }

    #[test]
    fn events_beyond_the_limit_are_refused_and_skipped() {
        let limit = 16;
        let big = format!("data: {}\n\n", "x".repeat(40));
        let stream = format!("data: small\n\n{big}data: after\n\n");
        let expected = vec![
            ev("small"),
            Err(SseError::EventTooLarge { limit }),
            ev("after"),
        ];
        assert_eq!(decode_cuts(stream.as_bytes(), &[], limit), expected);
        assert_eq!(decode_bytewise(stream.as_bytes(), limit), expected);
        // Many short lines add up.
        let stream = "data: 12345\ndata: 12345\ndata: 12345\n\ndata: ok\n\n";
        assert_eq!(
            decode_cuts(stream.as_bytes(), &[], limit),
            vec![Err(SseError::EventTooLarge { limit }), ev("ok")]
        );
        // An endless line does not grow the buffer: the error comes while
        // the line is still open, and its bytes are dropped.
        let mut dec = SseDecoder::new().with_max_event_bytes(limit);
        dec.push(b"data: ");
        assert!(dec.next_event().is_none());
        dec.push(&[b'y'; 64]);
        assert_eq!(
            dec.next_event(),
            Some(Err(SseError::EventTooLarge { limit }))
        );
        for _ in 0..100 {
            dec.push(&[b'y'; 64]);
            assert!(dec.next_event().is_none());
        }
        // The rest of that line, even an empty-looking one, is not a
        // blank line; the blank line after it ends the skipped event.
        dec.push(b"\ndata: still skipped\n\ndata: ok\n\n");
        assert_eq!(dec.next_event(), Some(ev("ok")));
        assert_eq!(
            SseError::EventTooLarge { limit }.to_string(),
            "server-sent event exceeds 16 bytes"
        );
    }

    #[test]
    fn long_lines_in_small_reads() {
        // 512 KiB in 64-byte reads: each byte is searched once (a rescan
        // per read would take seconds here).
        let line = "z".repeat(512 * 1024);
        let stream = format!("data: {line}\n\n");
        let mut dec = SseDecoder::new();
        let mut events = Vec::new();
        for read in stream.as_bytes().chunks(64) {
            dec.push(read);
            events.extend(dec.events());
        }
        assert_eq!(events, vec![ev(&line)]);
    }

    /// TV-01: vLLM chat stream with usage, byte for byte.
    #[test]
    fn tv01_vllm_chat_stream() {
        let body = concat!(
            "data: {\"id\":\"chatcmpl-a1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"prompt_token_ids\":null}\n\n",
            "data: {\"id\":\"chatcmpl-a1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-a1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null,\"token_ids\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-a1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"total_tokens\":11,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        );
        let events: Vec<SseEvent> = decode(body.as_bytes())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 5);
        assert!(events.iter().all(|e| e.event.is_none()));
        assert!(events[4].is_done());
        let chunks: Vec<_> = events[..4].iter().map(chunk).collect();
        let text: String = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .filter_map(|c| c.delta.content.as_deref())
            .collect();
        assert_eq!(text, "Hello");
        assert_eq!(chunks[2].choices[0].finish_reason.as_deref(), Some("stop"));
        let usage = chunks[3].usage.unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (9, 2, 11)
        );
        assert_eq!(
            decode_bytewise(body.as_bytes(), 1 << 20),
            decode(body.as_bytes())
        );
    }

    /// TV-06: a character split across transport reads.
    #[test]
    fn tv06_split_utf8_across_reads() {
        let frame =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"é🙂\"}}]}\n\n".as_bytes();
        let e_start = frame.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
        let (read1, rest) = frame.split_at(e_start + 1);
        let (read2, read3) = rest.split_at(3);
        assert_eq!(read1.last(), Some(&0xc3));
        assert_eq!(read2, [0xa9, 0xf0, 0x9f]);
        assert_eq!(
            read3,
            [0x99, 0x82, b'"', b'}', b'}', b']', b'}', b'\n', b'\n']
        );

        let mut dec = SseDecoder::new();
        dec.push(read1);
        assert!(dec.next_event().is_none());
        dec.push(read2);
        assert!(dec.next_event().is_none());
        dec.push(read3);
        let event = dec.next_event().unwrap().unwrap();
        assert!(dec.next_event().is_none());
        let parsed = chunk(&event);
        assert_eq!(parsed.choices[0].delta.content.as_deref(), Some("é🙂"));
        assert!(!event.data.contains('\u{fffd}'));
    }

    /// TV-11: trtllm-serve's trailing space after the first chunk's JSON.
    #[test]
    fn tv11_trailing_space_tolerated() {
        let body = concat!(
            "data: {\"id\":\"chatcmpl-1f\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":{\"prompt_tokens\":9,\"total_tokens\":9,\"completion_tokens\":0,\"prompt_tokens_details\":{\"cached_tokens\":0}}} \n\n",
            "data: {\"id\":\"chatcmpl-9c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\",\"reasoning_content\":\"\"},\"avg_decoded_tokens_per_iter\":1.0}],\"usage\":{\"prompt_tokens\":9,\"total_tokens\":10,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
            "data: [DONE] \n\n",
        );
        let events: Vec<SseEvent> = decode(body.as_bytes())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 3);
        assert!(events[0].data.ends_with("}}}"));
        assert_eq!(
            chunk(&events[0]).choices[0].delta.role.as_deref(),
            Some("assistant")
        );
        assert_eq!(
            chunk(&events[1]).choices[0].delta.content.as_deref(),
            Some("Hi")
        );
        assert!(events[2].is_done());
    }

    /// TV-13 and TV-15: bodies that end without `[DONE]`.
    #[test]
    fn tv13_tv15_streams_without_done() {
        let triton = concat!(
            "data: {\"model_name\":\"ensemble\",\"model_version\":\"1\",\"text_output\":\"Hello\"}\n\n",
            "data: {\"model_name\":\"ensemble\",\"model_version\":\"1\",\"text_output\":\" there\"}\n\n",
            "data: {\"model_name\":\"ensemble\",\"model_version\":\"1\",\"text_output\":\"!\"}\n\n",
        );
        let text: String = decode(triton.as_bytes())
            .into_iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.unwrap().data).unwrap();
                v["text_output"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(text, "Hello there!");

        // Triton ending the body right after the last data line.
        let cut = triton.trim_end_matches('\n');
        assert_eq!(decode(cut.as_bytes()), decode(triton.as_bytes()));

        // trtllm-serve chat cut off: one content event, then nothing; the
        // decoder holds nothing partial, so the adapter sees a clean EOF
        // without finish_reason.
        let mut dec = SseDecoder::new();
        dec.push(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The\"}}]}\n\n");
        dec.finish();
        assert!(dec.next_event().unwrap().is_ok());
        assert!(dec.next_event().is_none());
        assert!(!dec.has_partial());
        // Cut inside an event: the partial event comes out at finish and
        // the truncation shows in its JSON.
        let mut dec = SseDecoder::new();
        dec.push(b"data: {\"choices\":[{\"ind");
        assert!(dec.has_partial());
        dec.finish();
        let partial = dec.next_event().unwrap().unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&partial.data).is_err());
    }

    /// TV-19: Dynamo error frames, 2026 and older.
    #[test]
    fn tv19_dynamo_error_events() {
        let body = concat!(
            "data: {\"id\":\"chatcmpl-d1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Par\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"Internal server error\",\"type\":\"internal_server_error\",\"code\":500}}\n\n",
            "data: [DONE]\n\n",
        );
        let events: Vec<SseEvent> = decode(body.as_bytes())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 3);
        assert!(events[1].data.starts_with("{\"error\":"));
        // Older builds: an `event: error` with the text in a comment.
        assert_eq!(
            decode(b"event: error\n: upstream exploded\n\n"),
            vec![named("error", "")]
        );
    }

    /// An arbitrary event: a name or data lines (at least one of them).
    #[derive(Debug, Clone)]
    struct Gen {
        name: Option<String>,
        lines: Vec<String>,
        comment: bool,
        id: bool,
        extra_blank: bool,
    }

    impl Gen {
        fn expected(&self) -> SseEvent {
            SseEvent {
                event: self.name.clone(),
                data: self
                    .lines
                    .iter()
                    .map(|l| l.trim_end_matches([' ', '\t']))
                    .collect::<Vec<_>>()
                    .join("\n"),
            }
        }
    }

    fn gen_event() -> impl Strategy<Value = Gen> {
        (
            proptest::option::of("[a-z]{1,8}"),
            proptest::collection::vec("[^\r\n]{0,12}", 0..4),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_filter("an event needs a name or data", |(name, lines, ..)| {
                name.is_some() || !lines.is_empty()
            })
            .prop_map(|(name, lines, comment, id, extra_blank)| Gen {
                name,
                lines,
                comment,
                id,
                extra_blank,
            })
    }

    /// Serializes events with line ends taken in turn from `ends`
    /// (0: `\n`, 1: `\r\n`, 2: `\r`); `open_end` leaves off the last blank
    /// line (and with `cut_last_line` the last line's end) for `finish`.
    fn serialize(events: &[Gen], ends: &[u8], open_end: bool, cut_last_line: bool) -> Vec<u8> {
        let mut lines: Vec<String> = Vec::new();
        for e in events {
            if e.comment {
                lines.push(": note".into());
            }
            if e.id {
                lines.push("id: 42".into());
                lines.push("retry: 10".into());
            }
            if let Some(name) = &e.name {
                lines.push(format!("event: {name}"));
            }
            for l in &e.lines {
                // One space after the colon is dropped: keep a leading space.
                if l.starts_with(' ') || l.is_empty() {
                    lines.push(format!("data: {l}"));
                } else {
                    lines.push(format!("data:{l}"));
                }
            }
            lines.push(String::new());
            if e.extra_blank {
                lines.push(String::new());
            }
        }
        if open_end {
            while lines.last().is_some_and(String::is_empty) {
                lines.pop();
            }
        }
        let mut out = Vec::new();
        let mut prev_cr = false;
        let count = lines.len();
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(line.as_bytes());
            if cut_last_line && open_end && i + 1 == count {
                break;
            }
            let mut end = ends.get(i % ends.len().max(1)).copied().unwrap_or(0) % 3;
            // `\r` then an empty line ending in `\n` would read as `\r\n`.
            if prev_cr && line.is_empty() && end == 0 {
                end = 1;
            }
            out.extend_from_slice(match end {
                0 => b"\n".as_slice(),
                1 => b"\r\n",
                _ => b"\r",
            });
            prev_cr = end == 2;
        }
        out
    }

    /// Bytes with a lot of SSE structure in them.
    fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data:".to_vec()),
            Just(b"data: ".to_vec()),
            Just(b"event: e".to_vec()),
            Just(b":".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\n\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b" \t".to_vec()),
            Just(b"\xef\xbb\xbf".to_vec()),
            Just("é🙂".as_bytes().to_vec()),
            Just(b"\xf0\x9f".to_vec()),
            Just(b"\xff".to_vec()),
            "[a-z{}\"]{1,6}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_split_gives_the_same_events(
            events in proptest::collection::vec(gen_event(), 0..6),
            ends in proptest::collection::vec(0u8..3, 1..8),
            open_end in any::<bool>(),
            cut_last_line in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let bytes = serialize(&events, &ends, open_end, cut_last_line);
            let expected: Vec<Item> = events.iter().map(|e| Ok(e.expected())).collect();
            let max = SseDecoder::DEFAULT_MAX_EVENT_BYTES;
            prop_assert_eq!(&decode(&bytes), &expected);
            prop_assert_eq!(&decode_bytewise(&bytes, max), &expected);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(&decode_cuts(&bytes, &cuts, max), &expected);
        }

        #[test]
        fn arbitrary_bytes_decode_alike_in_any_split(
            bytes in sse_bytes(),
            max in 0usize..48,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let whole = decode_cuts(&bytes, &[], max);
            prop_assert_eq!(&decode_bytewise(&bytes, max), &whole);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(&decode_cuts(&bytes, &cuts, max), &whole);
        }

        #[test]
        fn raw_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let whole = decode_cuts(&bytes, &[], 32);
            prop_assert_eq!(decode_bytewise(&bytes, 32), whole);
        }

        #[test]
        fn written_frames_decode_back(data in "[^\r]{0,40}", name in proptest::option::of("[a-z]{1,6}")) {
            let mut out = BytesMut::new();
            write_event(&mut out, name.as_deref(), &data);
            let expected = SseEvent {
                event: name,
                data: data
                    .split('\n')
                    .map(|l| l.trim_end_matches([' ', '\t']))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            prop_assert_eq!(decode(&out), vec![Ok(expected)]);
        }
    }
}
