//! Leader election on a `coordination.k8s.io/v1` Lease, after client-go's `leaderelection`:
//! optimistic concurrency on the Lease's resourceVersion, expiry judged on this replica's monotonic
//! clock from when it saw the record change (never by comparing clocks across machines).
//!
//! Beyond client-go, a standby watches the Lease, so a release (or a deletion) is acted upon at
//! once instead of at the next expiry; a leader stops leading once its renewals have failed for
//! `renew_deadline`, before the others may consider its lease expired; and a graceful shutdown
//! flips `is_leader` to false first, then releases the Lease.
//!
//! The decisions are made by [`Candidate`] and [`decide`], without I/O; [`start`] runs the I/O
//! around them.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// The Lease this replica competes for, and its timing.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's `holderIdentity`.
    pub identity: String,
    /// `leaseDurationSeconds` written into the Lease (rounded up to whole seconds): how long the
    /// others wait after the last change they saw before taking over.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// The leader stops leading when its renewals have failed for this long; shorter than
    /// `duration`, so that it stops before its lease can expire at the others.
    pub renew_deadline: Duration,
}

impl LeaseSettings {
    /// The defaults used by `userns-labeler run`: a 15 s lease renewed every 2 s, given up after
    /// 10 s without a successful renewal.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseSettings {
        LeaseSettings {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason: &str| Err(LeaderError::Settings(reason.to_string()));
        if self.identity.is_empty() {
            return invalid("the identity is empty");
        }
        if self.renew_every.is_zero() {
            return invalid("renew_every is zero");
        }
        if self.renew_deadline <= self.renew_every {
            return invalid("renew_deadline must be longer than renew_every");
        }
        if self.duration <= self.renew_deadline {
            return invalid("the lease duration must be longer than renew_deadline");
        }
        if self.duration_seconds() > i32::MAX as u64 {
            return invalid("the lease duration is too long");
        }
        Ok(())
    }

    /// `duration` rounded up to whole seconds, as the Lease holds it.
    fn duration_seconds(&self) -> u64 {
        self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0)
    }
}

/// A running election: the leader flag and the task that drives it.
pub struct Leadership {
    /// `true` while this replica holds the Lease and may write.
    pub is_leader: watch::Receiver<bool>,
    /// Ends after `shutdown` (having released the Lease if it held it) with `Ok`, or with `Err`
    /// on a non-recoverable error. Transient API errors are retried with backoff.
    pub task: JoinHandle<Result<(), LeaderError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid lease settings: {0}")]
    Settings(String),
    #[error("{operation} Lease {lease}: {source}")]
    Api {
        operation: &'static str,
        lease: String,
        source: kube::Error,
    },
}

/// Starts competing for the Lease. Must be called within a Tokio runtime.
pub fn start(
    client: kube::Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> Leadership {
    let (sender, is_leader) = watch::channel(false);
    let task = tokio::spawn(async move {
        settings.validate()?;
        Elector::new(client, settings, sender).run(shutdown).await
    });
    Leadership { is_leader, task }
}

// ---------------------------------------------------------------------------------------------
// Decisions, without I/O.

/// A Lease as this replica last saw it, and when it saw that record change.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub lease: Lease,
    /// When this replica first saw the current spec (for its own writes: when it sent them).
    pub at: Instant,
}

impl Observed {
    /// The holder, if any: an absent or empty `holderIdentity` means released.
    pub fn holder(&self) -> Option<&str> {
        self.lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty())
    }

    /// When the others may take the lease over, unless they see it change before.
    pub fn expires_at(&self) -> Instant {
        let seconds = self
            .lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .unwrap_or(0)
            .max(0);
        self.at + Duration::from_secs(seconds as u64)
    }
}

/// What this replica knows of the Lease.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseView {
    /// Not read yet, or our last write conflicted: read it.
    Unknown,
    /// It does not exist.
    Absent,
    Present(Box<Observed>),
}

/// The next step towards holding the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the Lease.
    Fetch,
    /// Create it, held by us.
    Create,
    /// Take it over (released or expired): replace it, `leaseTransitions` + 1.
    Acquire,
    /// Renew our hold: replace it with a new `renewTime`.
    Renew,
    /// Nothing to do until then (the next renewal, or the expiry of another's hold), unless the
    /// Lease changes.
    WaitUntil(Instant),
}

/// What to do about the Lease `view` at `now`, for the replica `me` (`leading` if it leads).
pub fn decide(
    view: &LeaseView,
    leading: bool,
    now: Instant,
    me: &str,
    renew_every: Duration,
) -> Action {
    let observed = match view {
        LeaseView::Unknown => return Action::Fetch,
        LeaseView::Absent => return Action::Create,
        LeaseView::Present(observed) => observed,
    };
    match observed.holder() {
        None => Action::Acquire,
        Some(holder) if holder == me => {
            // Ours (perhaps from a previous process of the same name): renew at once to lead.
            let due = observed.at + renew_every;
            if !leading || now >= due {
                Action::Renew
            } else {
                Action::WaitUntil(due)
            }
        }
        Some(_) => {
            let expiry = observed.expires_at();
            if now >= expiry {
                Action::Acquire
            } else {
                Action::WaitUntil(expiry)
            }
        }
    }
}

/// The Lease to write for `me` to hold it: created when `current` is `None`, renewed when it is
/// already ours, else taken over (`acquireTime` now, `leaseTransitions` + 1).
pub fn held(current: Option<&Lease>, settings: &LeaseSettings, now: Timestamp) -> Lease {
    let duration = Some(settings.duration_seconds() as i32);
    let Some(current) = current else {
        return Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: duration,
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
    };
    let mut lease = current.clone();
    lease.metadata.managed_fields = None;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(settings.identity.as_str());
    if !ours {
        spec.holder_identity = Some(settings.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    } else if spec.acquire_time.is_none() {
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = duration;
    lease
}

/// `current` released: no holder, no acquire or renew time, a 1 s duration (as client-go's
/// `ReleaseOnCancel` writes; kube-lease-manager cleared the same fields), transitions kept.
pub fn released(current: &Lease) -> Lease {
    let mut lease = current.clone();
    lease.metadata.managed_fields = None;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = None;
    spec.lease_duration_seconds = Some(1);
    lease
}

/// Whether `lease` is a later version than `than`. The API server's resourceVersions are etcd
/// revisions, decimal integers that only grow; when one does not parse, `lease` is taken as
/// newer (safe: at worst a leader stops leading early, or a standby reads the Lease again).
fn is_newer(lease: &Lease, than: &Lease) -> bool {
    let version = |l: &Lease| l.metadata.resource_version.as_deref()?.parse::<u64>().ok();
    match (version(lease), version(than)) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

/// A change of this replica's leadership, to publish and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Started,
    Stopped(&'static str),
    /// Stopped for a graceful shutdown.
    Resigned,
}

/// The elector's state without I/O: what it knows of the Lease, whether it leads and until
/// when, and when to retry after a failure.
#[derive(Debug)]
pub struct Candidate {
    settings: LeaseSettings,
    view: LeaseView,
    /// The last record seen, kept while the view is `Unknown`: versions older than it are
    /// ignored, and an unchanged record keeps its observation time.
    last_seen: Option<Observed>,
    /// While leading: `renew_deadline` after the last successful write was sent.
    leading_until: Option<Instant>,
    retry_at: Option<Instant>,
    /// Whether the watch's current initial listing has shown the Lease.
    listed: bool,
}

impl Candidate {
    pub fn new(settings: LeaseSettings) -> Candidate {
        Candidate {
            settings,
            view: LeaseView::Unknown,
            last_seen: None,
            leading_until: None,
            retry_at: None,
            listed: false,
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading_until.is_some()
    }

    /// While leading: when leadership lapses unless a renewal succeeds before.
    pub fn leading_until(&self) -> Option<Instant> {
        self.leading_until
    }

    pub fn view(&self) -> &LeaseView {
        &self.view
    }

    /// The next step at `now`. A `WaitUntil` ends no later than leadership would lapse.
    pub fn next_action(&self, now: Instant) -> Action {
        let action = match self.retry_at {
            Some(at) if at > now => Action::WaitUntil(at),
            _ => decide(
                &self.view,
                self.is_leading(),
                now,
                &self.settings.identity,
                self.settings.renew_every,
            ),
        };
        match (action, self.leading_until) {
            (Action::WaitUntil(at), Some(until)) => Action::WaitUntil(at.min(until)),
            (action, _) => action,
        }
    }

    /// Stops leading once the last successful renewal was sent `renew_deadline` ago.
    pub fn check_deadline(&mut self, now: Instant) -> Option<Transition> {
        match self.leading_until {
            Some(until) if now >= until => {
                self.leading_until = None;
                Some(Transition::Stopped(
                    "no successful renewal within the renew deadline",
                ))
            }
            _ => None,
        }
    }

    /// Our write, sent at `sent`, succeeded: we hold `lease`.
    pub fn wrote(&mut self, lease: Lease, sent: Instant) -> Option<Transition> {
        let was_leading = self.is_leading();
        let observed = Observed { lease, at: sent };
        self.view = LeaseView::Present(Box::new(observed.clone()));
        self.last_seen = Some(observed);
        self.leading_until = Some(sent + self.settings.renew_deadline);
        self.retry_at = None;
        (!was_leading).then_some(Transition::Started)
    }

    /// An authoritative read at `now` (`None`: not found).
    pub fn read(&mut self, lease: Option<Lease>, now: Instant) -> Option<Transition> {
        self.retry_at = None;
        match lease {
            Some(lease) => self.see(lease, now),
            None => self.see_absent(),
        }
    }

    /// Our write conflicted (or the Lease was created meanwhile): read it before acting again.
    pub fn conflicted(&mut self) {
        self.retry_at = None;
        self.view = LeaseView::Unknown;
    }

    /// Our replace found no Lease.
    pub fn not_found(&mut self) -> Option<Transition> {
        self.retry_at = None;
        self.see_absent()
    }

    /// A call failed transiently at `now`: retry after `delay`.
    pub fn failed(&mut self, now: Instant, delay: Duration) {
        self.retry_at = Some(now + delay);
    }

    /// An event of the watch on the Lease, at `now`.
    pub fn watched(&mut self, event: watcher::Event<Lease>, now: Instant) -> Option<Transition> {
        match event {
            watcher::Event::Init => {
                self.listed = false;
                None
            }
            watcher::Event::InitApply(lease) => {
                self.listed = true;
                self.see_if_newer(lease, now)
            }
            watcher::Event::Apply(lease) => self.see_if_newer(lease, now),
            // A listing without the Lease cannot be ordered against our own writes: read it.
            watcher::Event::InitDone if !self.listed => {
                self.view = LeaseView::Unknown;
                None
            }
            watcher::Event::InitDone => None,
            watcher::Event::Delete(lease) => match &self.last_seen {
                Some(seen) if !is_newer(&lease, &seen.lease) => None,
                _ => self.see_absent(),
            },
        }
    }

    fn see_if_newer(&mut self, lease: Lease, now: Instant) -> Option<Transition> {
        match &self.last_seen {
            Some(seen) if !is_newer(&lease, &seen.lease) => None,
            _ => self.see(lease, now),
        }
    }

    fn see(&mut self, lease: Lease, now: Instant) -> Option<Transition> {
        // As client-go: the expiry clock restarts only when the record changes.
        let at = match &self.last_seen {
            Some(seen) if seen.lease.spec == lease.spec => seen.at,
            _ => now,
        };
        let observed = Observed { lease, at };
        let ours = observed.holder() == Some(self.settings.identity.as_str());
        self.view = LeaseView::Present(Box::new(observed.clone()));
        self.last_seen = Some(observed);
        if ours {
            None
        } else {
            self.stop("the lease was released or taken over")
        }
    }

    fn see_absent(&mut self) -> Option<Transition> {
        self.view = LeaseView::Absent;
        self.last_seen = None;
        self.stop("the lease was deleted")
    }

    fn stop(&mut self, reason: &'static str) -> Option<Transition> {
        self.leading_until
            .take()
            .map(|_| Transition::Stopped(reason))
    }

    /// Gives up leading (on shutdown); the Lease is released next.
    pub fn resign(&mut self) -> Option<Transition> {
        self.leading_until.take().map(|_| Transition::Resigned)
    }

    /// The Lease to write to release it, if the view says we hold it.
    pub fn release_request(&self) -> Option<Lease> {
        match &self.view {
            LeaseView::Present(o) if o.holder() == Some(self.settings.identity.as_str()) => {
                Some(released(&o.lease))
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// I/O.

/// The result of one API call.
enum Outcome {
    Read(Option<Lease>),
    Wrote(Lease),
}

struct Elector {
    api: Api<Lease>,
    candidate: Candidate,
    sender: watch::Sender<bool>,
    retry_backoff: ExponentialBuilder,
    backoff: ExponentialBackoff,
    /// Longest wait for one API call.
    request_timeout: Duration,
}

impl Elector {
    fn new(client: kube::Client, settings: LeaseSettings, sender: watch::Sender<bool>) -> Elector {
        let retry_backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(settings.renew_every)
            .with_jitter()
            .without_max_times();
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            request_timeout: settings.renew_deadline / 2,
            candidate: Candidate::new(settings),
            sender,
            backoff: retry_backoff.build(),
            retry_backoff,
        }
    }

    fn settings(&self) -> &LeaseSettings {
        &self.candidate.settings
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<(), LeaderError> {
        let name = self.settings().name.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        // Quick reconnects: the Lease is one small object, and a missed release costs a lease.
        let events = watcher(self.api.clone(), config)
            .backoff(watcher::ExponentialBackoff::from(self.retry_backoff));
        futures::pin_mut!(events);
        info!(lease = %name, identity = %self.settings().identity, "competing for the lease");
        loop {
            let now = Instant::now();
            if let Some(transition) = self.candidate.check_deadline(now) {
                self.publish(transition);
            }
            let action = self.candidate.next_action(now);
            if let Action::WaitUntil(at) = action {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    Some(event) = events.next() => match event {
                        Ok(event) => {
                            if let Some(t) = self.candidate.watched(event, Instant::now()) {
                                self.publish(t);
                            }
                        }
                        Err(error) => warn!(%error, "watch on the lease failed; retrying"),
                    },
                    () = tokio::time::sleep_until(at) => {}
                }
                continue;
            }
            // One call, abandoned on shutdown, after the request timeout, or when leadership
            // lapses (the loop then stops leading).
            let give_up = self
                .candidate
                .leading_until()
                .map_or(now + self.request_timeout, |until| {
                    until.min(now + self.request_timeout)
                });
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                result = tokio::time::timeout_at(give_up, self.call(action)) => result,
            };
            match result {
                Ok(result) => self.handle(action, now, result)?,
                Err(_elapsed) => self.retry(action, "timed out"),
            }
        }
        self.resign().await;
        Ok(())
    }

    async fn call(&self, action: Action) -> Result<Outcome, kube::Error> {
        let settings = self.settings();
        let now = Timestamp::now();
        match action {
            // Never called with `WaitUntil`; a read would be harmless.
            Action::Fetch | Action::WaitUntil(_) => {
                self.api.get_opt(&settings.name).await.map(Outcome::Read)
            }
            Action::Create => {
                let lease = held(None, settings, now);
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(Outcome::Wrote)
            }
            Action::Acquire | Action::Renew => {
                let current = match self.candidate.view() {
                    LeaseView::Present(o) => Some(&o.lease),
                    _ => None,
                };
                let lease = held(current, settings, now);
                self.api
                    .replace(&settings.name, &PostParams::default(), &lease)
                    .await
                    .map(Outcome::Wrote)
            }
        }
    }

    /// Applies a call's result; `Err` only for an error no retry can fix.
    fn handle(
        &mut self,
        action: Action,
        sent: Instant,
        result: Result<Outcome, kube::Error>,
    ) -> Result<(), LeaderError> {
        let transition = match result {
            Ok(Outcome::Read(lease)) => self.candidate.read(lease, Instant::now()),
            Ok(Outcome::Wrote(lease)) => {
                self.backoff = self.retry_backoff.build();
                self.candidate.wrote(lease, sent)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(?action, reason = %status.reason, "lease changed meanwhile; reading it");
                self.candidate.conflicted();
                None
            }
            Err(kube::Error::Api(status)) if status.code == 404 && action != Action::Create => {
                self.candidate.not_found()
            }
            Err(kube::Error::Api(status)) if matches!(status.code, 400 | 405 | 422) => {
                let operation = match action {
                    Action::Create => "creating",
                    Action::Acquire | Action::Renew => "replacing",
                    Action::Fetch | Action::WaitUntil(_) => "reading",
                };
                error!(?action, error = %status, "the API server refuses the lease request");
                return Err(LeaderError::Api {
                    operation,
                    lease: format!("{}/{}", self.settings().namespace, self.settings().name),
                    source: kube::Error::Api(status),
                });
            }
            Err(error) => {
                self.retry(action, &error.to_string());
                None
            }
        };
        if let Some(transition) = transition {
            self.publish(transition);
        }
        Ok(())
    }

    fn retry(&mut self, action: Action, error: &str) {
        let delay = self.backoff.next().unwrap_or(self.settings().renew_every);
        warn!(?action, %error, retry_in = ?delay, "lease request failed");
        self.candidate.failed(Instant::now(), delay);
    }

    fn publish(&self, transition: Transition) {
        let lease = &self.settings().name;
        match transition {
            Transition::Started => {
                self.sender.send_replace(true);
                info!(%lease, is_leader = true, "leading: this replica holds the lease");
            }
            Transition::Stopped(reason) => {
                self.sender.send_replace(false);
                warn!(%lease, is_leader = false, reason, "no longer leading");
            }
            Transition::Resigned => {
                self.sender.send_replace(false);
                info!(%lease, is_leader = false, "no longer leading: shutting down");
            }
        }
    }

    /// On shutdown: stop leading first, then release the Lease if we hold it, so that a standby
    /// takes over at once. A failed release is logged: the Lease then expires by itself.
    async fn resign(mut self) {
        if let Some(transition) = self.candidate.resign() {
            self.publish(transition);
        }
        let lease = self.settings().name.clone();
        let timeout = self.request_timeout;
        let release = async {
            // A conflicting write means the Lease changed: read it, and retry if still ours.
            for _ in 0..3 {
                if self.candidate.view() == &LeaseView::Unknown {
                    match self.api.get_opt(&self.settings().name).await {
                        Ok(lease) => {
                            self.candidate.read(lease, Instant::now());
                        }
                        Err(error) => return Err(error),
                    }
                }
                let Some(lease) = self.candidate.release_request() else {
                    return Ok(false);
                };
                match self
                    .api
                    .replace(&self.settings().name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => return Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        self.candidate.conflicted()
                    }
                    Err(error) => return Err(error),
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(timeout, release).await {
            Ok(Ok(true)) => info!(%lease, "lease released"),
            Ok(Ok(false)) => debug!(%lease, "not holding the lease: nothing to release"),
            Ok(Err(error)) => warn!(%lease, %error, "could not release the lease; it will expire"),
            Err(_) => warn!(%lease, "releasing the lease timed out; it will expire"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me";
    const S: Duration = Duration::from_secs(1);

    fn settings() -> LeaseSettings {
        LeaseSettings::new("ns", "lease", ME)
    }

    fn lease(holder: Option<&str>, duration: Option<i32>, version: u64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("lease".into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: duration,
                lease_transitions: Some(3),
                acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                ..LeaseSpec::default()
            }),
        }
    }

    fn present(holder: Option<&str>, duration: Option<i32>, at: Instant) -> LeaseView {
        LeaseView::Present(Box::new(Observed {
            lease: lease(holder, duration, 1),
            at,
        }))
    }

    #[test]
    fn decide_case_table() {
        let t0 = Instant::now();
        let every = 2 * S;
        #[rustfmt::skip]
        let cases: Vec<(&str, LeaseView, bool, Instant, Action)> = vec![
            ("not read yet", LeaseView::Unknown, false, t0, Action::Fetch),
            ("absent", LeaseView::Absent, false, t0, Action::Create),
            ("released: no holder", present(None, Some(1), t0), false, t0, Action::Acquire),
            ("released: empty holder", present(Some(""), Some(15), t0), false, t0, Action::Acquire),
            ("another's, seen 5 s ago", present(Some("other"), Some(15), t0), false, t0 + 5 * S, Action::WaitUntil(t0 + 15 * S)),
            ("another's, unchanged for its duration", present(Some("other"), Some(15), t0), false, t0 + 15 * S, Action::Acquire),
            ("another's, no duration", present(Some("other"), None, t0), false, t0, Action::Acquire),
            ("another's, negative duration", present(Some("other"), Some(-5), t0), false, t0, Action::Acquire),
            ("ours, leading, renewed 1 s ago", present(Some(ME), Some(15), t0), true, t0 + S, Action::WaitUntil(t0 + every)),
            ("ours, leading, renewal due", present(Some(ME), Some(15), t0), true, t0 + every, Action::Renew),
            ("ours but not leading (a previous process, or a lapsed renewal)", present(Some(ME), Some(15), t0), false, t0 + S, Action::Renew),
        ];
        for (name, view, leading, now, expected) in cases {
            assert_eq!(decide(&view, leading, now, ME, every), expected, "{name}");
        }
    }

    #[test]
    fn expiry_is_judged_from_when_the_change_was_seen_not_from_renew_time() {
        // renewTime is at the Unix epoch (a skewed or stale clock): only our observation counts.
        let t0 = Instant::now();
        let view = present(Some("other"), Some(15), t0);
        assert_eq!(
            decide(&view, false, t0 + S, ME, 2 * S),
            Action::WaitUntil(t0 + 15 * S)
        );
    }

    #[test]
    fn held_creates_renews_and_takes_over() {
        let settings = settings();
        let now = Timestamp::from_second(1_000_000).unwrap();
        let time = Some(MicroTime(now));

        let created = held(None, &settings, now);
        let spec = created.spec.unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("lease"));
        assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!((&spec.acquire_time, &spec.renew_time), (&time, &time));

        let taken = held(Some(&lease(Some("other"), Some(15), 7)), &settings, now);
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!((&spec.acquire_time, &spec.renew_time), (&time, &time));

        let from_released = held(
            Some(&released(&lease(Some("other"), Some(15), 7))),
            &settings,
            now,
        );
        assert_eq!(from_released.spec.unwrap().lease_transitions, Some(4));

        let renewed = held(Some(&lease(Some(ME), Some(15), 8)), &settings, now);
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("8"));
        let spec = renewed.spec.unwrap();
        assert_eq!(
            spec.lease_transitions,
            Some(3),
            "a renewal is no transition"
        );
        assert_eq!(spec.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(spec.renew_time, time);
    }

    #[test]
    fn released_clears_the_holder_and_shortens_the_duration() {
        let lease = released(&lease(Some(ME), Some(15), 9));
        assert_eq!(lease.metadata.resource_version.as_deref(), Some("9"));
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!((spec.acquire_time, spec.renew_time), (None, None));
        assert_eq!(spec.lease_transitions, Some(3), "transitions kept");
    }

    #[test]
    fn settings_must_stop_leading_before_the_lease_can_expire() {
        assert!(settings().validate().is_ok());
        let mut late = settings();
        late.renew_deadline = late.duration;
        assert!(late.validate().is_err());
        let mut eager = settings();
        eager.renew_every = eager.renew_deadline;
        assert!(eager.validate().is_err());
        let mut fractional = settings();
        fractional.duration = Duration::from_millis(10_500);
        assert_eq!(fractional.duration_seconds(), 11, "rounded up");
    }

    /// A candidate leading since `t0` (its write sent then), holding version 10.
    fn leader_at(t0: Instant) -> Candidate {
        let mut candidate = Candidate::new(settings());
        assert_eq!(candidate.next_action(t0), Action::Fetch);
        assert_eq!(candidate.read(None, t0), None);
        assert_eq!(candidate.next_action(t0), Action::Create);
        assert_eq!(
            candidate.wrote(lease(Some(ME), Some(15), 10), t0),
            Some(Transition::Started)
        );
        candidate
    }

    #[test]
    fn a_leader_renews_every_period_and_stops_leading_at_the_renew_deadline() {
        let t0 = Instant::now();
        let mut candidate = leader_at(t0);
        assert_eq!(candidate.next_action(t0 + S), Action::WaitUntil(t0 + 2 * S));
        assert_eq!(candidate.next_action(t0 + 2 * S), Action::Renew);

        // Renewals fail from now on; retries back off, but a wait never passes the deadline.
        candidate.failed(t0 + 2 * S, 20 * S);
        assert_eq!(
            candidate.next_action(t0 + 3 * S),
            Action::WaitUntil(t0 + 10 * S)
        );
        assert_eq!(candidate.check_deadline(t0 + 9 * S), None);
        assert!(candidate.is_leading());
        assert_eq!(
            candidate.check_deadline(t0 + 10 * S),
            Some(Transition::Stopped(
                "no successful renewal within the renew deadline"
            ))
        );
        assert!(!candidate.is_leading());
        // Well before the others may take over: they wait the lease duration from their view.
        assert!(t0 + 10 * S < t0 + Duration::from_secs(15));

        // Once a renewal succeeds again (nobody took the lease), it leads again.
        assert_eq!(candidate.next_action(t0 + 22 * S), Action::Renew);
        assert_eq!(
            candidate.wrote(lease(Some(ME), Some(15), 11), t0 + 22 * S),
            Some(Transition::Started)
        );
    }

    #[test]
    fn a_successful_renewal_moves_the_deadline() {
        let t0 = Instant::now();
        let mut candidate = leader_at(t0);
        assert_eq!(
            candidate.wrote(lease(Some(ME), Some(15), 11), t0 + 2 * S),
            None
        );
        assert_eq!(candidate.check_deadline(t0 + 11 * S), None);
        assert_eq!(candidate.leading_until(), Some(t0 + 12 * S));
    }

    #[test]
    fn a_leader_ignores_stale_events_and_stops_on_a_newer_holder_or_a_deletion() {
        let t0 = Instant::now();
        let mut candidate = leader_at(t0);
        // The echo of our own write, and an older version (released before we created it).
        let echo = watcher::Event::Apply(lease(Some(ME), Some(15), 10));
        assert_eq!(candidate.watched(echo, t0 + S), None);
        let older = watcher::Event::Apply(lease(None, Some(1), 9));
        assert_eq!(candidate.watched(older, t0 + S), None);
        assert!(candidate.is_leading());
        assert_eq!(candidate.next_action(t0 + S), Action::WaitUntil(t0 + 2 * S));

        let taken = watcher::Event::Apply(lease(Some("other"), Some(15), 12));
        assert!(matches!(
            candidate.watched(taken, t0 + S),
            Some(Transition::Stopped(_))
        ));
        assert!(!candidate.is_leading());
        assert_eq!(candidate.release_request(), None, "not ours to release");

        let mut candidate = leader_at(t0);
        let stale_delete = watcher::Event::Delete(lease(Some("old"), Some(15), 5));
        assert_eq!(candidate.watched(stale_delete, t0 + S), None);
        let delete = watcher::Event::Delete(lease(Some(ME), Some(15), 13));
        assert!(candidate.watched(delete, t0 + S).is_some());
        assert_eq!(candidate.next_action(t0 + S), Action::Create);
    }

    #[test]
    fn a_standby_acts_at_once_on_a_release_or_deletion() {
        let t0 = Instant::now();
        let mut candidate = Candidate::new(settings());
        candidate.read(Some(lease(Some("other"), Some(15), 20)), t0);
        assert_eq!(candidate.next_action(t0), Action::WaitUntil(t0 + 15 * S));

        let release = released(&lease(Some("other"), Some(15), 21));
        let mut release = release;
        release.metadata.resource_version = Some("21".into());
        assert_eq!(
            candidate.watched(watcher::Event::Apply(release), t0 + S),
            None
        );
        assert_eq!(candidate.next_action(t0 + S), Action::Acquire);

        let mut candidate = Candidate::new(settings());
        candidate.read(Some(lease(Some("other"), Some(15), 20)), t0);
        let delete = watcher::Event::Delete(lease(Some("other"), Some(15), 22));
        candidate.watched(delete, t0 + S);
        assert_eq!(candidate.next_action(t0 + S), Action::Create);
    }

    #[test]
    fn a_standby_restarts_the_expiry_clock_only_when_the_record_changes() {
        let t0 = Instant::now();
        let mut candidate = Candidate::new(settings());
        candidate.read(Some(lease(Some("other"), Some(15), 20)), t0);
        // The same record read again (e.g. after a conflict): the expiry stays.
        candidate.conflicted();
        assert_eq!(candidate.next_action(t0 + 5 * S), Action::Fetch);
        candidate.read(Some(lease(Some("other"), Some(15), 20)), t0 + 5 * S);
        assert_eq!(
            candidate.next_action(t0 + 5 * S),
            Action::WaitUntil(t0 + 15 * S)
        );

        // A renewal by the holder (a new renewTime) restarts it.
        let mut renewed = lease(Some("other"), Some(15), 21);
        renewed.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
        candidate.watched(watcher::Event::Apply(renewed), t0 + 6 * S);
        assert_eq!(
            candidate.next_action(t0 + 6 * S),
            Action::WaitUntil(t0 + 21 * S)
        );
        assert_eq!(candidate.next_action(t0 + 21 * S), Action::Acquire);
    }

    #[test]
    fn a_listing_without_the_lease_is_checked_by_a_read() {
        let t0 = Instant::now();
        let mut candidate = leader_at(t0);
        candidate.watched(watcher::Event::Init, t0);
        assert_eq!(candidate.watched(watcher::Event::InitDone, t0), None);
        assert!(
            candidate.is_leading(),
            "an unordered listing does not end leadership"
        );
        assert_eq!(candidate.next_action(t0), Action::Fetch);
        assert_eq!(
            candidate.read(Some(lease(Some(ME), Some(15), 10)), t0),
            None
        );
        assert!(candidate.is_leading());

        candidate.watched(watcher::Event::Init, t0);
        candidate.watched(watcher::Event::InitApply(lease(Some(ME), Some(15), 10)), t0);
        candidate.watched(watcher::Event::InitDone, t0);
        assert_eq!(candidate.next_action(t0), Action::WaitUntil(t0 + 2 * S));
    }

    #[test]
    fn on_shutdown_the_leader_resigns_then_releases() {
        let t0 = Instant::now();
        let mut candidate = leader_at(t0);
        assert_eq!(candidate.resign(), Some(Transition::Resigned));
        assert!(!candidate.is_leading());
        let release = candidate.release_request().expect("ours to release");
        assert_eq!(release.metadata.resource_version.as_deref(), Some("10"));
        assert_eq!(release.spec.unwrap().holder_identity, None);

        let mut standby = Candidate::new(settings());
        standby.read(Some(lease(Some("other"), Some(15), 20)), t0);
        assert_eq!(standby.resign(), None);
        assert_eq!(standby.release_request(), None);
    }
}
