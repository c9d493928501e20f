//! The client's life: open the private-chat listener, log in, then run commands and show
//! what arrives (from the tracker and from private connections) until logout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wire::{
    ClientMsg, Event, FileMeta, FileName, LoginResult, Password, PeerMsg, Reply, Request,
    ServerMsg, UserCheck, UserName,
};

use crate::command::{help_text, Command};
use crate::download::{self, JobEvent, Plan};
use crate::library::Library;
use crate::p2p::{Ended, P2p, P2pEvent, PeerHandle};
use crate::render::{self, Asked};
use crate::terminal::{Input, Printer, Terminal};
use crate::tracker_link::{LinkError, TrackerLink};

/// How the client ended: 0 after logout, end of input or a timeout; 1 when login was
/// refused or the server went away.
pub async fn run(server: SocketAddr, dir: &Path, term: &mut Terminal) -> ExitCode {
    let out = term.printer();
    let lib = match Library::open(dir) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            out.line(format!("Error. {e}"));
            return ExitCode::FAILURE;
        }
    };
    // Private chat listener: all interfaces, a port the OS picks; the tracker learns it at
    // login and hands it (with a ticket) to whoever may connect.
    let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
        Ok(l) => l,
        Err(e) => {
            out.line(format!(
                "Error. Cannot open a port for private messaging: {e}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let p2p_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let (events_tx, events) = mpsc::unbounded_channel();
    let p2p = P2p::new(events_tx, lib.clone());
    tokio::spawn(p2p.clone().listen(listener));

    let mut link = match TrackerLink::connect(server).await {
        Ok(l) => l,
        Err(e) => {
            out.line(format!("Error. {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match login(&mut link, term, &out, p2p_port).await {
        Ok(Some(me)) => {
            p2p.set_me(me.clone());
            let (jobs_tx, jobs) = mpsc::unbounded_channel();
            let mut s = Session {
                link,
                out: out.clone(),
                me,
                pending: VecDeque::new(),
                p2p,
                events,
                chats: Chats::default(),
                lib,
                jobs_tx,
                jobs,
                registering: HashMap::new(),
                busy: false,
            };
            let result = match s.announce().await {
                Ok(()) => s.run(term).await,
                Err(e) => Err(e),
            };
            s.chats.close_all().await;
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

/// Login ended without a session; carries the exit code.
struct Refused(ExitCode);

impl From<LinkError> for Refused {
    fn from(_: LinkError) -> Self {
        Refused(ExitCode::FAILURE)
    }
}

/// `Ok(None)`: the user closed the input before logging in.
async fn login(
    link: &mut TrackerLink,
    term: &mut Terminal,
    out: &Printer,
    p2p_port: u16,
) -> Result<Option<UserName>, Refused> {
    let user = loop {
        let Input::Line(line) = term.prompt("Username: ").await else {
            return Ok(None);
        };
        let Ok(user) = UserName::new(line.trim()) else {
            out.line(render::INVALID_USER);
            continue;
        };
        link.send(ClientMsg::CheckUser { user: user.clone() })
            .await?;
        match link.recv().await? {
            ServerMsg::UserCheck(UserCheck::Known) => break user,
            ServerMsg::UserCheck(UserCheck::Unknown) => out.line(render::INVALID_USER),
            other => return Err(unexpected(out, &other)),
        }
    };
    loop {
        term.ask_secret("Password: ");
        let Input::Line(line) = term.next().await else {
            return Ok(None);
        };
        let Ok(password) = Password::new(line) else {
            // Cannot be anyone's password (empty, spaces); not worth a strike.
            out.line(render::BAD_PASSWORD);
            continue;
        };
        link.send(ClientMsg::Login {
            user: user.clone(),
            password,
            p2p_port,
        })
        .await?;
        let text = match link.recv().await? {
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
            other => return Err(unexpected(out, &other)),
        };
        out.line(text);
        return Err(Refused(ExitCode::FAILURE));
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

struct Session {
    link: TrackerLink,
    out: Printer,
    me: UserName,
    /// Requests sent and not yet answered, oldest first (replies come in request order).
    pending: VecDeque<Asked>,
    p2p: P2p,
    events: mpsc::UnboundedReceiver<P2pEvent>,
    chats: Chats,
    lib: Arc<Library>,
    jobs_tx: mpsc::UnboundedSender<JobEvent>,
    /// Results of work done in the background: file hashing, downloads.
    jobs: mpsc::UnboundedReceiver<JobEvent>,
    /// Files hashed and sent to the tracker, kept until it accepts them.
    registering: HashMap<FileName, FileMeta>,
    /// A download is locating or running: commands wait until it ends (it owns the screen).
    busy: bool,
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
            self.send(Asked::Quiet, Request::Register { meta, have })
                .await?;
        }
        Ok(())
    }

    async fn run(&mut self, term: &mut Terminal) -> Result<ExitCode, LinkError> {
        let mut leaving = false;
        // Whether a line has been asked for and not yet received.
        let mut asking = false;
        loop {
            if !asking && !leaving && !self.busy {
                term.ask("> ");
                asking = true;
            }
            let next = tokio::select! {
                input = term.next(), if asking => {
                    asking = false;
                    match input {
                        Input::Line(l) if l.trim().is_empty() => {}
                        Input::Line(l) => leaving = self.run_line(&l).await?,
                        Input::End => {
                            leaving = true;
                            self.chats.close_all().await;
                            self.send(Asked::Logout, Request::Logout).await?;
                        }
                    }
                    Next::Continue
                }
                msg = self.link.recv() => self.on_tracker(msg?).await?,
                Some(event) = self.events.recv() => {
                    self.on_p2p(event).await;
                    Next::Continue
                }
                Some(job) = self.jobs.recv() => {
                    self.on_job(job).await?;
                    Next::Continue
                }
            };
            if let Next::Exit(code) = next {
                return Ok(code);
            }
        }
    }

    async fn on_job(&mut self, job: JobEvent) -> Result<(), LinkError> {
        match job {
            JobEvent::Described { name, result } => match result {
                Ok(meta) => {
                    let have = (0..meta.chunk_count()).collect();
                    self.registering.insert(name, meta.clone());
                    self.send(Asked::Register, Request::Register { meta, have })
                        .await?;
                }
                Err(e) => self.out.line(format!("Error. {e}")),
            },
            JobEvent::Have { name, chunk } => {
                self.send(Asked::Quiet, Request::HaveChunk { name, chunk })
                    .await?;
            }
            JobEvent::Done { lines } => {
                self.print(lines);
                self.busy = false;
            }
        }
        Ok(())
    }

    async fn send(&mut self, asked: Asked, req: Request) -> Result<(), LinkError> {
        self.link.send(ClientMsg::Request(req)).await?;
        self.pending.push_back(asked);
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
                self.private(&to, text);
                // The text stays between the two peers; the tracker only hears "active".
                (Asked::Activity, Request::Activity)
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
                let (lib, out) = (self.lib.clone(), self.jobs_tx.clone());
                tokio::task::spawn_blocking(move || {
                    let result = lib.describe(&name, chunks).map_err(|e| e.to_string());
                    let _ = out.send(JobEvent::Described { name, result });
                });
                // The request follows once the file is hashed.
                (Asked::Activity, Request::Activity)
            }
            Command::SearchFile { name } => (Asked::SearchFile, Request::SearchFile { name }),
            Command::SearchChunk { name, chunks } => {
                (Asked::SearchChunk, Request::SearchChunk { name, chunks })
            }
            Command::Download { name } => {
                self.busy = true;
                (Asked::Download, Request::Locate { name, from: None })
            }
            Command::FetchChunk { from, name, chunk } => {
                self.busy = true;
                (
                    Asked::Fetch { chunk },
                    Request::Locate {
                        name,
                        from: Some(from),
                    },
                )
            }
            Command::Logout => {
                // Tell private partners first, so they read "stopped" before "logged out".
                self.chats.close_all().await;
                (Asked::Logout, Request::Logout)
            }
            Command::Help => {
                self.print(help_text());
                (Asked::Activity, Request::Activity)
            }
        };
        let logout = asked == Asked::Logout;
        self.send(asked, req).await?;
        Ok(logout)
    }

    fn private(&mut self, to: &UserName, text: wire::Text) {
        let departed = self.chats.departed.remove(to);
        match self.chats.open.remove(to) {
            Some(h) if !departed && h.send_text(text) => {
                self.chats.open.insert(to.clone(), h);
            }
            // The connection is dead or its user logged out without saying goodbye.
            Some(_) => self.out.line(render::private_gone(to)),
            None if self.chats.gone.remove(to) => self.out.line(render::private_gone(to)),
            None => self.out.line(render::private_not_enabled(to)),
        }
    }

    async fn on_tracker(&mut self, msg: ServerMsg) -> Result<Next, LinkError> {
        match msg {
            ServerMsg::Reply(r) => {
                let asked = self.pending.pop_front().unwrap_or(Asked::Activity);
                // Announcements the user did not type are silent unless refused.
                if asked != Asked::Quiet || matches!(r, Reply::Refused(_)) {
                    self.print(render::reply(asked, &r));
                }
                if matches!(asked, Asked::Download | Asked::Fetch { .. })
                    && !matches!(r, Reply::Located { .. })
                {
                    self.busy = false; // refused: nothing to download
                }
                match r {
                    Reply::Registered { name, .. } => {
                        if let Some(meta) = self.registering.remove(&name) {
                            if let Err(e) = self.lib.add_complete(meta) {
                                self.out.line(format!("Error. {e}"));
                            }
                        }
                    }
                    Reply::Located { meta, holders } => {
                        let only = match asked {
                            Asked::Fetch { chunk } => Some(chunk),
                            _ => None,
                        };
                        let plan = Plan {
                            meta,
                            holders,
                            only,
                        };
                        let (lib, out, jobs) =
                            (self.lib.clone(), self.out.clone(), self.jobs_tx.clone());
                        tokio::spawn(download::run(plan, lib, out, jobs));
                    }
                    Reply::LoggedOut => {
                        if asked == Asked::Logout {
                            self.out.line("Logged out");
                        }
                        return Ok(Next::Exit(ExitCode::SUCCESS));
                    }
                    Reply::PrivateGranted { user, addr, ticket } => {
                        self.p2p.connect(user, addr, ticket);
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
                    Event::PrivateTicket { from, ticket } => self.p2p.tickets.add(ticket, from),
                    Event::LoggedOut { user } if self.chats.open.contains_key(&user) => {
                        self.chats.departed.insert(user);
                    }
                    Event::LoggedIn { user } => {
                        self.chats.departed.remove(&user);
                    }
                    Event::TimedOut => return Ok(Next::Exit(ExitCode::SUCCESS)),
                    _ => {}
                }
            }
            other => return Err(LinkError::Unexpected(format!("{other:?}"))),
        }
        Ok(Next::Continue)
    }

    async fn on_p2p(&mut self, event: P2pEvent) {
        match event {
            P2pEvent::Opened(h) => self.opened(h).await,
            P2pEvent::OpenFailed { user, why } => {
                self.out.line(render::private_failed(&user, &why));
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
            self.out.line(render::private_started(&user));
        }
        let Some(old) = self.chats.open.remove(&user) else {
            if !outgoing {
                self.out.line(render::private_incoming(&user));
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
