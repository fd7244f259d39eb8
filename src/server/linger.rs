//! A connection's socket that closes gently. When the server ends a connection (after the last
//! answer of a graceful shutdown, say), it sends its FIN, then reads and drops what the client
//! still sends, until the client closes too or [`LINGER`] passes. Closed with unread input, a
//! socket resets the connection instead, and the reset drops what of the last answer the kernel
//! had not sent yet: a client that had pipelined more requests lost the end of an answer given.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// How long a closing connection waits for its client to close too.
const LINGER: Duration = Duration::from_secs(2);

pub struct LingeringClose {
    stream: TcpStream,
    /// Once the write side is shut: when to stop draining.
    draining: Option<Pin<Box<Sleep>>>,
}

impl LingeringClose {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            draining: None,
        }
    }
}

impl AsyncRead for LingeringClose {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringClose {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Send the FIN, then drain until the client's own FIN, an error, or [`LINGER`].
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let deadline = match &mut this.draining {
            Some(deadline) => deadline,
            None => {
                ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                this.draining.insert(Box::pin(tokio::time::sleep(LINGER)))
            }
        };
        let mut scratch = [0u8; 4096];
        loop {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut unread = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut unread) {
                Poll::Ready(Ok(())) if unread.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                // Reset or failed: nothing left to keep.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
