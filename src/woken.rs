//! [`PollWhenWoken`]: a future that polls its inner future only after that future
//! asked to be woken. A connection task races its work against signals that almost
//! never fire (shutdown, the grace period's end, shedding); `tokio::select!` polls every
//! branch each time the task wakes, which is several times per request, and a
//! cancellation token's future takes two locks per poll. Behind this wrapper those
//! polls cost one atomic swap until the signal really fires. A tunnel wraps each of its
//! two directions and its idle timer the same way (`l4/splice.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pin_project_lite::pin_project! {
    /// Polls `F` on the first poll and then only once `F`'s own waker fired.
    pub struct PollWhenWoken<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        polled_once: bool,
    }
}

/// Set when the inner future's waker fires; wakes the task that polls the wrapper.
#[derive(Default)]
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> PollWhenWoken<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        PollWhenWoken {
            inner,
            signal: Arc::new(Signal::default()),
            polled_once: false,
        }
    }
}

impl<F> PollWhenWoken<F> {
    /// The inner future, to change it (a timer reset to a new deadline): it is polled at
    /// the next poll whether or not its waker fired, so that it can register again.
    pub fn rearm(self: Pin<&mut Self>) -> Pin<&mut F> {
        let this = self.project();
        this.signal.woken.store(true, Ordering::Release);
        this.inner
    }
}

impl<F: Future> Future for PollWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.signal.task.register(cx.waker());
        if *this.polled_once && !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        *this.polled_once = true;
        let waker = Waker::from(Arc::clone(this.signal));
        let mut inner_cx = Context::from_waker(&waker);
        this.inner.poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio_util::sync::CancellationToken;

    /// Counts its polls; ready once `ready` is set, waking through the last waker seen.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            if let Ok(mut slot) = self.waker.lock() {
                *slot = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut wrapped = PollWhenWoken::new(Counted {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
            waker: Arc::clone(&inner_waker),
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // The task woke for something else: the inner future is left alone.
        for _ in 0..5 {
            assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own waker fires: polled again, and ready.
        ready.store(true, Ordering::SeqCst);
        let waker = inner_waker.lock().unwrap().take().unwrap();
        waker.wake();
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_rearmed_future_is_polled_at_the_next_poll() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut wrapped = Box::pin(PollWhenWoken::new(Counted {
            polls: Arc::clone(&polls),
            ready: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(std::sync::Mutex::new(None)),
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Changed from outside (a timer reset): polled once more without a wake, then
        // left alone again.
        let _inner = wrapped.as_mut().rearm();
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cancellation_reaches_the_task_that_waits() {
        let token = CancellationToken::new();
        let waiting = tokio::spawn(PollWhenWoken::new(token.clone().cancelled_owned()));
        tokio::task::yield_now().await;
        token.cancel();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(matches!(done, Ok(Ok(()))), "the cancellation was not seen");
    }

    #[tokio::test]
    async fn an_already_cancelled_token_completes_at_the_first_poll() {
        let token = CancellationToken::new();
        token.cancel();
        PollWhenWoken::new(token.cancelled()).await;
    }
}
