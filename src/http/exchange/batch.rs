//! Batched backend sends, for pools with `batch_sends: true` (off by default: it costs
//! p99, docs/config.md). A body-less request on a reused pooled connection is queued
//! instead of written at once; one flusher task per pool writes every queued request
//! after the worker has run the tasks that were ready with it (the flusher waits with
//! tokio's deferred wake-up, as `yield_now` does). A backend then wakes once for a batch
//! of requests instead of once per request: on a VM each wake-up of an idle peer CPU is
//! an inter-processor interrupt, paid by the sender.
//!
//! The owner of a queued send keeps waiting for the response on its own socket; the
//! flusher wakes it only when the write did not go out whole (the owner then writes the
//! rest itself, or reads the backend's close). The flusher writes through a duplicate
//! of the connection's descriptor, made once per pooled connection.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

use bytes::Bytes;
use tokio::sync::Notify;

/// Queued sends of one pool, and the signal that wakes its flusher.
#[derive(Debug, Default)]
pub struct SendBatcher {
    queue: Mutex<Vec<Arc<QueuedSend>>>,
    wake: Arc<Notify>,
    started: AtomicBool,
}

/// One request head waiting for the flusher, shared with the exchange that queued it.
#[derive(Debug)]
pub struct QueuedSend {
    state: Mutex<SendState>,
}

/// Where a queued send is.
#[derive(Debug)]
pub enum SendState {
    /// Waiting for the flusher: the head, the descriptor to write it on (released as
    /// soon as the send is written or cancelled), and the owner's waker, to call if the
    /// write falls short.
    Queued {
        head: Bytes,
        writer: Arc<std::net::TcpStream>,
        owner: Option<Waker>,
    },
    /// The flusher wrote this many bytes of the head (all, or what the socket took).
    Written(usize),
    /// The write failed: the owner reads the backend's close to learn why.
    Failed(io::ErrorKind),
    /// The owner went away first; nothing is written.
    Cancelled,
}

impl SendBatcher {
    /// An empty batcher; its flusher starts with the first queued send.
    pub fn new() -> Arc<Self> {
        Arc::new(SendBatcher::default())
    }

    /// Queues `head` to be written on `writer`. `None` outside a tokio runtime (the
    /// caller then writes it itself).
    pub fn queue(
        self: &Arc<Self>,
        writer: Arc<std::net::TcpStream>,
        head: Bytes,
    ) -> Option<Arc<QueuedSend>> {
        if !self.started.load(Ordering::Acquire) {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            if !self.started.swap(true, Ordering::AcqRel) {
                runtime.spawn(flusher(Arc::downgrade(self), Arc::clone(&self.wake)));
            }
        }
        let send = Arc::new(QueuedSend {
            state: Mutex::new(SendState::Queued {
                head,
                writer,
                owner: None,
            }),
        });
        let Ok(mut queue) = self.queue.lock() else {
            return None;
        };
        if queue.is_empty() {
            self.wake.notify_one();
        }
        queue.push(Arc::clone(&send));
        Some(send)
    }

    /// Writes every queued send; wakes the owners whose write fell short.
    fn flush(&self) {
        let batch = match self.queue.lock() {
            Ok(mut queue) => std::mem::take(&mut *queue),
            Err(_) => return,
        };
        for send in batch {
            send.write();
        }
    }
}

impl QueuedSend {
    fn write(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let SendState::Queued {
            head,
            writer,
            owner,
        } = &mut *state
        else {
            return;
        };
        let (next, whole) = match (&**writer).write(head) {
            Ok(n) => (SendState::Written(n), n == head.len()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => (SendState::Written(0), false),
            Err(err) => (SendState::Failed(err.kind()), false),
        };
        let owner = owner.take();
        *state = next;
        drop(state);
        if !whole {
            if let Some(owner) = owner {
                owner.wake();
            }
        }
    }

    /// What the owner should do now. While queued, `waker` is kept to be woken if the
    /// write falls short.
    pub fn poll_state(&self, waker: &Waker) -> Option<Result<usize, io::ErrorKind>> {
        let Ok(mut state) = self.state.lock() else {
            return Some(Err(io::ErrorKind::Other));
        };
        match &mut *state {
            SendState::Queued { owner, .. } => {
                if !owner.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *owner = Some(waker.clone());
                }
                None
            }
            SendState::Written(n) => Some(Ok(*n)),
            SendState::Failed(kind) => Some(Err(*kind)),
            SendState::Cancelled => Some(Err(io::ErrorKind::Other)),
        }
    }

    /// The owner no longer waits: a send still queued is dropped (with its descriptor).
    /// True when it was still queued, so nothing of it went out.
    pub fn cancel(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if matches!(*state, SendState::Queued { .. }) {
            *state = SendState::Cancelled;
            return true;
        }
        false
    }
}

/// Flushes a pool's queued sends once per batch, until the pool's client is dropped.
async fn flusher(batcher: Weak<SendBatcher>, wake: Arc<Notify>) {
    // If this task ends while the pool lives (its runtime shutting down), the next
    // queued send starts another.
    let _restart = RestartOnDrop(batcher.clone());
    loop {
        wake.notified().await;
        // Let every task that is ready now queue its send first.
        tokio::task::yield_now().await;
        let Some(batcher) = batcher.upgrade() else {
            return;
        };
        batcher.flush();
    }
}

struct RestartOnDrop(Weak<SendBatcher>);

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if let Some(batcher) = self.0.upgrade() {
            batcher.started.store(false, Ordering::Release);
        }
    }
}

impl Drop for SendBatcher {
    fn drop(&mut self) {
        // Wake the flusher so it sees the batcher gone and ends.
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (Arc<TcpStream>, TcpStream) {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            panic!("bind");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("addr");
        };
        let Ok(client) = TcpStream::connect(addr) else {
            panic!("connect");
        };
        let Ok((server, _)) = listener.accept() else {
            panic!("accept");
        };
        assert!(client.set_nonblocking(true).is_ok());
        (Arc::new(client), server)
    }

    #[tokio::test]
    async fn a_queued_send_is_written_by_the_flusher() {
        let batcher = SendBatcher::new();
        let (writer, mut server) = pair();
        let Some(send) = batcher.queue(writer, Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"))
        else {
            panic!("not queued");
        };
        let waker = Waker::noop();
        assert_eq!(send.poll_state(waker), None);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while send.poll_state(waker).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never flushed");
            tokio::task::yield_now().await;
        }
        assert_eq!(send.poll_state(waker), Some(Ok(18)));
        let mut got = [0u8; 18];
        assert!(server.read_exact(&mut got).is_ok());
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_cancelled_send_is_not_written() {
        let batcher = SendBatcher::new();
        let (writer, server) = pair();
        let Some(send) = batcher.queue(writer, Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"))
        else {
            panic!("not queued");
        };
        assert!(send.cancel());
        assert!(!send.cancel());
        batcher.flush();
        assert_eq!(
            send.poll_state(Waker::noop()),
            Some(Err(io::ErrorKind::Other))
        );
        // Cancelling released the only descriptor: the peer reads a close, no request.
        let mut got = [0u8; 4];
        let read = (&server).read(&mut got);
        assert!(matches!(read, Ok(0)), "{read:?}");
    }

    #[tokio::test]
    async fn a_failed_write_wakes_the_owner() {
        let batcher = SendBatcher::new();
        let (writer, server) = pair();
        assert!(writer.shutdown(std::net::Shutdown::Write).is_ok());
        drop(server);
        let Some(send) = batcher.queue(writer, Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"))
        else {
            panic!("not queued");
        };
        let woken = Arc::new(AtomicBool::new(false));
        let waker = Waker::from(Arc::new(Flag(Arc::clone(&woken))));
        assert_eq!(send.poll_state(&waker), None);
        batcher.flush();
        assert!(woken.load(Ordering::SeqCst));
        assert!(matches!(send.poll_state(&waker), Some(Err(_))));
    }

    struct Flag(Arc<AtomicBool>);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
