//! A real terminal for the client, for what only shows on one: the line editor, typed-ahead
//! and pasted lines, Ctrl-C, what the screen looks like. The client runs inside tmux on a
//! tmux server of its own (its own socket), which is killed when the [`Tty`] is dropped.
//! Keys are sent with `send-keys`; the screen is read with `capture-pane`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{bin, password, WAIT};

pub struct Tty {
    socket: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Tty {
    /// The client on a 120x40 terminal, connected to `tracker`, with folder `dir` and
    /// extra `args`. When it exits, its pane stays with its exit status.
    pub fn peer(tracker: SocketAddr, dir: &Path, args: &[&str]) -> Tty {
        let socket = format!(
            "swt{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tty = Tty { socket };
        let mut cmd = vec![
            bin("peer").display().to_string(),
            tracker.ip().to_string(),
            tracker.port().to_string(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let shell = cmd
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        tty.tmux(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            // A plain terminal type everyone has a terminfo entry for.
            "-e",
            "TERM=xterm",
            &shell,
        ]);
        tty.tmux(&["set-option", "-t", "t", "remain-on-exit", "on"]);
        tty
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux is installed (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` as it is (no key names), all at once.
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
    }

    /// Presses keys by name: `Enter`, `C-c`, ...
    pub fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "t", key]);
    }

    /// Pastes `text` as a terminal paste (bracketed, if the program asked for it).
    pub fn paste(&self, text: &str) {
        self.tmux(&["set-buffer", "-b", "p", text]);
        self.tmux(&["paste-buffer", "-p", "-b", "p", "-t", "t"]);
    }

    /// What is on the screen now, one string per row, trailing blanks trimmed.
    pub fn screen(&self) -> Vec<String> {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// Waits until some row of the screen contains `want`; panics with the screen if it
    /// does not within [`WAIT`].
    pub fn wait_for(&self, want: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if screen.iter().any(|l| l.contains(want)) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {want:?} on screen within {WAIT:?}:\n{}",
                    screen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Logs in as `user`.
    pub fn login(&self, user: &str) {
        self.wait_for("Username:");
        self.type_text(user);
        self.key("Enter");
        self.wait_for("Password:");
        self.type_text(password(user));
        self.key("Enter");
        self.wait_for("Welcome to the greatest messaging application ever!");
    }

    /// The client's exit status, once it has exited.
    ///
    /// Read from `/proc` while the process is a zombie: under load the tmux server can
    /// take seconds to reap its pane's process and mark the pane dead.
    pub fn exit_status(&self) -> Option<i32> {
        let out = self.tmux(&[
            "display-message",
            "-p",
            "-t",
            "t",
            "#{pane_pid} #{pane_dead} #{pane_dead_status}",
        ]);
        let mut words = out.split_whitespace();
        let (pid, dead, status) = (words.next(), words.next(), words.next());
        if let (Some("1"), Some(code)) = (dead, status) {
            return code.parse().ok();
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
        // Fields after the command name (in parentheses, maybe with spaces): the state is
        // the first, the exit code (as waitpid reports it) the 50th.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        if fields.first() != Some(&"Z") {
            return None;
        }
        let raw: i32 = fields.get(49)?.parse().ok()?;
        Some((raw >> 8) & 0xff)
    }

    /// Waits for the client to exit and returns its status.
    pub fn wait_exit(&self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(code) = self.exit_status() {
                return code;
            }
            if Instant::now() > deadline {
                panic!("the client did not exit:\n{}", self.screen().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
