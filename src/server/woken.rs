//! A stream polled only once it woke its task, for the `select!` branches of a session that seldom have
//! anything: its socket's reads (clients mostly listen), its timers and signals.
//!
//! A session's task is woken for each delivery, and a `select!` then polls every branch again. Each of
//! those polls went down through its layers to learn again that nothing came: for the socket, through
//! tungstenite to the socket's readiness, behind a lock; for a `SelectAll`, through its queue of woken
//! streams. With [`Woken`], a branch that did not wake the task costs an atomic load.

use futures_util::task::AtomicWaker;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// `inner`, polled only when it woke the task since its last poll, or returned an item then (more may
/// be ready without a new wake-up), or [`Woken::stir`] said so.
pub struct Woken<S> {
    inner: S,
    flag: Arc<Flag>,
    /// The waker `inner` is polled with, made once: it wakes `flag`.
    waker: Waker,
}

/// Whether the stream woke the task, and the task to wake.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S> Woken<S> {
    pub fn new(inner: S) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// The stream, to use otherwise than by polling it for items (a socket's writes).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Has the stream polled at the next poll: after a change that may have readied it without waking
    /// anyone (a stream pushed into a `SelectAll`).
    pub fn stir(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

impl<S: Stream + Unpin> Stream for Woken<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before polling, so that a wake-up while `inner` is polled is kept for the next time.
        self.flag.woken.store(false, Ordering::Release);
        let this = &mut *self;
        let next = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(&this.waker));
        if next.is_ready() {
            this.flag.woken.store(true, Ordering::Release);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt, StreamExt};
    use std::sync::atomic::AtomicUsize;

    /// A stream that counts its polls and has an item whenever `ready` is above zero.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicUsize>,
        waker: Arc<AtomicWaker>,
    }

    impl Stream for Counted {
        type Item = ();
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.waker.register(cx.waker());
            if self
                .ready
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                Poll::Ready(Some(()))
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn a_stream_is_polled_again_only_once_it_woke_the_task_or_had_an_item() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicUsize::new(0));
        let waker = Arc::new(AtomicWaker::new());
        let mut woken = Woken::new(Counted {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        });
        assert!(woken.next().now_or_never().is_none());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "the first poll polls");
        for _ in 0..10 {
            assert!(woken.next().now_or_never().is_none());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "not woken: not polled");

        // Two items at once, one wake-up: the second comes without another.
        ready.store(2, Ordering::Release);
        waker.wake();
        assert_eq!(woken.next().now_or_never(), Some(Some(())));
        assert_eq!(woken.next().now_or_never(), Some(Some(())));
        assert!(woken.next().now_or_never().is_none());
        let after = polls.load(Ordering::Relaxed);
        assert!(woken.next().now_or_never().is_none());
        assert_eq!(polls.load(Ordering::Relaxed), after);

        // Readied without a wake-up: polled once stirred.
        ready.store(1, Ordering::Release);
        assert!(woken.next().now_or_never().is_none());
        woken.stir();
        assert_eq!(woken.next().now_or_never(), Some(Some(())));

        // The task is woken through the wrapper.
        let task = tokio::spawn(async move { woken.next().await });
        tokio::task::yield_now().await;
        ready.store(1, Ordering::Release);
        waker.wake();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        assert_eq!(got.expect("woken").expect("ran"), Some(()));
    }
}
