//! The client's life: log in, then run commands and show what arrives until logout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitCode;

use wire::{
    ClientMsg, Event, LoginResult, Password, Reply, Request, ServerMsg, UserCheck, UserName,
};

use crate::command::{help_text, Command};
use crate::render::{self, Asked};
use crate::terminal::{Input, Printer, Terminal};
use crate::tracker_link::{LinkError, TrackerLink};

/// How the client ended: 0 after logout, end of input or a timeout; 1 when login was
/// refused or the server went away.
pub async fn run(server: SocketAddr, term: &mut Terminal) -> ExitCode {
    let out = term.printer();
    let mut link = match TrackerLink::connect(server).await {
        Ok(l) => l,
        Err(e) => {
            out.line(format!("Error. {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match login(&mut link, term, &out).await {
        Ok(Some(user)) => match session(&mut link, term, &out, &user).await {
            Ok(code) => code,
            Err(e) => {
                out.line(format!("Error. {e}"));
                ExitCode::FAILURE
            }
        },
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
        let Input::Line(line) = ({
            term.ask_secret("Password: ");
            term.next().await
        }) else {
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
            p2p_port: 0,
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

/// Requests sent and not yet answered, oldest first.
#[derive(Default)]
struct Pending(VecDeque<Asked>);

async fn session(
    link: &mut TrackerLink,
    term: &mut Terminal,
    out: &Printer,
    me: &UserName,
) -> Result<ExitCode, LinkError> {
    let mut pending = Pending::default();
    let mut leaving = false;
    term.ask("> ");
    loop {
        tokio::select! {
            input = term.next(), if !leaving => {
                let line = match input {
                    Input::Line(l) => l,
                    Input::End => {
                        leaving = true;
                        send(link, &mut pending, Asked::Logout, Request::Logout).await?;
                        continue;
                    }
                };
                if line.trim().is_empty() {
                    term.ask("> ");
                    continue;
                }
                if run_line(link, &mut pending, out, me, &line).await? {
                    leaving = true;
                } else {
                    term.ask("> ");
                }
            }
            msg = link.recv() => {
                match msg {
                    Ok(ServerMsg::Reply(r)) => {
                        let asked = pending.0.pop_front().unwrap_or(Asked::Activity);
                        for l in render::reply(asked, &r) {
                            out.line(l);
                        }
                        if r == Reply::LoggedOut {
                            if asked == Asked::Logout {
                                out.line("Logged out");
                            }
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                    Ok(ServerMsg::Event(e)) => {
                        for l in render::event(&e) {
                            out.line(l);
                        }
                        match e {
                            Event::Offline { messages } => {
                                if let Some(last) = messages.last() {
                                    link.send(ClientMsg::OfflineAck { up_to: last.id }).await?;
                                }
                            }
                            Event::TimedOut => return Ok(ExitCode::SUCCESS),
                            _ => {}
                        }
                    }
                    Ok(other) => return Err(LinkError::Unexpected(format!("{other:?}"))),
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

async fn send(
    link: &mut TrackerLink,
    pending: &mut Pending,
    asked: Asked,
    req: Request,
) -> Result<(), LinkError> {
    link.send(ClientMsg::Request(req)).await?;
    pending.0.push_back(asked);
    Ok(())
}

/// Runs one typed line. `Ok(true)` when it was `logout`.
async fn run_line(
    link: &mut TrackerLink,
    pending: &mut Pending,
    out: &Printer,
    _me: &UserName,
    line: &str,
) -> Result<bool, LinkError> {
    let cmd = match Command::parse(line) {
        Ok(c) => c,
        Err(e) => {
            out.line(e.to_string());
            // Typing counts as activity even when the line is wrong.
            send(link, pending, Asked::Activity, Request::Activity).await?;
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
        Command::Logout => (Asked::Logout, Request::Logout),
        Command::Help => {
            for l in help_text() {
                out.line(l);
            }
            (Asked::Activity, Request::Activity)
        }
    };
    let logout = asked == Asked::Logout;
    send(link, pending, asked, req).await?;
    Ok(logout)
}
