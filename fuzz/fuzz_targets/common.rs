//! What the two handshake targets share: a runtime, and a stream whose far end has written the
//! fuzz input and closed.

use std::sync::LazyLock;

use tokio::io::{AsyncWriteExt, DuplexStream};

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
});

/// Runs `f` on a stream that yields `input` and then ends (what it writes is buffered, up to
/// 1 MiB, and dropped).
pub fn over_stream<F, Fut>(input: &[u8], f: F)
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = ()>,
{
    RT.block_on(async {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        theirs.write_all(input).await.expect("fits the buffer");
        theirs.shutdown().await.expect("in memory");
        f(ours).await;
        drop(theirs);
    });
}
