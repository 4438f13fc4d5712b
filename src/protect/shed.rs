//! Load shedding at `max_connections`: the connections of a listener still in their
//! opening stage (no complete ClientHello yet on a `tls` listener, no complete first
//! request head on an `http` one: `http::conn` holds the guard until then), oldest first. When the listener is full, a newly
//! accepted connection closes the oldest of them to take its place, the way a SYN cache
//! evicts its oldest embryonic connection: a flood of half-open handshakes then cannot
//! hold every slot until `timeouts.client_hello` while real clients, whose first bytes
//! arrive at once, wait in the backlog.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The opening-stage connections of one listener.
#[derive(Debug, Default)]
pub struct OpeningStage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// By accept order: the first entry is the oldest.
    waiting: BTreeMap<u64, CancellationToken>,
}

impl OpeningStage {
    /// Registers a new connection; it leaves the stage when the guard drops.
    pub fn enter(self: &Arc<Self>) -> OpeningGuard {
        let token = CancellationToken::new();
        let id = match self.inner.lock() {
            Ok(mut inner) => {
                let id = inner.next_id;
                inner.next_id += 1;
                inner.waiting.insert(id, token.clone());
                Some(id)
            }
            Err(_) => None,
        };
        OpeningGuard {
            stage: Arc::clone(self),
            id,
            token,
        }
    }

    /// Closes the oldest connection still in its opening stage; false when there is none.
    pub fn shed_oldest(&self) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        match inner.waiting.pop_first() {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Connections in their opening stage now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.waiting.len()).unwrap_or(0)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in its listener's opening stage.
#[derive(Debug)]
pub struct OpeningGuard {
    stage: Arc<OpeningStage>,
    id: Option<u64>,
    token: CancellationToken,
}

impl OpeningGuard {
    /// Cancelled when the connection was shed to make room.
    pub fn shed(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for OpeningGuard {
    fn drop(&mut self) {
        if let (Some(id), Ok(mut inner)) = (self.id, self.stage.inner.lock()) {
            inner.waiting.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_the_oldest_still_opening() {
        let stage = Arc::new(OpeningStage::default());
        let first = stage.enter();
        let second = stage.enter();
        let third = stage.enter();
        drop(first); // left the stage (its hello arrived): never shed
        assert_eq!(stage.len(), 2);
        assert!(stage.shed_oldest());
        assert!(second.shed().is_cancelled());
        assert!(!third.shed().is_cancelled());
        assert!(stage.shed_oldest());
        assert!(third.shed().is_cancelled());
        assert!(!stage.shed_oldest());
        drop((second, third));
        assert!(stage.is_empty());
    }
}
