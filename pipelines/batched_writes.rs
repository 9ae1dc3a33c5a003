//! Writes of one HTTP/2 connection gathered into one system call per scheduler pass.
//!
//! hyper serves each HTTP/2 stream in a task of its own. When a stream's response is ready, its task wakes the
//! connection's task, and tokio runs a task woken that way next (its LIFO slot), before the other streams' tasks
//! that are ready too. So the connection writes and flushes one response at a time: one `writev`, one trip through
//! the TCP stack and one wake-up of the client per response. With 64 ten-span requests in flight that was one
//! system call per request and half of the transport's CPU time (perf, `infercol-sink`).
//!
//! `BatchedWrites` keeps what the connection writes, and on its first flush yields once instead of writing: the
//! connection's task goes to the back of the run queue, the ready stream tasks finish meanwhile, and the next
//! flush sends all their responses with one write. Nothing is acknowledged later than one pass of the scheduler,
//! and the buffer is bounded: past `LIMIT` bytes a write waits for the socket as it would without the buffer. A
//! yield that gathered nothing (a client with one request in flight) makes the next flushes write at once, more of
//! them after each fruitless yield, so that such a connection pays for a yield rarely.
//!
//! Written here because neither hyper, h2 nor tokio offers write coalescing across the tasks of one connection
//! (tokio's `BufWriter` writes on every flush, which h2 calls after each response).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes to the socket regardless of flushes: a few dozen responses and headers, and
/// more than one TCP segment's worth, so that a batch fills segments.
const LIMIT: usize = 64 * 1024;

pub struct BatchedWrites<T> {
    inner: T,
    held: Vec<u8>,
    /// Of `held`, what the socket has taken already (a partial write).
    sent: usize,
    /// Whether the last flush yielded: the next one writes.
    yielded: bool,
    /// What was held when the last flush yielded: if nothing came during the yield, it bought nothing.
    held_at_yield: usize,
    /// Flushes to write through before yielding again, after yields that gathered nothing: a connection with one
    /// stream at a time (a client that waits for each response) pays a yield once in `MAX_SKIP` flushes.
    skip: u32,
    /// Flushes skipped after the last fruitless yield (doubles with each, up to `MAX_SKIP`).
    backoff: u32,
}

/// Most flushes written through between two tries at yielding.
const MAX_SKIP: u32 = 64;

impl<T> BatchedWrites<T> {
    pub fn new(inner: T) -> BatchedWrites<T> {
        BatchedWrites {
            inner,
            held: Vec::new(),
            sent: 0,
            yielded: false,
            held_at_yield: 0,
            skip: 0,
            backoff: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> BatchedWrites<T> {
    /// Ready once everything held is written to `inner`.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `len` more bytes: what is held goes out first when they would not fit. False when `len` alone is
    /// past the limit, and the caller writes it through.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.held.len() + len > LIMIT {
            ready!(self.poll_send_held(cx))?;
        }
        Poll::Ready(Ok(len <= LIMIT))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !ready!(this.poll_room(cx, data.len()))? {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        // Slices are copied into the held bytes, which is as cheap as the caller gathering them itself.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            this.yielded = false;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.yielded {
            if this.skip > 0 {
                this.skip -= 1;
            } else {
                // Woken by itself, the task runs again after the tasks already ready (tokio's yield), not first.
                this.yielded = true;
                this.held_at_yield = this.held.len();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        } else if this.held.len() > this.held_at_yield {
            this.backoff = 0;
        } else {
            this.backoff = (this.backoff * 2).clamp(1, MAX_SKIP);
            this.skip = this.backoff;
        }
        ready!(this.poll_send_held(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for BatchedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A socket that records each write it is given.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(io: &mut BatchedWrites<Socket>, cx: &mut Context<'_>, data: &[u8]) {
        assert!(matches!(Pin::new(io).poll_write(cx, data), Poll::Ready(Ok(n)) if n == data.len()));
    }

    #[test]
    fn responses_written_before_a_flush_go_out_in_one_write_after_one_yield() {
        let waker = Arc::new(CountingWaker::default());
        let waker_handle = std::task::Waker::from(waker.clone());
        let mut cx = Context::from_waker(&waker_handle);
        let mut io = BatchedWrites::new(Socket::default());
        write(&mut io, &mut cx, b"first response");
        // The first flush yields: nothing written, the task woken to run again after the others.
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(io.get_ref().writes.is_empty());
        let slices = [io::IoSlice::new(b" second"), io::IoSlice::new(b" third")];
        assert!(matches!(
            Pin::new(&mut io).poll_write_vectored(&mut cx, &slices),
            Poll::Ready(Ok(13))
        ));
        assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(io.get_ref().writes, vec![b"first response second third".to_vec()]);
        // With nothing held a flush is the socket's own, and does not yield.
        assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn held_bytes_stay_under_the_limit_and_large_writes_pass_through() {
        let waker = std::task::Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedWrites::new(Socket::default());
        let chunk = vec![7u8; LIMIT / 2 + 1];
        write(&mut io, &mut cx, &chunk);
        assert!(io.get_ref().writes.is_empty());
        // A second chunk would pass the limit: the first goes out before it is held.
        write(&mut io, &mut cx, &chunk);
        assert_eq!(io.get_ref().writes.len(), 1);
        assert!(io.held.len() <= LIMIT);
        // A write larger than the limit goes to the socket after what is held, in order.
        let big = vec![9u8; LIMIT + 1];
        write(&mut io, &mut cx, &big);
        let writes = &io.get_ref().writes;
        assert_eq!(
            (writes.len(), writes[1].len(), writes[2].len()),
            (3, chunk.len(), big.len())
        );
        assert!(io.held.is_empty());
    }

    #[test]
    fn a_connection_with_one_response_at_a_time_stops_yielding() {
        let waker = Arc::new(CountingWaker::default());
        let waker_handle = std::task::Waker::from(waker.clone());
        let mut cx = Context::from_waker(&waker_handle);
        let mut io = BatchedWrites::new(Socket::default());
        let mut yields = Vec::new();
        for _ in 0..40 {
            write(&mut io, &mut cx, b"the only response");
            let yielded = Pin::new(&mut io).poll_flush(&mut cx).is_pending();
            if yielded {
                // Nothing else comes during the yield.
                assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
            }
            yields.push(yielded);
        }
        assert_eq!(io.get_ref().writes.len(), 40, "every response is written");
        // Yields at flushes 0, 2, 5, 10, 19, 36: after each fruitless one, twice as many flushes write at once.
        let at: Vec<usize> = (0..40).filter(|&i| yields[i]).collect();
        assert_eq!(at, vec![0, 2, 5, 10, 19, 36]);
        assert_eq!(waker.0.load(Ordering::SeqCst), at.len());
        // A yield that gathers another response resets the backoff: the next flush yields again.
        write(&mut io, &mut cx, b"one");
        let mut skipped = 0;
        while Pin::new(&mut io).poll_flush(&mut cx).is_ready() {
            skipped += 1;
            write(&mut io, &mut cx, b"one");
        }
        assert!(skipped <= MAX_SKIP);
        write(&mut io, &mut cx, b"two");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        write(&mut io, &mut cx, b"three");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
    }

    #[test]
    fn shutdown_sends_what_is_held() {
        let waker = std::task::Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedWrites::new(Socket::default());
        write(&mut io, &mut cx, b"last response");
        assert!(matches!(Pin::new(&mut io).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(io.get_ref().writes, vec![b"last response".to_vec()]);
    }
}
