//! The client's life: open the private-chat listener, log in, then run commands and show
//! what arrives (from the tracker and from private connections) until logout.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use wire::{
    ClientMsg, Event, FileName, LoginResult, Password, PeerKey, PeerMsg, PresenceChange, Refusal,
    Reply, Request, ResumeToken, ServerMsg, TrackerEndpoint, UserCheck, UserName,
};

use crate::announce::{Announcer, Answered};
use crate::command::{help_text, Command};
use crate::download::{self, Control, Handle, Inbox, JobEvent, Plan};
use crate::establish::Ways;
use crate::library::{Library, Withdrawn};
use crate::p2p::{Dialer, Ended, Grant, P2p, P2pEvent, PeerHandle};
use crate::ratelimit::{Rate, RateLimiter};
use crate::render::{self, Asked};
use crate::serve::Uploads;
use crate::terminal::{Input, Printer, Terminal};
use crate::tracker_link::{Dial, LinkError, TrackerLink};
use link::known::KnownTrackers;
use link::noise::Identity;
use link::{Fingerprint, Security};

/// A request unanswered this long: the user is told the server is not answering.
const SILENT: Duration = Duration::from_secs(15);
/// After `logout`, the client leaves within this even if the server never answers.
const LOGOUT_WAIT: Duration = Duration::from_secs(5);
/// How long a client whose tracker went away tries the others of its cluster: the old
/// tracker's lease (3 s) must run out before another takes the session over.
const RESUME_FOR: Duration = Duration::from_secs(20);
/// Pause between rounds of tries.
const RESUME_RETRY: Duration = Duration::from_millis(300);

/// Transfer rates the user set on the command line (bytes per second, all transfers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub down: Option<Rate>,
    pub up: Option<Rate>,
}

/// The tracker to connect to, and how (from the command line).
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub addr: SocketAddr,
    pub security: Security,
    /// `--tracker-fingerprint`.
    pub pinned: Option<Fingerprint>,
}

/// How the client ended: 0 after logout, end of input, Ctrl-C or a timeout; 1 when login
/// was refused or the server went away.
pub async fn run(server: Server, dir: &Path, limits: Limits, term: &mut Terminal) -> ExitCode {
    let out = term.printer();
    let lib = match Library::open(dir) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            out.line(format!("Error. {e}"));
            return ExitCode::FAILURE;
        }
    };
    // Private chat listener: all interfaces, a port the OS picks; the tracker learns it at
    // login and hands it (with a ticket) to whoever may connect. Its port is shared with
    // the connections we open from it (to the tracker, and punches to peers).
    let listener = match crate::tracker_link::bind_shared(0).and_then(|s| s.listen(1024)) {
        Ok(l) => l,
        Err(e) => {
            out.line(format!(
                "Error. Cannot open a port for private messaging: {e}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let p2p_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let dial = Dial {
        from_port: p2p_port,
        addr: server.addr,
        security: server.security,
        pinned: server.pinned,
        known: KnownTrackers::at(lib.state_dir().join("known_trackers")),
    };
    // Our long-term key: made on the first start, kept in the folder, proven to every peer
    // we connect to or accept (the tracker hands out its public half).
    let identity = match Identity::load_or_create(&lib.state_dir().join("identity")) {
        Ok((id, _)) => Arc::new(id),
        Err(e) => {
            out.line(format!("Error. {e}"));
            return ExitCode::FAILURE;
        }
    };
    // Relay connections are extra connections to the tracker: from any port.
    let relay_dial = Arc::new(Dial {
        from_port: 0,
        addr: dial.addr,
        security: dial.security,
        pinned: dial.pinned,
        known: KnownTrackers::at(lib.state_dir().join("known_trackers")),
    });
    let dialer = Dialer {
        security: server.security,
        identity: identity.clone(),
        ways: Ways {
            port: p2p_port,
            meetings: Arc::default(),
            relay: Arc::new(std::sync::RwLock::new(Some(relay_dial))),
        },
    };
    let (events_tx, events) = mpsc::channel(crate::p2p::EVENTS);
    let up = limits.up.map(|r| Arc::new(RateLimiter::new(r)));
    let uploads = Uploads::new(up);
    let p2p = P2p::new(events_tx, lib.clone(), uploads.clone(), dialer.clone());
    tokio::spawn(p2p.clone().listen(listener));
    let withdrawals = lib.withdrawals();

    let mut link = match TrackerLink::connect(&dial).await {
        Ok((l, first_use)) => {
            if let Some(note) = first_use {
                out.line(note.to_string());
            }
            l
        }
        Err(e) => {
            out.line(format!("Error. {e}"));
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C outside the line editor (piped input, the password prompt) is a SIGINT: from
    // here on it is caught, and seen even when it comes between two reads.
    let mut sigint = signal(SignalKind::interrupt()).ok();
    let me_at = (p2p_port, PeerKey(identity.public()));
    let code = match login(&mut link, &dial, term, &mut sigint, &out, me_at).await {
        Ok(Some(me)) => {
            p2p.set_me(me.clone());
            let (jobs_tx, jobs) = mpsc::unbounded_channel();
            let ctx = download::Context {
                lib: lib.clone(),
                out: out.clone(),
                jobs: jobs_tx.clone(),
                down: limits.down.map(|r| Arc::new(RateLimiter::new(r))),
                dialer,
            };
            let mut s = Session {
                link,
                failover: None,
                redial: Redial {
                    security: server.security,
                    known: lib.state_dir().join("known_trackers"),
                    port: p2p_port,
                    key: me_at.1,
                },
                leaving: false,
                out: out.clone(),
                me,
                reach: None,
                pending: VecDeque::new(),
                told_silent: None,
                p2p,
                events,
                chats: Chats::default(),
                lib,
                jobs_tx,
                jobs,
                hashing: Vec::new(),
                registering: HashMap::new(),
                transfers: BTreeMap::new(),
                locating: HashMap::new(),
                locating_order: VecDeque::new(),
                introducing: VecDeque::new(),
                ctx,
                uploads,
                limits,
                withdrawals,
                announcer: Announcer::default(),
                rechecking: HashMap::new(),
                unshare_when_done: HashSet::new(),
                sigint,
            };
            let mut result = match s.announce().await {
                Ok(()) => s.run(term).await,
                Err(e) => Err(e),
            };
            // The tracker went away: go on through another tracker of its cluster.
            while result.as_ref().is_err_and(|e| s.may_resume(e)) && s.resume().await {
                result = match s.announce().await {
                    Ok(()) => s.run(term).await,
                    Err(e) => Err(e),
                };
            }
            s.chats.close_all().await;
            s.stop_transfers();
            match result {
                Ok(code) => code,
                Err(e) => {
                    out.line(format!("Error. {e}"));
                    ExitCode::FAILURE
                }
            }
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(Refused(code)) => code,
    };
    term.restore();
    code
}

/// Login ended without a session; carries the exit code (what to say was said).
struct Refused(ExitCode);

/// One login step: `msg` sent and its answer. A connection the tracker closed while the
/// user was typing (it gives each login step a minute) is opened again once, silently.
async fn ask(
    link: &mut TrackerLink,
    dial: &Dial,
    out: &Printer,
    msg: ClientMsg,
) -> Result<ServerMsg, Refused> {
    let first = link.ask(msg.clone()).await;
    let again = match first {
        Ok(answer) => return Ok(answer),
        Err(LinkError::Closed | LinkError::Frame(_)) => match TrackerLink::connect(dial).await {
            Ok((fresh, _)) => {
                *link = fresh;
                link.ask(msg).await
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    again.map_err(|e| {
        out.line(format!("Error. {e}"));
        Refused(ExitCode::FAILURE)
    })
}

/// `Ok(None)`: the user closed the input before logging in.
async fn login(
    link: &mut TrackerLink,
    dial: &Dial,
    term: &mut Terminal,
    sigint: &mut Option<Signal>,
    out: &Printer,
    (p2p_port, key): (u16, PeerKey),
) -> Result<Option<UserName>, Refused> {
    let user = loop {
        let Input::Line(line) = read(term, sigint, "Username: ", false).await else {
            return Ok(None);
        };
        let Ok(user) = UserName::new(line.trim()) else {
            out.line(render::INVALID_USER);
            continue;
        };
        match ask(link, dial, out, ClientMsg::CheckUser { user: user.clone() }).await? {
            ServerMsg::UserCheck(UserCheck::Known) => break user,
            ServerMsg::UserCheck(UserCheck::Unknown) => out.line(render::INVALID_USER),
            other => return Err(unexpected(out, &other)),
        }
    };
    loop {
        let Input::Line(line) = read(term, sigint, "Password: ", true).await else {
            return Ok(None);
        };
        let Ok(password) = Password::new(line) else {
            // Cannot be anyone's password (empty, spaces); not worth a strike.
            out.line(render::BAD_PASSWORD);
            continue;
        };
        let login = ClientMsg::Login {
            user: user.clone(),
            password,
            p2p_port,
            key,
            lan_ip: link.local_ip(),
        };
        let text = match ask(link, dial, out, login).await? {
            ServerMsg::Login(LoginResult::Welcome) => {
                out.line(render::WELCOME);
                return Ok(Some(user));
            }
            ServerMsg::Login(LoginResult::BadPassword) => {
                out.line(render::BAD_PASSWORD);
                continue;
            }
            ServerMsg::Login(LoginResult::LockedNow) => render::LOCKED_NOW.to_owned(),
            ServerMsg::Login(LoginResult::Locked) => render::LOCKED.to_owned(),
            ServerMsg::Login(LoginResult::AlreadyLoggedIn) => render::already_logged_in(&user),
            ServerMsg::Login(LoginResult::Throttled { retry_secs }) => {
                render::throttled(retry_secs)
            }
            ServerMsg::Login(LoginResult::Unavailable) => render::LOGIN_UNAVAILABLE.to_owned(),
            other => return Err(unexpected(out, &other)),
        };
        out.line(text);
        return Err(Refused(ExitCode::FAILURE));
    }
}

/// One line at a login prompt; Ctrl-C (a signal while the terminal is not in raw mode)
/// leaves like end of input.
async fn read(
    term: &mut Terminal,
    sigint: &mut Option<Signal>,
    prompt: &str,
    secret: bool,
) -> Input {
    if secret {
        term.ask_secret(prompt);
    } else {
        term.ask(prompt);
    }
    tokio::select! {
        input = term.next() => input,
        () = interrupted(sigint) => Input::End,
    }
}

/// The next Ctrl-C (SIGINT); never, if it could not be caught.
async fn interrupted(sigint: &mut Option<Signal>) {
    match sigint {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn unexpected(out: &Printer, msg: &ServerMsg) -> Refused {
    out.line(format!(
        "Error. {}",
        LinkError::Unexpected(format!("{msg:?}"))
    ));
    Refused(ExitCode::FAILURE)
}

/// Open private chats, by the other user's name.
#[derive(Default)]
struct Chats {
    open: HashMap<UserName, PeerHandle>,
    /// Connections that broke: the next `private` to them says they are gone.
    gone: HashSet<UserName>,
    /// Users the tracker says logged out while a chat with them was open. A normal logout
    /// sends `Bye` first; without one (the process died) their next `private` says gone.
    departed: HashSet<UserName>,
}

impl Chats {
    /// Says `Bye` on every open chat (logout, timeout, lost tracker).
    async fn close_all(&mut self) {
        let closing = self.open.drain().map(|(_, h)| h.close(PeerMsg::Bye));
        futures_util::future::join_all(closing).await;
    }
}

/// How to dial another tracker of the cluster as we dialled the first.
struct Redial {
    security: Security,
    /// The `known_trackers` file.
    known: std::path::PathBuf,
    /// Our listener's port, connected from and told at login.
    port: u16,
    key: PeerKey,
}

impl Redial {
    /// How to dial tracker `t` of the cluster, from `port` (0: any).
    fn dial(&self, t: &TrackerEndpoint, port: u16) -> Dial {
        Dial {
            addr: t.addr,
            security: self.security,
            // Vouched for by the tracker we trusted.
            pinned: t.fingerprint.map(Fingerprint),
            known: KnownTrackers::at(self.known.clone()),
            from_port: port,
        }
    }
}

struct Session {
    link: TrackerLink,
    /// Where to go, and with what, if the tracker goes away (`Event::Failover`).
    failover: Option<(ResumeToken, Vec<TrackerEndpoint>)>,
    redial: Redial,
    /// The user asked to leave: a lost tracker then ends the session.
    leaving: bool,
    out: Printer,
    me: UserName,
    /// Where the tracker sees us and whether it could connect to our listener.
    reach: Option<(SocketAddr, bool)>,
    /// Requests sent and not yet answered, oldest first (replies come in request order).
    pending: VecDeque<(Asked, Instant)>,
    /// The oldest pending request was sent at this time and we said the server is silent.
    told_silent: Option<Instant>,
    p2p: P2p,
    events: mpsc::Receiver<P2pEvent>,
    chats: Chats,
    lib: Arc<Library>,
    jobs_tx: mpsc::UnboundedSender<JobEvent>,
    /// Results of work done in the background: file hashing, downloads.
    jobs: mpsc::UnboundedReceiver<JobEvent>,
    /// Files being read for `register`, in the order asked (a name twice if asked twice).
    hashing: Vec<FileName>,
    /// Files hashed and sent to the tracker, kept until it accepts them.
    registering: HashMap<FileName, crate::library::Described>,
    /// Downloads locating or running, by file: at most one per file.
    transfers: BTreeMap<FileName, Handle>,
    /// The download ends of those still being located, until the tracker answers.
    locating: HashMap<FileName, Inbox>,
    /// The files of the `Locate`s sent for downloads, oldest first, matched with their
    /// replies (which come in request order).
    locating_order: VecDeque<FileName>,
    /// Introductions asked of the tracker for running downloads, in request order.
    introducing: VecDeque<(FileName, UserName)>,
    ctx: download::Context,
    uploads: Arc<Uploads>,
    limits: Limits,
    /// Files found vanished or changed on disk: withdrawn from the tracker.
    withdrawals: mpsc::UnboundedReceiver<Withdrawn>,
    /// What we hold, told to the tracker at the pace it accepts.
    announcer: Announcer,
    /// Files found changed, being read again, with the description they had.
    rechecking: HashMap<FileName, wire::FileMeta>,
    /// Downloads stopped because their name went away: forgotten once they have stopped.
    unshare_when_done: HashSet<FileName>,
    sigint: Option<Signal>,
}

/// What the loop should do after handling something.
enum Next {
    Continue,
    Exit(ExitCode),
}

impl Session {
    /// Tells the tracker which files and chunks we hold, so others can fetch them and our
    /// own downloads resume where they stopped.
    async fn announce(&mut self) -> Result<(), LinkError> {
        for (meta, have) in self.lib.holdings() {
            self.announcer.add(meta, have);
        }
        self.send_announcements().await
    }

    /// Sends what the announcer lets go now.
    async fn send_announcements(&mut self) -> Result<(), LinkError> {
        for req in self.announcer.ready(Instant::now()) {
            self.send(Asked::Announce, req).await?;
        }
        Ok(())
    }

    async fn run(&mut self, term: &mut Terminal) -> Result<ExitCode, LinkError> {
        let mut leaving = false;
        // Whether a line has been asked for and not yet received.
        let mut asking = false;
        loop {
            if !asking && !leaving {
                term.ask("> ");
                asking = true;
            }
            let silent_at = self.silent_since(leaving);
            let next = tokio::select! {
                input = term.next(), if asking => {
                    asking = false;
                    match input {
                        Input::Line(l) if l.trim().is_empty() => {}
                        Input::Line(l) => {
                            leaving = self.run_line(&l).await?;
                            self.leaving |= leaving;
                        }
                        Input::End => {
                            leaving = true;
                            self.leave().await?;
                        }
                    }
                    Next::Continue
                }
                () = interrupted(&mut self.sigint), if !leaving => {
                    // Outside the line editor (scripted, or between lines), Ctrl-C is a
                    // signal: leave as `logout` does.
                    leaving = true;
                    self.leave().await?;
                    Next::Continue
                }
                msg = self.link.recv() => self.on_tracker(msg?).await?,
                () = tokio::time::sleep_until(silent_at), if !self.pending.is_empty() => {
                    let (_, sent) = self.pending.front().copied().expect("pending");
                    if leaving && self.logout_sent().is_some() {
                        // `logout` and end of input always leave.
                        self.out.line(format!(
                            "Error. The server at {} did not answer; logged out here only",
                            self.link.addr()
                        ));
                        Next::Exit(ExitCode::FAILURE)
                    } else {
                        self.told_silent = Some(sent);
                        self.out.line(format!(
                            "Error. The server at {} has not answered for {} s; still waiting (logout leaves)",
                            self.link.addr(),
                            SILENT.as_secs()
                        ));
                        Next::Continue
                    }
                }
                Some(event) = self.events.recv() => {
                    self.on_p2p(event).await;
                    Next::Continue
                }
                Some(job) = self.jobs.recv() => {
                    self.on_job(job).await?;
                    Next::Continue
                }
                () = sleep_until_some(self.announcer.paused_until()) => {
                    self.send_announcements().await?;
                    Next::Continue
                }
                Some(gone) = self.withdrawals.recv() => {
                    self.withdrawn(gone).await?;
                    Next::Continue
                }
            };
            if let Next::Exit(code) = next {
                return Ok(code);
            }
        }
    }

    /// A file we shared vanished or changed on disk. A changed one is read again: the
    /// tracker takes the new version from the user who registered it; anyone else's copy
    /// that changed is no longer shared.
    async fn withdrawn(&mut self, gone: Withdrawn) -> Result<(), LinkError> {
        let path = self.lib.path_of(&gone.name);
        if gone.announced {
            self.send(
                Asked::Quiet,
                Request::Withdraw {
                    name: gone.name.clone(),
                },
            )
            .await?;
        } else {
            // Found at start: its state files go now that the user is told.
            self.lib.forget_state(&gone.name);
        }
        let Some(old) = gone.changed else {
            self.out.line(format!(
                "{} {}; no longer sharing it",
                path.display(),
                gone.why
            ));
            return Ok(());
        };
        self.out
            .line(format!("{} {}; reading it again", path.display(), gone.why));
        let name = gone.name;
        let chunks = old.chunk_count() as usize;
        self.rechecking.insert(name.clone(), old);
        self.describe(name, chunks);
        Ok(())
    }

    /// Reads and hashes `name` off the async threads; `JobEvent::Described` follows.
    fn describe(&mut self, name: FileName, chunks: usize) {
        self.hashing.push(name.clone());
        let (lib, out) = (self.lib.clone(), self.jobs_tx.clone());
        tokio::task::spawn_blocking(move || {
            let result = lib.describe(&name, chunks).map_err(|e| e.to_string());
            let _ = out.send(JobEvent::Described { name, result });
        });
    }

    /// `name` no longer means what we hold or download (`Event::FileGone`): stop, and
    /// forget what we had of it (the file in the folder stays).
    fn file_gone(&mut self, name: FileName, why: &wire::Gone) {
        let had = if self.transfers.contains_key(&name) {
            render::HadOf::Downloading
        } else {
            match self.lib.is_complete(&name) {
                Some(true) => render::HadOf::Whole,
                Some(false) => render::HadOf::Part,
                // Nothing here (a watch that ended as this came): nothing to say.
                None => return,
            }
        };
        self.out.line(render::file_gone(&name, why, had));
        if let Some(h) = self.transfers.get(&name) {
            let _ = h.control.send(Control::Cancel);
            if self.locating.remove(&name).is_some() {
                self.transfers.remove(&name);
            } else {
                // Forgotten once the download has stopped, so it cannot save over it.
                self.unshare_when_done.insert(name);
                return;
            }
        }
        self.lib.unshare(&name);
    }

    /// When to say the server is silent: [`SILENT`] after the oldest unanswered request was
    /// sent (once per request), or [`LOGOUT_WAIT`] after a `logout`.
    fn silent_since(&self, leaving: bool) -> tokio::time::Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let at = match (self.logout_sent(), self.pending.front()) {
            (Some(sent), _) if leaving => sent + LOGOUT_WAIT,
            (_, Some(&(_, sent))) if self.told_silent != Some(sent) => sent + SILENT,
            _ => far,
        };
        at.into()
    }

    /// When `logout` went to the tracker, if it is still unanswered.
    fn logout_sent(&self) -> Option<Instant> {
        self.pending
            .iter()
            .find(|(a, _)| *a == Asked::Logout)
            .map(|&(_, sent)| sent)
    }

    /// Takes `name` off the files being read; `false` if it was not there (the user
    /// logged out meanwhile).
    fn done_hashing(&mut self, name: &FileName) -> bool {
        match self.hashing.iter().position(|n| n == name) {
            Some(i) => {
                self.hashing.remove(i);
                true
            }
            None => false,
        }
    }

    /// Logs out: private partners are told first, so they read "stopped" before
    /// "logged out"; downloads stop, keeping what they verified; a `register` still
    /// reading its file is dropped, and the user told.
    async fn leave(&mut self) -> Result<(), LinkError> {
        self.leaving = true;
        for name in std::mem::take(&mut self.hashing) {
            self.out.line(format!(
                "Error. {name} was still being read when you logged out; it was not registered"
            ));
        }
        self.chats.close_all().await;
        self.stop_transfers();
        self.send(Asked::Logout, Request::Logout).await
    }

    /// Whether `e` is the tracker going away while a session elsewhere is possible.
    fn may_resume(&self, e: &LinkError) -> bool {
        let lost = matches!(
            e,
            LinkError::Closed | LinkError::Frame(_) | LinkError::Silent { .. }
        );
        lost && !self.leaving && self.failover.as_ref().is_some_and(|(_, t)| !t.is_empty())
    }

    /// Logs in again through another tracker of the cluster with the session's resume
    /// token, trying each (the lost one last) until one takes the session over or
    /// [`RESUME_FOR`] has passed. What was on its way to the lost tracker is dropped:
    /// unanswered commands are reported, downloads stopped (what they verified is kept).
    async fn resume(&mut self) -> bool {
        let Some((token, mut trackers)) = self.failover.take() else {
            return false;
        };
        let lost = self.link.addr();
        self.out.line(format!(
            "Lost the connection to the server at {lost}; reconnecting through another server"
        ));
        if !self.pending.is_empty() {
            self.out.line(format!(
                "Error. {} command(s) may not have been carried out: check and type them again",
                self.pending.len()
            ));
        }
        self.pending.clear();
        self.told_silent = None;
        self.locating_order.clear();
        self.introducing.clear();
        self.registering.clear();
        self.announcer = Announcer::default();
        if !self.transfers.is_empty() {
            let names: Vec<String> = self.transfers.keys().map(|n| n.to_string()).collect();
            self.out.line(format!(
                "Downloads stopped: {} (type download again to resume)",
                names.join(", ")
            ));
            self.stop_transfers();
        }
        trackers.sort_by_key(|t| t.addr == lost);
        let deadline = Instant::now() + RESUME_FOR;
        while Instant::now() < deadline {
            for t in &trackers {
                let dial = self.redial.dial(t, self.redial.port);
                let Ok((mut link, _)) = TrackerLink::connect(&dial).await else {
                    continue;
                };
                let resume = ClientMsg::Resume {
                    user: self.me.clone(),
                    token,
                    p2p_port: self.redial.port,
                    key: self.redial.key,
                    lan_ip: link.local_ip(),
                };
                match link.ask(resume).await {
                    Ok(ServerMsg::Login(LoginResult::Welcome)) => {
                        self.out.line(format!(
                            "Reconnected to the server at {} as {}",
                            t.addr, self.me
                        ));
                        self.link = link;
                        // Relayed connections go through this tracker's relay now.
                        let relay = Arc::new(self.redial.dial(t, 0));
                        self.ctx.dialer.ways.relay_through(Some(relay));
                        return true;
                    }
                    // The lost tracker's lease has not run out yet, or the other is busy:
                    // again shortly.
                    Ok(ServerMsg::Login(
                        LoginResult::AlreadyLoggedIn
                        | LoginResult::Throttled { .. }
                        | LoginResult::Unavailable,
                    )) => {}
                    Ok(ServerMsg::Login(_)) => {
                        self.out.line(
                            "Error. The other servers did not take this session over; log in again",
                        );
                        return false;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(RESUME_RETRY).await;
        }
        self.out
            .line("Error. No other server took this session over; log in again");
        false
    }

    fn stop_transfers(&mut self) {
        for (_, h) in std::mem::take(&mut self.transfers) {
            let _ = h.control.send(Control::Cancel);
        }
        self.locating.clear();
    }

    async fn on_job(&mut self, job: JobEvent) -> Result<(), LinkError> {
        match job {
            JobEvent::Described { name, .. } if !self.done_hashing(&name) => {
                // Logged out meanwhile (and told so): not registered.
            }
            JobEvent::Described { name, result } => match (result, self.rechecking.remove(&name)) {
                (Ok(described), Some(old)) if described.meta == old => {
                    // Touched, not changed: shared as before.
                    let lib = &self.lib;
                    let meta = described.meta.clone();
                    if let Err(e) = tokio::task::block_in_place(|| lib.add_complete(described)) {
                        self.out.line(format!("Error. {e}"));
                        return Ok(());
                    }
                    self.out
                        .line(format!("{name} has the same contents; still sharing it"));
                    let have = (0..meta.chunk_count()).collect();
                    self.announcer.add(meta, have);
                    self.send_announcements().await?;
                }
                (Ok(described), rechecking) => {
                    let meta = described.meta.clone();
                    let have = (0..meta.chunk_count()).collect();
                    let asked = match rechecking {
                        Some(_) => Asked::Recheck,
                        None => Asked::Register {
                            wanted: described.wanted as u32,
                        },
                    };
                    self.registering.insert(name, described);
                    self.send(asked, Request::Register { meta, have }).await?;
                }
                (Err(e), _) => self.out.line(format!("Error. {e}")),
            },
            JobEvent::Have { name, chunk } => {
                self.send(Asked::Quiet, Request::HaveChunk { name, chunk })
                    .await?;
            }
            JobEvent::Introduce { name, user } => {
                self.introducing.push_back((name.clone(), user.clone()));
                let req = Request::Locate {
                    name,
                    from: Some(user),
                };
                self.send(Asked::Introduce, req).await?;
            }
            JobEvent::Done { name, lines } => {
                if self.unshare_when_done.remove(&name) {
                    // Stopped because the name went away; that was said.
                    self.lib.unshare(&name);
                } else {
                    self.print(lines);
                }
                if let Some(h) = self.transfers.remove(&name) {
                    if h.only.is_none() {
                        // A whole-file download watched the file's holders until now.
                        self.send(Asked::Quiet, Request::Unwatch { name }).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a download (`only`: one chunk from `from`): locating first.
    async fn download(
        &mut self,
        name: FileName,
        only: Option<u32>,
        from: Option<UserName>,
    ) -> Result<(Asked, Request), LinkError> {
        if self.transfers.contains_key(&name) {
            self.out.line(format!(
                "Error. {name} is already downloading (transfers shows it; cancel {} stops it)",
                crate::command::typed(&name)
            ));
            return Ok((Asked::Activity, Request::Activity));
        }
        let (handle, inbox) = download::prepare(only);
        self.transfers.insert(name.clone(), handle);
        self.locating.insert(name.clone(), inbox);
        self.locating_order.push_back(name.clone());
        let asked = match only {
            Some(chunk) => Asked::Fetch { chunk },
            None => Asked::Download,
        };
        Ok((asked, Request::Locate { name, from }))
    }

    fn show_transfers(&self) {
        let mut lines: Vec<String> = self
            .transfers
            .iter()
            .map(|(name, h)| {
                let s = h.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                render::transfer(name, h.only, &s)
            })
            .collect();
        if lines.is_empty() {
            lines.push("No downloads".to_string());
        }
        let (serving, waiting) = self.uploads.serving();
        lines.extend(render::uploads(
            &serving,
            waiting,
            self.uploads.rate(),
            self.uploads.sent.load(std::sync::atomic::Ordering::Relaxed),
            self.limits.down,
            self.limits.up,
        ));
        lines.push(render::reachability(self.reach));
        self.print(lines);
    }

    async fn send(&mut self, asked: Asked, req: Request) -> Result<(), LinkError> {
        // A tracker that stopped reading (paused, overloaded) must not freeze the client.
        match tokio::time::timeout(SILENT, self.link.send(ClientMsg::Request(req))).await {
            Ok(sent) => sent?,
            Err(_) => {
                return Err(LinkError::Silent {
                    addr: self.link.addr(),
                    secs: SILENT.as_secs(),
                })
            }
        }
        self.pending.push_back((asked, Instant::now()));
        Ok(())
    }

    fn print(&self, lines: impl IntoIterator<Item = String>) {
        for l in lines {
            self.out.line(l);
        }
    }

    /// Runs one typed line. `Ok(true)` when it was `logout`.
    async fn run_line(&mut self, line: &str) -> Result<bool, LinkError> {
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                self.out.line(e.to_string());
                // Typing counts as activity even when the line is wrong.
                self.send(Asked::Activity, Request::Activity).await?;
                return Ok(false);
            }
        };
        let (asked, req) = match cmd {
            Command::Message { to, text } => (Asked::Message, Request::Message { to, text }),
            Command::Broadcast { text } => (Asked::Broadcast, Request::Broadcast { text }),
            Command::WhoElse => (Asked::WhoElse, Request::WhoElse),
            Command::WhoElseSince { secs } => (Asked::WhoElseSince, Request::WhoElseSince { secs }),
            Command::Block { user } => (Asked::Block, Request::Block { user }),
            Command::Unblock { user } => (Asked::Unblock, Request::Unblock { user }),
            Command::StartPrivate { user } if self.chats.open.contains_key(&user) => {
                self.out.line(render::private_already(&user));
                (Asked::Activity, Request::Activity)
            }
            Command::StartPrivate { user } => (Asked::StartPrivate, Request::StartPrivate { user }),
            Command::Private { to, text } => {
                if self.private(&to, text) {
                    // The text stays between the two peers; the tracker only hears "active".
                    (Asked::Activity, Request::Activity)
                } else {
                    let asked = Asked::CheckPrivate { fetch: false };
                    (asked, Request::CheckPeer { user: to })
                }
            }
            Command::StopPrivate { user } => {
                match self.chats.open.remove(&user) {
                    Some(h) => {
                        h.close(PeerMsg::Bye).await;
                        self.out.line(render::private_stopped(&user));
                    }
                    None => self.out.line(render::private_none(&user)),
                }
                (Asked::Activity, Request::Activity)
            }
            Command::Register { name, chunks } => {
                self.describe(name, chunks);
                // The request follows once the file is hashed.
                (Asked::Activity, Request::Activity)
            }
            Command::Unregister { name } if self.transfers.contains_key(&name) => {
                self.out.line(format!(
                    "Error. {name} is downloading; cancel {} first",
                    crate::command::typed(&name)
                ));
                (Asked::Activity, Request::Activity)
            }
            Command::Unregister { name } => (Asked::Unregister, Request::Unregister { name }),
            Command::SearchFile { name } => (Asked::SearchFile, Request::SearchFile { name }),
            Command::SearchChunk { name, chunks } => {
                (Asked::SearchChunk, Request::SearchChunk { name, chunks })
            }
            Command::Download { name } => self.download(name, None, None).await?,
            // Spec 3.5: a chunk is asked of a user we have a private session with.
            Command::FetchChunk { from, .. } if !self.chats.open.contains_key(&from) => {
                let asked = Asked::CheckPrivate { fetch: true };
                (asked, Request::CheckPeer { user: from })
            }
            Command::FetchChunk { from, name, chunk } => {
                self.download(name, Some(chunk), Some(from)).await?
            }
            Command::Transfers => {
                self.show_transfers();
                (Asked::Activity, Request::Activity)
            }
            Command::Cancel { name } => {
                match self.transfers.get(&name) {
                    Some(h) => {
                        let _ = h.control.send(Control::Cancel);
                        if self.locating.remove(&name).is_some() {
                            // Not running yet: nothing to wait for.
                            self.transfers.remove(&name);
                            self.out
                                .line(format!("Cancelled download of {name} before it started"));
                        }
                    }
                    None => self
                        .out
                        .line(format!("Error. No download of {name} is running")),
                }
                (Asked::Activity, Request::Activity)
            }
            Command::Logout => {
                self.leave().await?;
                return Ok(true);
            }
            Command::Help => {
                self.print(help_text());
                (Asked::Activity, Request::Activity)
            }
        };
        self.send(asked, req).await?;
        Ok(false)
    }

    /// Sends `text` over the private session with `to`; `false` if there is none (and
    /// never was, as far as we know), for the caller to ask the tracker why.
    fn private(&mut self, to: &UserName, text: wire::Text) -> bool {
        let departed = self.chats.departed.remove(to);
        match self.chats.open.remove(to) {
            Some(h) if !departed && h.is_open() => {
                if !h.send_text(text) {
                    // Open, but the other side has not read what is queued: it is cut
                    // off if that lasts (p2p::WRITE_STALL); this text is not sent.
                    self.out.line(render::private_backlog(to));
                }
                self.chats.open.insert(to.clone(), h);
            }
            // The connection is dead or its user logged out without saying goodbye.
            Some(_) => self.out.line(render::private_gone(to)),
            None if self.chats.gone.remove(to) => self.out.line(render::private_gone(to)),
            None => return false,
        }
        true
    }

    async fn on_tracker(&mut self, msg: ServerMsg) -> Result<Next, LinkError> {
        match msg {
            ServerMsg::Reply(r) => {
                let asked = self
                    .pending
                    .pop_front()
                    .map_or(Asked::Activity, |(asked, _)| asked);
                self.told_silent = None;
                if asked == Asked::Introduce {
                    self.introduced(r);
                    return Ok(Next::Continue);
                }
                if asked == Asked::Announce {
                    if let Answered::Done(r) = self.announcer.answered(r, Instant::now()) {
                        self.announced(r);
                    }
                    self.send_announcements().await?;
                    return Ok(Next::Continue);
                }
                // Announcements the user did not type are silent unless refused.
                if asked != Asked::Quiet || matches!(r, Reply::Refused(_)) {
                    let lines = match &r {
                        Reply::FileHolders { name, .. } | Reply::ChunkHolders { name, .. } => {
                            render::search(&r, &self.lib.have(name))
                        }
                        _ => render::reply(asked, &r),
                    };
                    self.print(lines);
                }
                match r {
                    Reply::Unregistered { name, .. }
                    | Reply::Refused(
                        Refusal::UnknownFile { name } | Refusal::NotSharing { name },
                    ) if asked == Asked::Unregister => {
                        self.lib.unshare(&name);
                    }
                    Reply::Refused(Refusal::FileConflict { name, .. })
                        if asked == Asked::Recheck =>
                    {
                        self.registering.remove(&name);
                    }
                    Reply::Registered { name, .. } => {
                        if let Some(described) = self.registering.remove(&name) {
                            // Writes and syncs the manifest: kept in order (the file is
                            // served from the next request on) but off the async workers.
                            let lib = &self.lib;
                            let added = tokio::task::block_in_place(|| lib.add_complete(described));
                            if let Err(e) = added {
                                self.out.line(format!("Error. {e}"));
                            }
                        }
                    }
                    Reply::Located { meta, holders } => {
                        let name = self.locating_order.pop_front();
                        let Some(name) = name.filter(|n| n == meta.name()) else {
                            return Ok(Next::Continue);
                        };
                        let (Some(inbox), Some(h)) =
                            (self.locating.remove(&name), self.transfers.get(&name))
                        else {
                            return Ok(Next::Continue); // cancelled meanwhile
                        };
                        let plan = Plan {
                            meta,
                            holders,
                            only: h.only,
                        };
                        tokio::spawn(download::run(plan, inbox, self.ctx.clone()));
                    }
                    Reply::Refused(_) if matches!(asked, Asked::Download | Asked::Fetch { .. }) => {
                        // Nothing to download.
                        if let Some(name) = self.locating_order.pop_front() {
                            if self.locating.remove(&name).is_some() {
                                self.transfers.remove(&name);
                            }
                        }
                    }
                    Reply::LoggedOut => {
                        if asked == Asked::Logout {
                            self.out.line("Logged out");
                        }
                        return Ok(Next::Exit(ExitCode::SUCCESS));
                    }
                    Reply::PrivateGranted {
                        user,
                        addr,
                        ticket,
                        key,
                        via,
                    } => {
                        let grant = Grant {
                            addr,
                            ticket,
                            key,
                            via,
                        };
                        self.p2p.connect(user, grant);
                    }
                    _ => {}
                }
            }
            ServerMsg::Event(e) => {
                self.print(render::event(&e));
                match e {
                    Event::Offline { messages } => {
                        if let Some(last) = messages.last() {
                            self.link
                                .send(ClientMsg::OfflineAck { up_to: last.id })
                                .await?;
                        }
                    }
                    Event::Reachability {
                        observed,
                        reachable,
                    } => self.reach = Some((observed, reachable)),
                    Event::PrivateTicket {
                        from,
                        ticket,
                        key,
                        via,
                        addr,
                        relay,
                    } => {
                        self.p2p.tickets.add(ticket, from, key);
                        let at = relay.map(|t| Arc::new(self.redial.dial(&t, 0)));
                        self.p2p.introduced(via, addr, at);
                    }
                    Event::Holders { name, user, chunks } => {
                        self.control(&name, Control::Holders { user, chunks });
                    }
                    Event::HolderGone { name, user } => {
                        self.control(&name, Control::HolderGone { user });
                    }
                    Event::FileGone { name, why } => self.file_gone(name, &why),
                    Event::Presence { changes } => {
                        for change in changes {
                            match change {
                                PresenceChange::LoggedOut(user)
                                    if self.chats.open.contains_key(&user) =>
                                {
                                    self.chats.departed.insert(user);
                                }
                                PresenceChange::LoggedOut(_) => {}
                                PresenceChange::LoggedIn(user) => {
                                    self.chats.departed.remove(&user);
                                }
                            }
                        }
                    }
                    Event::TimedOut => return Ok(Next::Exit(ExitCode::SUCCESS)),
                    Event::Failover { token, trackers } => {
                        self.failover = Some((token, trackers));
                    }
                    _ => {}
                }
            }
            other => return Err(LinkError::Unexpected(format!("{other:?}"))),
        }
        Ok(Next::Continue)
    }

    /// Passes `c` to the download of `name`, if one is running or locating.
    fn control(&self, name: &FileName, c: Control) {
        if let Some(h) = self.transfers.get(name) {
            let _ = h.control.send(c);
        }
    }

    /// The tracker answered an announcement made at login: a name that no longer means
    /// what we hold is forgotten here too, and the user told.
    fn announced(&mut self, r: Reply) {
        let Reply::Refused(why) = r else { return };
        let (name, now_different) = match &why {
            Refusal::UnknownFile { name } => (name, false),
            Refusal::FileConflict { name, .. } => (name, true),
            _ => return self.print(render::reply(Asked::Announce, &Reply::Refused(why))),
        };
        self.out.line(render::announce_refused(name, now_different));
        self.lib.unshare(name);
    }

    /// The tracker answered an introduction a download asked for.
    fn introduced(&mut self, r: Reply) {
        let Some((name, user)) = self.introducing.pop_front() else {
            return;
        };
        let c = match r {
            Reply::Located { holders, .. } => match holders.into_iter().next() {
                Some(h) => Control::Introduced(h),
                None => Control::NotIntroduced {
                    why: format!("{user} is not reachable"),
                    user,
                },
            },
            Reply::Refused(why) => Control::NotIntroduced {
                why: render::not_introduced(&user, &why),
                user,
            },
            _ => return,
        };
        self.control(&name, c);
    }

    async fn on_p2p(&mut self, event: P2pEvent) {
        match event {
            P2pEvent::Opened(h) => self.opened(h).await,
            P2pEvent::OpenFailed { user, why } => {
                self.out
                    .line(render::private_failed(&user, &why, self.reach));
            }
            P2pEvent::Text { user, text, .. } => self.out.line(render::private_text(&user, &text)),
            P2pEvent::Closed { user, id, why } => {
                if self.chats.open.get(&user).is_none_or(|h| h.id != id) {
                    return; // an older connection, already replaced or closed
                }
                self.chats.open.remove(&user);
                self.chats.departed.remove(&user);
                match why {
                    Ended::Bye => self.out.line(render::private_stopped_by(&user)),
                    Ended::Lost => {
                        self.chats.gone.insert(user);
                    }
                    Ended::Superseded => {}
                }
            }
        }
    }

    async fn opened(&mut self, new: PeerHandle) {
        let user = new.user.clone();
        let outgoing = new.initiator == self.me;
        self.chats.gone.remove(&user);
        self.chats.departed.remove(&user);
        if outgoing {
            self.out.line(render::private_started(&user, new.path));
        }
        let Some(old) = self.chats.open.remove(&user) else {
            if !outgoing {
                self.out.line(render::private_incoming(&user, new.path));
            }
            self.chats.open.insert(user, new);
            return;
        };
        // Two connections to the same user. From the same initiator, the newer one wins (the
        // initiator evidently gave up on the old). If both users started at once, both
        // sides keep the one opened by the smaller name, so they agree without talking.
        let keep_new = old.initiator == new.initiator || new.initiator < old.initiator;
        let (keep, drop) = if keep_new { (new, old) } else { (old, new) };
        self.chats.open.insert(user, keep);
        drop.close(PeerMsg::Superseded).await;
    }
}
