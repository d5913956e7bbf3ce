//! Which of a tenant's replicas takes the next request: the one with the fewest requests
//! in flight through this gateway, ties going round robin, skipping a replica whose
//! connection was refused a moment ago.
//!
//! Least-requests rather than plain round robin: a tenant's requests differ by orders of
//! magnitude (a health probe against a streamed LLM answer that lasts a minute), and
//! round robin would keep handing new requests to a replica busy with long streams. The
//! gateway is the only way in on an appliance, so its own count is the whole picture.
//! With equal counts (an idle tenant, short requests) it is round robin.
//!
//! The choice itself is the pure [`choose`]; [`Balancer`] only keeps the counts and the
//! marks, by upstream address, across route tables (a table swap keeps a replica's
//! in-flight count).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::routes::Upstream;

/// What [`choose`] knows of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub in_flight: usize,
    /// A connection to it failed less than the ejection period ago.
    pub down: bool,
    /// Already tried for this request.
    pub tried: bool,
}

/// The index of the replica to use, or None when every one was tried.
///
/// Among untried replicas, those not marked down come first; if all are down, one of
/// them is tried anyway (a stale mark must not turn every request away while the
/// replica is back). Fewest in flight wins; ties go to the first at or after `turn`
/// (mod the count), so equal replicas take turns.
pub(crate) fn choose(candidates: &[Candidate], turn: usize) -> Option<usize> {
    let n = candidates.len();
    let order = (0..n).map(|i| (turn + i) % n);
    let untried = || order.clone().filter(|&i| !candidates[i].tried);
    let pool: Vec<usize> = if untried().any(|i| !candidates[i].down) {
        untried().filter(|&i| !candidates[i].down).collect()
    } else {
        untried().collect()
    };
    // min_by_key keeps the first of equals: the one whose turn it is.
    pool.into_iter().min_by_key(|&i| candidates[i].in_flight)
}

#[derive(Debug, Default)]
struct ReplicaState {
    in_flight: usize,
    down_until: Option<Instant>,
}

impl ReplicaState {
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.down_until.is_none_or(|until| until <= now)
    }
}

/// Requests in flight and refused connections, per upstream address.
#[derive(Debug)]
pub(crate) struct Balancer {
    replicas: Mutex<HashMap<String, ReplicaState>>,
    turn: AtomicUsize,
    eject_for: Duration,
}

/// Entries kept before idle ones are dropped: more than any appliance's replicas.
const PRUNE_ABOVE: usize = 256;

impl Balancer {
    pub(crate) fn new(eject_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            replicas: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(0),
            eject_for,
        })
    }

    /// Picks one of `replicas` not in `tried` and counts a request in flight on it until
    /// the returned guard is dropped.
    pub(crate) fn pick(
        self: &Arc<Self>,
        replicas: &[Upstream],
        tried: &[usize],
    ) -> Option<(usize, InFlight)> {
        let now = Instant::now();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut states = self.replicas.lock().unwrap_or_else(PoisonError::into_inner);
        let candidates: Vec<Candidate> = replicas
            .iter()
            .enumerate()
            .map(|(i, upstream)| {
                let state = states.get(&upstream.to_string());
                Candidate {
                    in_flight: state.map_or(0, |s| s.in_flight),
                    down: state
                        .and_then(|s| s.down_until)
                        .is_some_and(|until| until > now),
                    tried: tried.contains(&i),
                }
            })
            .collect();
        let chosen = choose(&candidates, turn)?;
        if states.len() > PRUNE_ABOVE {
            states.retain(|_, state| !state.idle(now));
        }
        let key = replicas[chosen].to_string();
        states.entry(key.clone()).or_default().in_flight += 1;
        Some((
            chosen,
            InFlight {
                balancer: self.clone(),
                key,
            },
        ))
    }

    /// A connection to `upstream` failed: no new requests go there for the ejection
    /// period, unless every replica is out.
    pub(crate) fn mark_down(&self, upstream: &Upstream) {
        let mut states = self.replicas.lock().unwrap_or_else(PoisonError::into_inner);
        states.entry(upstream.to_string()).or_default().down_until =
            Some(Instant::now() + self.eject_for);
    }

    /// `upstream` answered: it is not down.
    pub(crate) fn mark_up(&self, upstream: &Upstream) {
        let mut states = self.replicas.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = states.get_mut(&upstream.to_string()) {
            state.down_until = None;
        }
    }

    #[cfg(test)]
    fn in_flight(&self, upstream: &Upstream) -> usize {
        let states = self.replicas.lock().unwrap_or_else(PoisonError::into_inner);
        states.get(&upstream.to_string()).map_or(0, |s| s.in_flight)
    }
}

/// One request counted in flight on one replica, until dropped (when its response body
/// has been sent, or it failed).
#[derive(Debug)]
pub(crate) struct InFlight {
    balancer: Arc<Balancer>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut states = self
            .balancer
            .replicas
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = states.get_mut(&self.key) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                in_flight: 0,
                down: false,
                tried: false,
            };
            n
        ]
    }

    #[test]
    fn equal_replicas_take_turns() {
        let picks: Vec<usize> = (0..6).map(|turn| choose(&idle(3), turn).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_replica_with_fewest_requests_in_flight_wins() {
        let mut replicas = idle(3);
        replicas[0].in_flight = 4;
        replicas[1].in_flight = 1;
        replicas[2].in_flight = 2;
        for turn in 0..3 {
            assert_eq!(choose(&replicas, turn), Some(1));
        }
    }

    #[test]
    fn a_replica_marked_down_is_skipped_while_another_is_up() {
        let mut replicas = idle(2);
        replicas[0].down = true;
        replicas[1].in_flight = 50;
        for turn in 0..4 {
            assert_eq!(choose(&replicas, turn), Some(1));
        }
        // All down: still tried, least loaded first, rather than refusing at once.
        replicas[1].down = true;
        assert_eq!(choose(&replicas, 1), Some(0));
    }

    #[test]
    fn a_retry_never_goes_to_a_replica_already_tried() {
        let mut replicas = idle(2);
        replicas[0].tried = true;
        assert_eq!(choose(&replicas, 0), Some(1));
        replicas[1].tried = true;
        assert_eq!(choose(&replicas, 0), None);
        assert_eq!(choose(&[], 0), None);
    }

    #[test]
    fn the_balancer_counts_requests_until_their_guards_drop_and_ejects_refusals() {
        let balancer = Balancer::new(Duration::from_secs(60));
        let (a, b) = (
            Upstream::http("10.0.0.1:8180").unwrap(),
            Upstream::http("10.0.0.2:8180").unwrap(),
        );
        let replicas = [a.clone(), b.clone()];
        let (first, guard_first) = balancer.pick(&replicas, &[]).unwrap();
        // The other one is idle, so it takes the next request whatever the turn.
        let (second, guard_second) = balancer.pick(&replicas, &[]).unwrap();
        assert_ne!(first, second);
        assert_eq!((balancer.in_flight(&a), balancer.in_flight(&b)), (1, 1));
        drop(guard_first);
        drop(guard_second);
        assert_eq!((balancer.in_flight(&a), balancer.in_flight(&b)), (0, 0));

        balancer.mark_down(&a);
        for _ in 0..4 {
            let (chosen, _guard) = balancer.pick(&replicas, &[]).unwrap();
            assert_eq!(chosen, 1);
        }
        balancer.mark_up(&a);
        let picks: Vec<usize> = (0..4)
            .map(|_| balancer.pick(&replicas, &[]).unwrap().0)
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }
}
