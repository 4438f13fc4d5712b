//! Hands a client connection over once it answered an upgrade request with 101: the
//! request path takes an [`OnUpgrade`] out of the request (`on`), and after the 101 head
//! is written the connection sends its socket and the bytes it read past the request
//! through it as an [`Upgraded`] stream.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::tls::peek::ReplayStream;

/// A client stream of any kind (TCP or TLS).
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// The client's side of an upgraded connection: the bytes read past the request first,
/// then the socket.
pub type Upgraded = ReplayStream<Box<dyn ClientIo>>;

/// `stream` after `read` (bytes already read from it) as an upgraded stream.
pub fn upgraded(stream: Box<dyn ClientIo>, read: Bytes) -> Upgraded {
    ReplayStream::new(read.to_vec(), stream)
}

/// The connection did not hand itself over (no 101 was written, or it failed first).
#[derive(Debug, thiserror::Error)]
#[error("the client connection was not upgraded")]
pub struct NotUpgraded;

/// Resolves to the upgraded client stream once the 101 head is written. Lives in the
/// extensions of an upgrade request (which must be `Clone`; only one holder takes it).
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl std::fmt::Debug for OnUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnUpgrade")
    }
}

impl OnUpgrade {
    /// Waits for the hand-over.
    pub async fn upgraded(self) -> Result<Upgraded, NotUpgraded> {
        let receiver = self.0.lock().ok().and_then(|mut slot| slot.take());
        let Some(receiver) = receiver else {
            return Err(NotUpgraded);
        };
        receiver.await.map_err(|_| NotUpgraded)
    }
}

/// The connection's side: sends the stream once the 101 head is out.
pub type UpgradeSender = oneshot::Sender<Upgraded>;

/// A pair for one upgrade request.
pub fn pair() -> (UpgradeSender, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    (tx, OnUpgrade(Arc::new(Mutex::new(Some(rx)))))
}

/// Takes the upgrade hand-over out of `request` (`None`: not an upgrade request).
pub fn on<B>(request: &mut hyper::Request<B>) -> Option<OnUpgrade> {
    request.extensions_mut().remove::<OnUpgrade>()
}
