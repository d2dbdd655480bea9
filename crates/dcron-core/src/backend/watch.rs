//! A bounded watch channel that never blocks its sender and never loses the fact that it lost
//! something.
//!
//! The seed's watcher deadlocked when more events arrived than its channel buffer held before the
//! consumer read them. Here the sender never waits: when the buffer is full the event is dropped
//! and the receiver, once it has drained the buffer, yields one `Resync` marker, after which the
//! consumer lists everything again. Backends use it to feed [`crate::WatchStream`]s.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::registry::WatchStream;
use crate::types::ResyncEvent;

/// The sending half of [`watch_channel`]. Cloneable; never blocks.
#[derive(Debug)]
pub struct WatchSender<T> {
    tx: mpsc::Sender<T>,
    overflow: Arc<AtomicBool>,
}

impl<T> Clone for WatchSender<T> {
    fn clone(&self) -> Self {
        WatchSender {
            tx: self.tx.clone(),
            overflow: self.overflow.clone(),
        }
    }
}

impl<T: ResyncEvent> WatchSender<T> {
    /// Queues an event; when the buffer is full the event is dropped and the receiver will
    /// yield a resync marker instead. Returns `false` once the receiver is gone (stop sending).
    pub fn send(&self, event: T) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.store(true, Ordering::Release);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the receiver to list again (e.g. after the backend's own watch restarted).
    pub fn resync(&self) -> bool {
        // Sent as an event so a reader waiting on an empty buffer wakes up now; when the buffer
        // is full, the overflow flag yields the marker once the reader drains it.
        self.send(T::resync())
    }

    /// Whether the receiver has been dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    overflow: Arc<AtomicBool>,
}

impl<T: ResyncEvent + Unpin> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(event)),
            Poll::Ready(None) => {
                if this.overflow.swap(false, Ordering::AcqRel) {
                    Poll::Ready(Some(T::resync()))
                } else {
                    Poll::Ready(None)
                }
            }
            // `Pending` can also mean tokio's cooperative budget ran out with events still
            // buffered: only a drained buffer may turn into the resync marker, or the consumer
            // would relist and then apply older buffered events on top.
            Poll::Pending => {
                if this.rx.is_empty() && this.overflow.swap(false, Ordering::AcqRel) {
                    Poll::Ready(Some(T::resync()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

/// Creates a watch channel buffering at most `capacity` events (at least 1).
pub fn watch_channel<T>(capacity: usize) -> (WatchSender<T>, WatchStream<T>)
where
    T: ResyncEvent + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let overflow = Arc::new(AtomicBool::new(false));
    (
        WatchSender {
            tx,
            overflow: overflow.clone(),
        },
        Box::pin(Receiver { rx, overflow }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeEvent;
    use futures::StreamExt;

    #[tokio::test]
    async fn overflow_becomes_one_resync_after_the_buffer() {
        let (tx, mut rx) = watch_channel::<NodeEvent>(4);
        for i in 0..100 {
            assert!(tx.send(NodeEvent::Delete { id: i.to_string() }));
        }
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(rx.next().await.expect("event"));
        }
        assert_eq!(got[0], NodeEvent::Delete { id: "0".into() });
        assert_eq!(got[3], NodeEvent::Delete { id: "3".into() });
        assert_eq!(got[4], NodeEvent::Resync);
        // Nothing more is pending until new events arrive.
        tx.send(NodeEvent::Delete { id: "x".into() });
        assert_eq!(
            rx.next().await.expect("event"),
            NodeEvent::Delete { id: "x".into() }
        );
        drop(tx);
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn resync_wakes_a_waiting_reader() {
        let (tx, mut rx) = watch_channel::<NodeEvent>(4);
        let reader = tokio::spawn(async move { rx.next().await });
        tokio::task::yield_now().await;
        assert!(tx.resync());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, Some(NodeEvent::Resync));
    }

    #[tokio::test]
    async fn sender_learns_the_receiver_is_gone() {
        let (tx, rx) = watch_channel::<NodeEvent>(1);
        drop(rx);
        assert!(!tx.send(NodeEvent::Resync));
        assert!(tx.is_closed());
    }
}
