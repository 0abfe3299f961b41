//! A plugin's stdout and stderr, turned into lines of the agent's log
//! tagged with the plugin's name. Bounded: a line is cut at 4 KiB and a
//! plugin can print at most [`MAX_LINES_PER_CALL`] lines per call. Control
//! characters (a carriage return, an escape) are escaped: what a plugin
//! prints never starts a log line of its own or drives a terminal.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

const MAX_LINE: usize = 4096;
pub const MAX_LINES_PER_CALL: u32 = 100;

/// One of a plugin's output streams.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<Sink>>,
}

struct Sink {
    plugin: Arc<str>,
    stream: &'static str,
    partial: Vec<u8>,
    lines: Arc<std::sync::atomic::AtomicU32>,
}

impl GuestOutput {
    /// `lines` counts lines of every stream of the plugin; the runner resets
    /// it before each call.
    pub fn new(
        plugin: Arc<str>,
        stream: &'static str,
        lines: Arc<std::sync::atomic::AtomicU32>,
    ) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(Sink {
                plugin,
                stream,
                partial: Vec::new(),
                lines,
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut sink = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        sink.partial.extend_from_slice(bytes);
        while let Some(end) = sink.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = sink.partial.drain(..=end).collect();
            sink.emit(&line[..line.len() - 1]);
        }
        if sink.partial.len() >= MAX_LINE {
            let line = std::mem::take(&mut sink.partial);
            sink.emit(&line);
        }
    }
}

impl Sink {
    fn emit(&mut self, line: &[u8]) {
        use std::sync::atomic::Ordering;
        let n = self.lines.fetch_add(1, Ordering::Relaxed);
        if n == MAX_LINES_PER_CALL {
            tracing::warn!(plugin = %self.plugin, "plugin output exceeds {MAX_LINES_PER_CALL} lines in one call; dropping the rest");
        }
        if n >= MAX_LINES_PER_CALL {
            return;
        }
        let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        let line = crate::status::escape(line.trim_end_matches('\r'));
        tracing::info!(plugin = %self.plugin, stream = %self.stream, "{line}");
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
