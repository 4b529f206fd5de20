//! Hot paths of the contract, each against a baseline measured in the same
//! run: metering and order-checking a token stream against a bare drain,
//! and a cancel handle's child against a bare tokio-util token.

use futures::StreamExt;
use gateway_core::testkit::bench::compare;
use gateway_core::*;

fn events(n: usize) -> Vec<TokenResult> {
    let mut items = vec![Ok(TokenEvent::Started(Started::default()))];
    items.extend((0..n).map(|_| Ok(TokenEvent::Delta(Delta::text("tok ", 1)))));
    items.push(Ok(TokenEvent::Usage(Usage::new(10, n as u64))));
    items.push(Ok(TokenEvent::Finished(FinishReason::Stop)));
    items
}

fn drain(stream: TokenStream, check: bool) -> u64 {
    futures::executor::block_on(async move {
        let mut stream = stream;
        let mut order = EventOrder::new();
        let mut n = 0;
        while let Some(Ok(event)) = stream.next().await {
            if check && order.observe(&event).is_err() {
                break;
            }
            n += 1;
        }
        n
    })
}

#[expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
fn main() {
    let stream = compare(
        "token stream, 256 deltas: metered+checked",
        31,
        200,
        || drain(TokenStream::from_items(events(256)), false),
        || {
            drain(
                TokenStream::from_items(events(256)).metered(UsageMeter::new()),
                true,
            )
        },
    );
    println!("{stream}");
    let parent = CancelHandle::new();
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = compare(
        "cancel handle child + cancel",
        31,
        2_000,
        || {
            let child = token.child_token();
            child.cancel();
        },
        || parent.child().cancel(CancelReason::ClientGone),
    );
    println!("{cancel}");
}
