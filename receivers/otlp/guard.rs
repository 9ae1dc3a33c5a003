//! A request body as the receiver reads it, bounded in time and memory: it must arrive whole within `read_timeout`,
//! every byte buffered for an unfinished request holds a share of the receiver's request buffer (a body that finds
//! the buffer full is refused at once with the protocol's retryable answer: waiting while holding a share could
//! let a few large bodies block each other and everyone else), and a gRPC body must be exactly one message no
//! larger than `max_recv_msg_size_mib`, checked on its 5-byte frame header before the message is read.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Why a body was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Not whole within the read timeout.
    Timeout(Duration),
    /// A gRPC message larger than the limit, by its frame header.
    TooLarge { size: u64, limit: usize },
    /// More than one message in a unary call.
    SecondMessage,
    /// The receiver's request buffer is full: retry later.
    Busy { limit: usize },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Timeout(d) => write!(f, "request body not received within read_timeout ({d:?})"),
            Violation::TooLarge { size, limit } => write!(
                f,
                "message of {size} bytes is larger than max_recv_msg_size_mib ({limit} bytes)"
            ),
            Violation::SecondMessage => f.write_str("more than one message in a unary call"),
            Violation::Busy { limit } => write!(
                f,
                "the receiver is reading request_buffer_limit_mib ({limit} bytes) of other requests; retry later"
            ),
        }
    }
}

impl std::error::Error for Violation {}

/// The bytes of request bodies the receiver may buffer at once, over both protocols.
#[derive(Clone)]
pub struct RequestBuffer {
    bytes: Arc<Semaphore>,
    limit: usize,
}

impl RequestBuffer {
    pub fn new(limit: usize) -> RequestBuffer {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        RequestBuffer {
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

/// The gRPC length-prefixed framing of a unary request, followed byte by byte.
#[derive(Default)]
struct GrpcFraming {
    header: [u8; 5],
    header_len: usize,
    remaining: u64,
    messages: u32,
    limit: usize,
}

impl GrpcFraming {
    fn check(&mut self, mut chunk: &[u8]) -> Result<(), Violation> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(chunk.len());
                self.remaining -= n as u64;
                chunk = &chunk[n..];
                continue;
            }
            if self.header_len == 0 && self.messages == 1 {
                return Err(Violation::SecondMessage);
            }
            let n = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
            self.header_len += n;
            chunk = &chunk[n..];
            if self.header_len == 5 {
                let size = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]) as u64;
                if size > self.limit as u64 {
                    return Err(Violation::TooLarge {
                        size,
                        limit: self.limit,
                    });
                }
                self.header_len = 0;
                self.remaining = size;
                self.messages += 1;
            }
        }
        Ok(())
    }
}

/// A body read under the receiver's bounds; a violation ends it with `BodyError::Violation`.
pub struct GuardedBody<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    buffer: RequestBuffer,
    held: Option<OwnedSemaphorePermit>,
    /// Bytes past a limit are read only to be thrown away: they no longer take room in the buffer.
    counting: bool,
    framing: Option<GrpcFraming>,
}

impl<B> GuardedBody<B> {
    /// `grpc_limit`: check gRPC framing with this message size limit; `None` for a plain HTTP body.
    pub fn new(inner: B, timeout: Duration, buffer: RequestBuffer, grpc_limit: Option<usize>) -> Self {
        GuardedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            buffer,
            held: None,
            counting: true,
            framing: grpc_limit.map(|limit| GrpcFraming {
                limit,
                ..GrpcFraming::default()
            }),
        }
    }

    /// Gives back the room this body holds and takes no more: what is read from here on is thrown away.
    pub fn stop_counting(&mut self) {
        self.counting = false;
        self.held = None;
    }

    /// Holds `n` more bytes of the request buffer, or says it is full.
    fn reserve(&mut self, n: usize) -> Result<(), Violation> {
        if !self.counting || n == 0 {
            return Ok(());
        }
        let n = n.min(self.buffer.limit).min(u32::MAX as usize) as u32;
        let permit = self
            .buffer
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Violation::Busy {
                limit: self.buffer.limit,
            })?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

/// A body's error: the inner body's, or a violation of the bounds.
#[derive(Debug)]
pub enum BodyError {
    Inner(Box<dyn std::error::Error + Send + Sync>),
    Violation(Violation),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Inner(e) => write!(f, "{e}"),
            BodyError::Violation(v) => write!(f, "{v}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.deadline.as_mut().poll(cx).is_ready() {
            let timeout = this.timeout;
            return Poll::Ready(Some(Err(BodyError::Violation(Violation::Timeout(timeout)))));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(BodyError::Inner(e.into())))),
            Some(Ok(frame)) => frame,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let n = data.remaining();
        if let Some(framing) = &mut this.framing
            && let Err(violation) = framing.check(data.chunk())
        {
            return Poll::Ready(Some(Err(BodyError::Violation(violation))));
        }
        if let Err(violation) = this.reserve(n) {
            return Poll::Ready(Some(Err(BodyError::Violation(violation))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(sizes: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &s in sizes {
            out.push(0);
            out.extend_from_slice(&s.to_be_bytes());
            out.extend(std::iter::repeat_n(7u8, s as usize));
        }
        out
    }

    #[test]
    fn one_message_within_the_limit_passes_in_any_split() {
        let bytes = framed(&[100]);
        for split in 0..bytes.len() {
            let mut f = GrpcFraming {
                limit: 100,
                ..GrpcFraming::default()
            };
            f.check(&bytes[..split]).unwrap();
            f.check(&bytes[split..]).unwrap();
            assert_eq!(f.messages, 1);
        }
    }

    #[test]
    fn a_large_or_second_message_is_a_violation() {
        let mut f = GrpcFraming {
            limit: 99,
            ..GrpcFraming::default()
        };
        assert_eq!(
            f.check(&framed(&[100])[..5]),
            Err(Violation::TooLarge { size: 100, limit: 99 })
        );
        let mut f = GrpcFraming {
            limit: 100,
            ..GrpcFraming::default()
        };
        assert_eq!(f.check(&framed(&[10, 10])), Err(Violation::SecondMessage));
    }
}
