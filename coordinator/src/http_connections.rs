//! The HTTP listener's open connections and what each is doing: how many requests it has in flight and
//! since when it has been idle. A connection with nothing in flight is closed once it has been idle too
//! long (before its first request that is the header deadline, so a socket that never sends a byte, or
//! sends an HTTP/2 preface and then nothing, cannot hold its place), and at the connection limit the
//! longest-idle one makes room for a new one: idle sockets can never lock out a probe of `/health`.
//! Only connections busy with requests count against the limit in the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// One connection's activity, as its requests start and end.
#[derive(Debug, Clone, Copy)]
struct Activity {
    in_flight: usize,
    /// Requests started on it so far: before the first, the header deadline is its idle limit.
    started: u64,
    /// When it last had nothing in flight (or was accepted).
    idle_since: Instant,
}

struct Entry {
    activity: watch::Receiver<Activity>,
    evict: Arc<Notify>,
}

/// The open connections, at most `limit` of them.
pub struct OpenConnections {
    limit: usize,
    open: Mutex<Open>,
    /// Woken when the last connection closes.
    all_closed: Notify,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

impl OpenConnections {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, open: Mutex::new(Open::default()), all_closed: Notify::new() })
    }

    /// Takes a place for a new connection: a free one, or the place of the connection idle the longest
    /// (told to close). None when every place is busy with requests.
    pub fn take_place(self: &Arc<Self>) -> Option<Connection> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.entries.len() >= self.limit {
            let idlest = open
                .entries
                .iter()
                .filter_map(|(id, entry)| {
                    let activity = *entry.activity.borrow();
                    (activity.in_flight == 0).then_some((activity.idle_since, *id))
                })
                .min()?;
            if let Some(evicted) = open.entries.remove(&idlest.1) {
                evicted.evict.notify_one();
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let (activity, watched) = watch::channel(Activity { in_flight: 0, started: 0, idle_since: Instant::now() });
        let evict = Arc::new(Notify::new());
        open.entries.insert(id, Entry { activity: watched, evict: Arc::clone(&evict) });
        Some(Connection { id, owner: Arc::clone(self), activity: Arc::new(activity), evict })
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once every connection has closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// A place among the open connections, given up when dropped.
pub struct Connection {
    id: u64,
    owner: Arc<OpenConnections>,
    activity: Arc<watch::Sender<Activity>>,
    evict: Arc<Notify>,
}

impl Connection {
    /// Counts a request in flight until the guard is dropped (with the response's body, for a stream).
    pub fn request_started(&self) -> RequestInFlight {
        self.activity.send_modify(|activity| {
            activity.in_flight += 1;
            activity.started += 1;
        });
        RequestInFlight { activity: Arc::clone(&self.activity) }
    }

    /// Whether a request is in flight now.
    pub fn busy(&self) -> bool {
        self.activity.borrow().in_flight > 0
    }

    /// Resolves when the connection has had nothing in flight for its limit: `first_request` until a
    /// request has started on it, `between_requests` after.
    pub async fn idle_too_long(&self, first_request: Duration, between_requests: Duration) {
        let mut activity = self.activity.subscribe();
        loop {
            let now = *activity.borrow_and_update();
            if now.in_flight > 0 {
                let _ = activity.changed().await;
                continue;
            }
            let limit = if now.started == 0 { first_request } else { between_requests };
            tokio::select! {
                () = tokio::time::sleep_until(now.idle_since + limit) => return,
                _ = activity.changed() => {}
            }
        }
    }

    /// Resolves when a new connection took this one's place (it was the idlest at the limit).
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.entries.remove(&self.id);
        if open.entries.is_empty() {
            self.owner.all_closed.notify_waiters();
        }
    }
}

/// One request in flight on a connection.
pub struct RequestInFlight {
    activity: Arc<watch::Sender<Activity>>,
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.activity.send_modify(|activity| {
            activity.in_flight -= 1;
            if activity.in_flight == 0 {
                activity.idle_since = Instant::now();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_longest_idle_connection_makes_room_and_busy_ones_never_do() {
        let open = OpenConnections::new(2);
        let first = open.take_place().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = open.take_place().unwrap();
        let _request = second.request_started();
        let third = open.take_place().expect("the idle first connection makes room");
        assert_eq!(open.len(), 2);
        tokio::time::timeout(Duration::from_millis(1), first.evicted()).await.expect("the first was told to close");
        let _busy = third.request_started();
        assert!(open.take_place().is_none(), "every place is busy with a request");
        drop((first, second, third));
        assert!(open.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_limits_count_from_the_last_request_and_never_while_one_is_in_flight() {
        let open = OpenConnections::new(4);
        let connection = open.take_place().unwrap();
        let started = Instant::now();
        connection.idle_too_long(Duration::from_secs(2), Duration::from_secs(60)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2), "before a first request: the header deadline");

        let request = connection.request_started();
        let waiting =
            tokio::time::timeout(Duration::from_secs(600), connection.idle_too_long(Duration::from_secs(2), Duration::from_secs(60)));
        tokio::pin!(waiting);
        tokio::select! {
            _ = &mut waiting => panic!("a connection with a request in flight is never idle"),
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
        let ended = Instant::now();
        drop(request);
        waiting.await.expect("idle once the request ended");
        assert_eq!(ended.elapsed(), Duration::from_secs(60));
    }
}
