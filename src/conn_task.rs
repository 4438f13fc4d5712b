//! The task of one accepted connection, in two phases. The setup (the ClientHello peek,
//! routing and the backend connect, or a whole HTTP connection) runs inside the
//! connection's span, as `Instrument` would run it. When the setup hands back a
//! passthrough or TCP tunnel, the task polls that tunnel itself, outside the span: a
//! keep-alive passthrough request wakes the task twice, and entering and leaving the
//! span at each wake, with the setup's nested futures to poll through, was a fifth of
//! its user-space instructions. The tunnel's end is reported inside the span again.
//! Either phase stops at once when the shutdown grace period ends (`hard_stop`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Span;

use crate::l4::passthrough::TunnelJob;
use crate::woken::PollWhenWoken;

pin_project_lite::pin_project! {
    #[project = PhaseProj]
    enum Phase<S> {
        Setup { #[pin] setup: S },
        // Boxed: the task of every connection, HTTP ones included, is as large as its
        // largest phase, and a tunnel with its timer is several hundred bytes.
        Tunnel { job: Pin<Box<TunnelJob>> },
        Done,
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: `setup`, then the tunnel it may return. `held` (the
    /// connection's permits) lives as long as the task.
    pub struct ConnTask<S, H> {
        span: Span,
        #[pin]
        cut: PollWhenWoken<WaitForCancellationFutureOwned>,
        #[pin]
        phase: Phase<S>,
        held: H,
    }
}

impl<S, H> ConnTask<S, H>
where
    S: Future<Output = Option<TunnelJob>>,
{
    /// A task that runs `setup` in `span` and stops when `hard_stop` fires.
    pub fn new(span: Span, hard_stop: WaitForCancellationFutureOwned, held: H, setup: S) -> Self {
        ConnTask {
            span,
            cut: PollWhenWoken::new(hard_stop),
            phase: Phase::Setup { setup },
            held,
        }
    }
}

impl<S, H> Future for ConnTask<S, H>
where
    S: Future<Output = Option<TunnelJob>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let PhaseProj::Setup { setup } = this.phase.as_mut().project() {
            let _entered = this.span.enter();
            let job = match setup.poll(cx) {
                Poll::Ready(job) => job,
                Poll::Pending => {
                    if this.cut.as_mut().poll(cx).is_ready() {
                        cut_log();
                        this.phase.set(Phase::Done);
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            };
            let Some(job) = job else {
                this.phase.set(Phase::Done);
                return Poll::Ready(());
            };
            this.phase.set(Phase::Tunnel { job: Box::pin(job) });
        }
        let PhaseProj::Tunnel { job } = this.phase.as_mut().project() else {
            return Poll::Ready(());
        };
        let job = job.as_mut().project();
        let Poll::Ready(done) = job.tunnel.poll(cx) else {
            if this.cut.as_mut().poll(cx).is_ready() {
                let _entered = this.span.enter();
                cut_log();
                this.phase.set(Phase::Done);
                return Poll::Ready(());
            }
            return Poll::Pending;
        };
        let end = job.end.take();
        // The sockets close before the end is reported, as they did when the tunnel was
        // a nested future.
        this.phase.set(Phase::Done);
        if let Some(end) = end {
            let _entered = this.span.enter();
            end.finish(done);
        }
        Poll::Ready(())
    }
}

fn cut_log() {
    tracing::info!("connection cut at the end of the shutdown grace period");
}
