//! The user's terminal: a line editor when stdin is a terminal, plain lines otherwise.
//!
//! Reading is blocking (rustyline, stdin), so it runs on its own thread, one line per
//! request: the session asks for a line with a prompt and later receives it. Asking one
//! line at a time means no `readline` is in progress while we are deciding to exit, except
//! when the tracker ends the session, for which [`Terminal::restore`] puts the terminal
//! back into the mode it was in at start.
//!
//! Printing goes through [`Printer`]: above the line being edited (rustyline's
//! ExternalPrinter) on a terminal; one flushed line per call otherwise, no escape codes.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

/// What was read.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Line(String),
    /// End of input or Ctrl-C / Ctrl-D: the user is leaving.
    End,
}

enum Ask {
    Line(String),
    Secret(String),
}

type SharedPrinter = Arc<Mutex<Box<dyn ExternalPrinter + Send>>>;

/// Prints whole lines without disturbing what the user is typing. Cheap to clone.
#[derive(Clone)]
pub struct Printer {
    editor: Option<SharedPrinter>,
}

impl Printer {
    fn new(editor: Option<SharedPrinter>) -> Printer {
        Printer { editor }
    }

    pub fn line(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        match &self.editor {
            Some(p) => {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                // One call per line: rustyline redraws the prompt after each.
                for l in text.split('\n') {
                    let _ = p.print(format!("{l}\n"));
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }
}

pub struct Terminal {
    printer: Printer,
    asks: std_mpsc::Sender<Ask>,
    lines: mpsc::UnboundedReceiver<Input>,
    saved: Option<SavedMode>,
    /// A `readline` is in progress (its half-typed line is on screen).
    reading: Arc<AtomicBool>,
}

impl Terminal {
    /// Starts the reader thread in the mode stdin calls for.
    pub fn start() -> Terminal {
        let (ask_tx, ask_rx) = std_mpsc::channel();
        let (line_tx, line_rx) = mpsc::unbounded_channel();
        if std::io::stdin().is_terminal() {
            if let Ok(mut editor) = DefaultEditor::new() {
                if let Ok(p) = editor.create_external_printer() {
                    let saved = SavedMode::save();
                    let reading = Arc::new(AtomicBool::new(false));
                    let r = reading.clone();
                    std::thread::spawn(move || read_editor(editor, r, ask_rx, line_tx));
                    return Terminal {
                        printer: Printer::new(Some(Arc::new(Mutex::new(Box::new(p))))),
                        asks: ask_tx,
                        lines: line_rx,
                        saved,
                        reading,
                    };
                }
            }
        }
        let printer = Printer::new(None);
        let p = printer.clone();
        std::thread::spawn(move || read_plain(p, ask_rx, line_tx));
        Terminal {
            printer,
            asks: ask_tx,
            lines: line_rx,
            saved: None,
            reading: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn printer(&self) -> Printer {
        self.printer.clone()
    }

    /// Requests one line shown with `prompt`; receive it with [`Terminal::next`].
    pub fn ask(&self, prompt: &str) {
        let _ = self.asks.send(Ask::Line(prompt.to_owned()));
    }

    /// Like `ask`, but what is typed is not echoed (on a terminal).
    pub fn ask_secret(&self, prompt: &str) {
        let _ = self.asks.send(Ask::Secret(prompt.to_owned()));
    }

    /// The next line asked for. Cancel-safe.
    pub async fn next(&mut self) -> Input {
        self.lines.recv().await.unwrap_or(Input::End)
    }

    /// `ask` then `next`.
    pub async fn prompt(&mut self, prompt: &str) -> Input {
        self.ask(prompt);
        self.next().await
    }

    /// Puts the terminal back as it was at start (leaves raw mode if a `readline` is
    /// still in progress). Call before exiting.
    pub fn restore(&self) {
        if let Some(s) = &self.saved {
            s.restore();
            if self.reading.load(Ordering::SeqCst) {
                // End the abandoned input line so the shell prompt starts on a fresh one.
                println!();
            }
        }
    }
}

fn read_editor(
    mut editor: DefaultEditor,
    reading: Arc<AtomicBool>,
    asks: std_mpsc::Receiver<Ask>,
    lines: mpsc::UnboundedSender<Input>,
) {
    // Lines of a paste not handed out yet: a paste of several lines arrives as one edit
    // buffer with newlines in it (bracketed paste), and each of its lines is a command.
    let mut pasted: std::collections::VecDeque<String> = Default::default();
    for ask in asks {
        let input = match ask {
            Ask::Line(_) if !pasted.is_empty() => {
                Input::Line(pasted.pop_front().expect("not empty"))
            }
            Ask::Line(prompt) => {
                reading.store(true, Ordering::SeqCst);
                let read = editor.readline(&prompt);
                reading.store(false, Ordering::SeqCst);
                match read {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        pasted.extend(line.split(['\n', '\r']).map(str::to_owned));
                        Input::Line(pasted.pop_front().unwrap_or_default())
                    }
                    // Ctrl-C, Ctrl-D, or a terminal error: the user is leaving.
                    Err(_) => Input::End,
                }
            }
            Ask::Secret(prompt) => match rpassword::prompt_password(prompt) {
                Ok(line) => Input::Line(line),
                Err(_) => Input::End,
            },
        };
        if lines.send(input).is_err() {
            return;
        }
    }
}

fn read_plain(
    printer: Printer,
    asks: std_mpsc::Receiver<Ask>,
    lines: mpsc::UnboundedSender<Input>,
) {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    for ask in asks {
        // Login prompts are shown as lines of their own so scripts can wait for them; the
        // command prompt is noise in a transcript and is left out.
        match &ask {
            Ask::Line(p) | Ask::Secret(p) if p.trim_end().ends_with(':') => {
                printer.line(p.trim_end())
            }
            _ => {}
        }
        let mut buf = String::new();
        let input = match stdin.read_line(&mut buf) {
            Ok(0) | Err(_) => Input::End,
            Ok(_) => Input::Line(buf.trim_end_matches(['\n', '\r']).to_owned()),
        };
        if lines.send(input).is_err() {
            return;
        }
    }
}

/// The terminal's attributes at start, to restore on exit.
struct SavedMode(libc::termios);

impl SavedMode {
    fn save() -> Option<SavedMode> {
        // SAFETY: tcgetattr only writes into the struct we pass; all-zero is a valid termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0).then_some(SavedMode(t))
        }
    }

    fn restore(&self) {
        // SAFETY: restores attributes previously read from the same descriptor.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}
